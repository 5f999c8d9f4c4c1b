"""The HTTPS fetch of an MTA-STS policy (RFC 8461 §3.3; TLS-5).

``GET https://mta-sts.<domain>/.well-known/mta-sts.txt``: PKIX-validated for
``mta-sts.<domain>``, HTTP 200 only, no redirects, ``text/plain``, at most 64 KiB, one total
timeout. Where it may connect (``Reach``: the addresses' families and which addresses may not
be dialled) is routing's decision, handed in as plain values.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mxroute.address import IPAddress
from mxroute.dns.answer import Outcome
from mxroute.dns.resolver import Resolver
from mxroute.tls.mtasts.policy import PolicyError, StsPolicy, parse_policy

MAX_POLICY_BYTES = 64 * 1024  # §3.3: "a maximum size of 64 KiB" is suggested
MAX_HEADER_BYTES = 16 * 1024
FETCH_TIMEOUT = 20.0  # seconds for the whole fetch: DNS, connect, TLS, request, response (§3.3)
MAX_ADDRESSES = 4  # addresses of mta-sts.<domain> tried


@dataclass(frozen=True, slots=True)
class Reach:
    """Where a policy fetch connects: the HTTPS ``port``, the CA bundle (None: the system
    store), the address ``families`` in preference order (4: A, 6: AAAA), and ``screen``: why
    an address may not be dialled, or None (SEC-11); no screen: every address may be."""

    port: int
    ca_file: Path | None
    families: tuple[int, ...]
    screen: Callable[[IPAddress], str | None] | None


async def fetch_policy(
    resolver: Resolver, domain: str, reach: Reach, *, timeout: float = FETCH_TIMEOUT,
) -> StsPolicy:
    """GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` and parse it, or PolicyError
    (§3.3)."""
    try:
        return await asyncio.wait_for(_fetch(resolver, domain, reach), timeout)
    except TimeoutError:
        raise PolicyError(f"no policy from mta-sts.{domain} within {timeout:g}s") from None


async def _fetch(resolver: Resolver, domain: str, reach: Reach) -> StsPolicy:
    host = f"mta-sts.{domain}"
    addresses: list[str] = []
    for family in reach.families:
        answer = await resolver.lookup(host, "A" if family == 4 else "AAAA")
        addresses.extend(rr.address for rr in answer.rrs if answer.outcome is Outcome.RECORDS)
    if not addresses:
        raise PolicyError(f"{host} has no address")
    from mxroute.tls.contexts import verify_context  # the TLS machinery: only for a fetch

    context = verify_context(reach.ca_file)
    context.set_alpn_protocols(["http/1.1"])
    problems: list[str] = []
    for address in addresses[:MAX_ADDRESSES]:
        why = reach.screen(ipaddress.ip_address(address)) if reach.screen else None
        if why:
            problems.append(f"{address}: {why}")
            continue
        try:
            reader, writer = await asyncio.open_connection(
                address, reach.port, ssl=context, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, certificate not for host
            reason = getattr(exc, "verify_message", None) or exc.strerror or exc
            problems.append(f"{address}: {reason}")
            continue
        try:
            writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n"
                         "User-Agent: mxroute\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
                         .encode("ascii"))
            await writer.drain()
            body = await _response(reader)
        except (OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            problems.append(f"{address}: {type(exc).__name__}: {exc}")
            continue
        finally:
            writer.close()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"policy from {host} is not UTF-8 text") from None
        return parse_policy(text)
    raise PolicyError(f"cannot reach {host}: " + "; ".join(problems))


async def _response(reader: asyncio.StreamReader) -> bytes:
    """The body of a 200 ``text/plain`` response of at most MAX_POLICY_BYTES; else PolicyError."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise PolicyError("response header too large") from None
    if len(head) > MAX_HEADER_BYTES:
        raise PolicyError("response header too large")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1."):
        raise PolicyError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    if status[1] != "200":  # §3.3: 200 only; a redirect (3xx) is never followed
        raise PolicyError(f"HTTP status {' '.join(status[1:])[:60]} (only 200 is a policy)")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise PolicyError(f"Content-Type {media or 'missing'!r} is not text/plain")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _chunked(reader)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_POLICY_BYTES:
            raise PolicyError(f"policy of {length} bytes is over the {MAX_POLICY_BYTES}-byte limit")
        return await reader.readexactly(int(length))
    return await _unsized(reader)


async def _unsized(reader: asyncio.StreamReader) -> bytes:
    """A body without length: up to the end of the stream, at most MAX_POLICY_BYTES."""
    body = await reader.read(MAX_POLICY_BYTES + 1)
    while body and len(body) <= MAX_POLICY_BYTES:
        more = await reader.read(MAX_POLICY_BYTES + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy over the {MAX_POLICY_BYTES}-byte limit")
    return body


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    for _ in range(MAX_POLICY_BYTES + 1):  # each chunk at least a byte: bounded
        size_line = (await reader.readuntil(b"\r\n")).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise PolicyError("malformed chunked response") from None
        if size == 0:
            return body
        if len(body) + size > MAX_POLICY_BYTES:
            raise PolicyError(f"policy over the {MAX_POLICY_BYTES}-byte limit")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    raise PolicyError("malformed chunked response")


__all__ = ["FETCH_TIMEOUT", "MAX_POLICY_BYTES", "Reach", "fetch_policy"]

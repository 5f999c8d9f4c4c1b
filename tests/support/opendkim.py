"""OpenDKIM (Debian's ``opendkim``) as the independent DKIM verifier of the tests (issue 14): a
milter in verify mode on a private receiving Postfix, looking keys up in a loopback DNS server.

The ``dkim_peer`` fixture (tests/conftest.py) is a running ``DkimPeer``, one per test module,
its held mail cleared around each test; it skips when ``opendkim`` or Postfix is missing (or
we are not root, which Postfix needs) and fails instead under ``CI=true``. Use it like this::

    def test_signed_mail_passes(dkim_peer: DkimPeer, tmp_path: Path) -> None:
        dkim_peer.publish('s1._domainkey.sender IN TXT "v=DKIM1; k=rsa; p=..."')
        # straight to the peer over SMTP ...
        with smtplib.SMTP(dkim_peer.host, dkim_peer.port) as client:
            client.sendmail("a@sender.test", ["u@interop.test"], signed_message)
        # ... or through the real `mxroute serve`: the peer is the MX of interop.test
        with World.running(tmp_path, dkim_peer.dns) as world:
            relay = dkim_peer.relay(world, dkim_keys=[...])  # any MXROUTE_* setting
            relay.send("a@sender.test", ["u@interop.test"], message)
        [message] = dkim_peer.messages(1)
        assert [r.result for r in dkim_results(message)] == ["pass"]

- ``relay(world, **settings)`` starts ``mxroute serve`` (tests/support/relay.py) with the
  peer's DNS and SMTP port, killed by PID when ``world`` ends.
- ``publish(records)`` replaces the peer's zone (origin ``test.``, TTL 0 so OpenDKIM's resolver
  caches nothing) with ``records`` plus the MX of ``interop.test`` pointing at the peer.
- Recipients must be ``@interop.test`` (the Postfix's own domain); every message is put on hold,
  and ``messages(n)`` waits (bounded) for ``n`` of them and returns them, byte for byte as
  Postfix stored them, in arrival order. ``clear()`` deletes them.
- ``authentication_results(message)`` is the ``Authentication-Results:`` fields OpenDKIM added
  (our authserv-id, above Postfix's own ``Received:``, so one that came with the message never
  counts); ``dkim_results(message)`` parses them into ``DkimResult(result, domain, selector,
  algorithm)``, one per signature.

OpenDKIM runs with its own opendkim.conf in a temporary directory: ``Mode v``, an inet socket on
127.0.0.1, ``Nameservers HOST@PORT`` (Debian builds it with libunbound, whose forwarders take a
port, so no root and no port 53 are needed), ``ResolverConfiguration`` with
``local-zone: "test." nodefault`` (else libunbound answers every name under the special-use
``test.`` itself, NXDOMAIN, and never asks), ``AlwaysAddARHeader`` (unsigned mail gets
``dkim=none``: proof the milter ran) and an empty ``InternalHosts`` (by default mail from
127.0.0.1 would be a signing candidate, not verified). OpenDKIM removes an incoming
Authentication-Results field that claims its authserv-id (RFC 8601 §5). Postfix calls it with
``milter_default_action = tempfail``, so a broken or absent milter refuses the mail instead of
letting a test pass; Postfix rewrites no header (``local_header_rewrite_clients`` empty), so
what OpenDKIM checks is what was sent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from tests.support import postfix
from tests.support.dnsserver import DNSServer
from tests.support.postfix import PostfixInstance, free_port, start_postfix, stop_postfix
from tests.support.relay import Relay, World

OPENDKIM = Path("/usr/sbin/opendkim")
AUTHSERV_ID = "opendkim.interop.test"
POSTFIX_HOST = "127.0.3.3"  # not test_interop_postfix's 127.0.3.1 nor the fault suite's 127.0.3.2
DNS_HOST = "127.0.56.1"

# libunbound answers names under test. (RFC 6761) itself, NXDOMAIN, unless told otherwise
UNBOUND_CONF = """\
server:
    local-zone: "test." nodefault
"""

CONF = """\
Mode v
Socket inet:{port}@127.0.0.1
Nameservers {nameserver}
ResolverConfiguration {root}/unbound.conf
AuthservID {authserv_id}
Background no
PidFile {root}/opendkim.pid
Syslog no
AlwaysAddARHeader yes
SoftwareHeader yes
InternalHosts {root}/internal-hosts
"""


def unavailable() -> str | None:
    """Why no OpenDKIM peer can be started here, or None when one can."""
    if not OPENDKIM.exists():
        return "OpenDKIM (Debian package opendkim) is not installed"
    return postfix.unavailable()


class OpenDKIM:
    """``opendkim -x CONF`` in the foreground, verifying only, on 127.0.0.1:``port``."""

    def __init__(self, root: Path, nameserver: str, authserv_id: str = AUTHSERV_ID) -> None:
        self.root = root
        self.port = free_port("127.0.0.1")
        self.config = root / "opendkim.conf"
        self.log_path = root / "opendkim.log"
        (root / "internal-hosts").write_text("")
        (root / "unbound.conf").write_text(UNBOUND_CONF)
        self.config.write_text(CONF.format(port=self.port, nameserver=nameserver, root=root,
                                           authserv_id=authserv_id))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        """The socket as Postfix's ``smtpd_milters`` names it."""
        return f"inet:127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> OpenDKIM:
        """Start it and wait (bounded) until its socket takes connections; RuntimeError with its
        output when it exits or never listens."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(OPENDKIM), "-x", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 1):
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"opendkim did not start listening on {self.milter}: {self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to our process (by PID), a bounded wait, then SIGKILL. libmilter notices the
        signal when its accept loop wakes (up to 5 s), so connections wake it until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.2) + 1):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            try:
                self.proc.wait(timeout=0.2)
                return
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    break
        self.proc.kill()
        self.proc.wait(timeout=timeout)


@dataclass
class DkimPeer:
    """A receiving Postfix on ``host:port`` whose mail OpenDKIM verifies, keys from ``dns``."""

    postfix: PostfixInstance
    opendkim: OpenDKIM
    dns: DNSServer

    @property
    def host(self) -> str:
        return self.postfix.host

    @property
    def port(self) -> int:
        return self.postfix.port

    def publish(self, records: str) -> None:
        """The zone becomes ``records`` (origin ``test.``) plus the MX of ``interop.test``."""
        self.dns.set_zone(
            "$ORIGIN test.\n$TTL 0\n@ IN SOA ns.test. host.test. 1 3600 600 86400 0\n"
            f"interop IN MX 10 mx.interop.test.\nmx.interop IN A {self.host}\n{records}\n"
        )

    def relay(self, world: World, **settings: Any) -> Relay:
        """The real ``mxroute serve`` relaying to this peer (``world`` must run on the peer's DNS
        server); ``world`` kills it by PID when it ends."""
        assert world.dns is self.dns, "World.running(tmp_path, dkim_peer.dns)"
        relay = Relay(world.tmp, self.dns, self.port, **settings)
        world.relays.append(relay)
        return relay.start()

    def messages(self, count: int, timeout: float = 15.0) -> list[bytes]:
        """Wait (bounded) until ``count`` messages are held; all held messages, oldest first."""
        held = self.postfix.wait_held(count, timeout)
        hold = self.postfix.root / "queue" / "hold"

        def arrival(queue_id: str) -> tuple[int, str]:
            try:
                return (hold / queue_id).stat().st_mtime_ns, queue_id
            except OSError:
                return 0, queue_id

        return [self.postfix.message(queue_id) for queue_id in sorted(held, key=arrival)]

    def clear(self) -> None:
        self.postfix.clear()


@contextlib.contextmanager
def running_peer(postfix_host: str = POSTFIX_HOST, dns_host: str = DNS_HOST) -> Iterator[DkimPeer]:
    """A loopback DNS server, OpenDKIM and the receiving Postfix, all stopped on exit (OpenDKIM
    by PID). The caller checks ``unavailable()`` first."""
    root = Path(tempfile.mkdtemp(prefix="mxroute-opendkim-"))
    try:
        with DNSServer(host=dns_host) as dns:
            milter = OpenDKIM(root, f"{dns.host}@{dns.port}").start()
            try:
                extra = (f"smtpd_milters = {milter.milter}\nmilter_default_action = tempfail\n"
                         "milter_connect_timeout = 10s\nmilter_command_timeout = 30s\n"
                         "local_header_rewrite_clients =")
                instance = start_postfix(postfix_host, extra=extra, prefix="mxroute-dkimpeer-")
                try:
                    peer = DkimPeer(instance, milter, dns)
                    peer.publish("")
                    yield peer
                finally:
                    stop_postfix(instance, instance.root)
            finally:
                milter.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- reading the verdict -------------------------------------------------------------------------

@dataclass(frozen=True)
class DkimResult:
    """One ``dkim=`` result of an Authentication-Results field (RFC 8601)."""

    result: str  # pass | fail | neutral | none | policy | temperror | permerror
    domain: str | None  # header.d
    selector: str | None  # header.s
    algorithm: str | None  # header.a
    reason: str | None


def _received_above(message: bytes) -> list[tuple[str, str]]:
    """The header fields above the first Received: field (those the receiving side added)."""
    fields = BytesHeaderParser(policy=compat32).parsebytes(message).items()
    top = []
    for name, value in fields:
        if name.lower() == "received":
            break
        top.append((name, str(value)))
    return top


def authentication_results(message: bytes, authserv_id: str = AUTHSERV_ID) -> list[str]:
    """The Authentication-Results field values (unfolded) that the peer's OpenDKIM added to
    ``message``: ``authserv_id``'s, above Postfix's Received: (one a sender forged is below)."""
    out = []
    for name, value in _received_above(message):
        text = re.sub(r"\r?\n[ \t]+", " ", value).strip()
        if name.lower() == "authentication-results" and \
                _split(text)[0].split()[0:1] == [authserv_id]:
            out.append(text)
    return out


def dkim_results(message: bytes, authserv_id: str = AUTHSERV_ID) -> list[DkimResult]:
    """Every ``dkim=`` result in ``authentication_results(message)``, in order."""
    out = []
    for field in authentication_results(message, authserv_id):
        for resinfo in _split(field)[1:]:
            words = dict(_properties(resinfo))
            if "dkim" in words:
                out.append(DkimResult(words["dkim"], words.get("header.d"),
                                      words.get("header.s"), words.get("header.a"),
                                      words.get("reason")))
    return out


def _split(field: str) -> list[str]:
    """``field`` without comments, split at the ``;`` outside quoted strings."""
    parts, current, depth, quoted, escaped = [], "", 0, False, False
    for char in field:
        if escaped:
            escaped = False
            current += char if depth == 0 else ""
        elif char == "\\":
            escaped = True
            current += char if depth == 0 else ""
        elif quoted:
            quoted = char != '"'
            current += char
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif char == '"':
            quoted = True
            current += char
        elif char == ";":
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def _properties(resinfo: str) -> Iterator[tuple[str, str]]:
    """``name=value`` pairs of one resinfo (values unquoted)."""
    for match in re.finditer(r'([\w.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s"]+)', resinfo):
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        yield name, value

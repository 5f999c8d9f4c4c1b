"""Addresses: mail addresses (RFC 5321 §4.1.2, §4.1.3, §4.5.3.1) and ``host:port`` endpoints.

Pure functions, no I/O. A domain comes out lower-case, in A-labels, without a
trailing dot (MX-1); an address literal comes out as an ``ipaddress`` object (MX-13).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mxroute.errors import AddressError

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # §4.5.3.1.2 (253 characters in presentation form without the root dot)
MAX_PATH = 256  # §4.5.3.1.3
MAX_LABEL = 63  # RFC 1035 §2.3.4

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 5322 atext plus RFC 6531 UTF8-non-ascii, written as "everything but" the excluded
# ASCII: the same set as [A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff], but a range up to
# U+10FFFF costs `re` milliseconds to compile on every start of the command.
_ATEXT = r"[^\x00-\x20\x7f\"(),.:;<>@\[\\\]]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
# qtextSMTP / quoted-pairSMTP, RFC 5321 §4.1.2
_QUOTED = re.compile(r'"(?:[^\x00-\x1f\x22\x5c\x7f]|\\[\x20-\x7e])*"\Z')
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed mailbox: local part, A-label domain, and the literal if the domain is one."""

    local: str
    domain: str  # A-label domain, or the literal text with brackets (e.g. "[192.0.2.1]")
    literal: IPAddress | None = None

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def utf8(self) -> bool:
        """True when the address needs SMTPUTF8 (RFC 6531) to be sent."""
        return not self.local.isascii()


def normalize_domain(domain: str) -> str:
    """Lower-case ``domain`` in A-labels; AddressError if it is not a host name."""
    if not domain:
        raise AddressError("empty domain")
    if _CONTROL.search(domain):
        raise AddressError("control character in domain")
    if domain.endswith("."):
        raise AddressError(f"domain {domain!r} ends with a dot (RFC 5321 §4.1.2 forbids it)")
    try:
        alabel = _to_alabel(domain)
    except UnicodeError as exc:
        raise AddressError(f"domain {domain!r} is not a valid IDN: {exc}") from None
    if len(alabel) > MAX_DOMAIN - 2:
        raise AddressError(f"domain is {len(alabel)} characters long (limit 253)")
    labels = alabel.split(".")
    for label in labels:
        if not label:
            raise AddressError(f"domain {domain!r} has an empty label")
        if len(label) > MAX_LABEL:
            raise AddressError(f"label {label[:20]!r}... is {len(label)} octets long (limit 63)")
        if not _LDH_LABEL.match(label):
            raise AddressError(f"label {label!r} is not letters, digits and hyphens")
    return alabel


def is_local_name(name: str) -> bool:
    """``localhost`` and its kin, names only this host knows: ``localhost.*``, ``*.localhost``
    (RFC 6761 §6.3) and ``*.localdomain`` (the placeholder of many /etc/hosts and of Postfix's
    ``mydomain``)."""
    labels = name.lower().rstrip(".").split(".")
    return labels[0] == "localhost" or labels[-1] in ("localhost", "localdomain")


def _to_alabel(domain: str) -> str:
    if domain.isascii():
        return domain.lower()
    try:
        import idna  # IDNA 2008 with UTS 46 mapping, when installed

        return str(idna.encode(domain, uts46=True).decode("ascii")).lower()
    except ImportError:
        return domain.encode("idna").decode("ascii").lower()


def parse_literal(text: str) -> IPAddress:
    """Parse an address literal ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3)."""
    if not (text.startswith("[") and text.endswith("]")):
        raise AddressError(f"{text!r} is not an address literal")
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return ipaddress.IPv6Address(inner[5:])
        return ipaddress.IPv4Address(inner)
    except ValueError:
        raise AddressError(f"malformed address literal {text!r}") from None


def parse_address(text: str) -> Address:
    """Parse ``local@domain`` (angle brackets allowed) into an Address, or raise AddressError."""
    if _CONTROL.search(text):
        raise AddressError("control character in address")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text:
        raise AddressError("empty address")
    if len(text.encode("utf-8")) > MAX_PATH - 2:
        raise AddressError(f"address is longer than {MAX_PATH - 2} octets")
    local, sep, domain = text.rpartition("@")
    if not sep or not local:
        raise AddressError(f"{text!r} is not of the form local-part@domain")
    if not (_DOT_STRING.match(local) or _QUOTED.match(local)):
        raise AddressError(f"local part {local!r} is not a dot-string or a quoted string")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(f"local part is longer than {MAX_LOCAL_PART} octets")
    if domain.startswith("["):
        literal = parse_literal(domain)
        shown = f"[{literal}]" if literal.version == 4 else f"[IPv6:{literal}]"
        return Address(local, shown, literal)
    return Address(local, normalize_domain(domain))


def parse_path(text: str) -> Address | None:
    """Parse an SMTP reverse- or forward-path; ``<>`` gives None.

    A source route (``<@a,@b:user@d>``) is accepted and dropped: only the final
    hop is kept (RFC 5321 §4.1.1.3, appendix C; SEC-3). A domain whose last label
    is numeric (``user@192.0.2.1``) is refused: an IP address needs brackets (§4.1.3).
    """
    text = text.strip()
    if text == "<>":
        return None
    if not (text.startswith("<") and text.endswith(">")):
        raise AddressError(f"path {text!r} must be enclosed in angle brackets")
    inner = text[1:-1]
    if inner.startswith("@"):
        route, sep, mailbox = inner.partition(":")
        if not sep or not re.fullmatch(r"@[^,:@]+(?:,@[^,:@]+)*", route):
            raise AddressError(f"malformed source route in {text!r}")
        inner = mailbox
    address = parse_address(inner)
    domain = address.domain
    if address.literal is None and domain.rpartition(".")[2].isdigit():
        # No host name ends in an all-numeric label (RFC 1123 section 2.1, RFC 3696 section 2): such
        # mail could only bounce as NXDOMAIN later, so it is refused in the session (DSN-13).
        literal = f"[{domain}]" if _is_ipv4(domain) else "[192.0.2.1]"
        raise AddressError(f"domain {domain} is not a host name: its last label is all digits "
                           f"(RFC 1123 section 2.1); an IP address is written as an address "
                           f"literal, {literal}")
    return address


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- host:port endpoints (listen, metrics_listen, dns_servers, --dns) ---------------------------

def _split_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``v6`` or ``host`` → (host, port); ValueError on a bad port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, _port(text, rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, _port(text, port_text)
    return text, default_port


def _port(text: str, port: str) -> int:
    """The port of ``text``, ValueError naming it when it is not a number."""
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port (port {port!r} is not a number)")
    return int(port)


def parse_hostport(text: str, default_port: int = 25) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` → (host, port)."""
    text = text.strip()
    host, port = _split_hostport(text, default_port)
    if not host or not 0 <= port < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, port


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a ``routes`` rule sends mail instead of the recipient domain's MX (issue 16).

    ``[host]:port`` connects to ``host``'s addresses (no MX lookup, as Postfix's brackets),
    ``host:port`` looks up ``host``'s MX first, ``smtps://host:port`` connects to ``host``'s
    addresses with implicit TLS (RFC 8314 §3.3). ``host`` is an A-label name or an IP address.
    """

    host: str
    port: int
    mx: bool  # look up the MX records of ``host`` (no brackets)
    implicit_tls: bool  # smtps:// (RFC 8314): TLS from the first byte
    literal: IPAddress | None = None  # ``host`` is an IP address

    def __str__(self) -> str:
        shown = f"[{self.host}]" if self.literal is not None and self.literal.version == 6 \
            else self.host
        if self.implicit_tls:
            return f"smtps://{shown}:{self.port}"
        if self.mx:
            return f"{shown}:{self.port}"
        return f"[{self.host}]:{self.port}"


def parse_next_hop(text: str) -> NextHop:
    """A ``routes`` rule's ``next_hop`` (see ``NextHop``); ValueError naming what is wrong.

    The port is 25 by default, 465 for ``smtps://``. An IP address is never looked up in MX,
    bracketed or not; an IPv6 address is written in brackets (``[2001:db8::1]:25``, or
    ``[IPv6:2001:db8::1]`` as in an address literal).
    """
    raw = text.strip()
    implicit = raw.lower().startswith("smtps://")
    rest = raw[len("smtps://"):] if implicit else raw
    if "/" in rest or "://" in raw and not implicit:
        raise ValueError(f"next hop {text!r}: only smtps:// is a scheme "
                         "([host]:port, host:port or smtps://host:port)")
    bracketed = rest.startswith("[")
    try:
        host, port = _split_hostport(rest, 465 if implicit else 25)
    except ValueError as exc:
        raise ValueError(f"next hop {exc}") from None
    if bracketed and host.lower().startswith("ipv6:"):
        host = host[5:]
    if not host or not 0 < port < 65536:
        raise ValueError(f"next hop {text!r} is not [host]:port, host:port or smtps://host:port")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None:
        try:
            host = normalize_domain(host)
        except AddressError as exc:
            raise ValueError(f"next hop {text!r}: {exc.message}") from None
    else:
        host = str(literal)
    return NextHop(host, port, mx=not bracketed and not implicit and literal is None,
                   implicit_tls=implicit, literal=literal)


def parse_dns_server(text: str) -> tuple[str, int]:
    """A DNS server: ``ip``, ``ip:port``, ``[v6]:port`` or ``v6`` → (ip, port), by default :53."""
    host, port = _split_hostport(text.strip(), 53)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


@dataclass(frozen=True, slots=True)
class Listener:
    """One ``listen`` item: ``host:port`` (SMTP; STARTTLS once a certificate is set) or
    ``smtps://host:port`` (implicit TLS from the first byte, RFC 8314 §3.3: port 465 by
    default). ``host`` as written (an IP address or ``localhost``; the settings check it)."""

    host: str
    port: int
    implicit_tls: bool = False

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'smtps://' if self.implicit_tls else ''}{shown}:{self.port}"


def parse_listener(text: str) -> Listener:
    """A ``listen`` item (see ``Listener``); ValueError naming what is wrong."""
    raw = text.strip()
    implicit = raw.lower().startswith("smtps://")
    rest = raw[len("smtps://"):] if implicit else raw
    if "/" in rest:
        raise ValueError(f"listen {text!r}: only smtps:// is a scheme "
                         "(host:port, [v6]:port or smtps://host:port)")
    host, port = parse_hostport(rest, 465 if implicit else 2525)
    return Listener(host, port, implicit)

"""`mxroute spf IP SENDER [--helo NAME] [--json]`: RFC 7208 check_host() with its trace.

SENDER is a MAIL FROM address; ``<>`` or ``""`` is the null reverse-path, for
which the HELO identity ``postmaster@HELO`` is checked (RFC 7208 §2.4) and
``--helo`` is required. A bare domain means ``postmaster@domain`` (§4.3).
Without ``--helo``, ``%{h}`` expands to the sender's domain. A malformed domain
(a 64-octet label, an empty label, ``foo@[1.2.3.5]``, a HELO literal) is evaluated
as RFC 7208 §4.3 says: the result is ``none`` (issue 16).

Exit codes (CONTRACT.md, "Exit codes of explain and spf"): 0 when the check ran
and produced a verdict (pass, fail, softfail, neutral, none, permerror — a broken
record is an answer about the domain); 75 for temperror, the contract's
"temporary failure (SERVFAIL, timeout)": the same command may answer later;
64 for a malformed IP, a missing argument (a null sender without ``--helo``) or a
control character, which no SMTP command carries.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys

from mxroute.address import normalize_domain
from mxroute.cli.identity import render_spf
from mxroute.dns.resolver import Resolver
from mxroute.errors import EX_OK, EX_TEMPFAIL, EX_USAGE, AddressError
from mxroute.identity.spf.evaluate import SPFOptions, check_host
from mxroute.identity.spf.results import TEMPERROR

EXIT_CODES = {TEMPERROR: EX_TEMPFAIL}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def lookup_name(name: str) -> str:
    """``name`` as check_host() should be given it: a valid IDN in A-labels (§4.3), anything
    else as typed, for check_host() to judge (a malformed domain is the result ``none``)."""
    if name.isascii():
        return name
    try:
        return normalize_domain(name)
    except AddressError:
        return name


def parse_sender(sender: str, helo: str | None) -> tuple[str, str, str]:
    """(domain, sender, helo) to check; raise AddressError only for what is not an argument.

    A malformed domain (a label over 63 octets, an empty label, a domain literal) is not an
    error here: RFC 7208 §4.3 makes it check_host()'s result ``none``. What no SMTP command
    could carry (a control character) and a null sender without ``--helo`` are.
    """
    for what, given in (("sender", sender), ("HELO name", helo or "")):
        if _CONTROL.search(given.strip()):
            raise AddressError(f"control character in the {what}")
    text = sender.strip()
    if text in ("", "<>"):
        if not helo:
            raise AddressError("a null sender needs --helo: "
                               "the HELO identity is checked (RFC 7208 §2.4)")
        domain = lookup_name(helo.strip())
        return domain, f"postmaster@{domain}", helo
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, domain_text = text.rpartition("@")
    if not at:
        local, domain_text = "postmaster", text
    domain = lookup_name(domain_text)
    return domain, f"{local or 'postmaster'}@{domain}", helo if helo else domain


async def spf_command(resolver: Resolver, ip: str, sender: str, helo: str | None, as_json: bool,
                      options: SPFOptions | None = None) -> int:
    """Run check_host() and print the result (text with trace, or one JSON object).

    Returns the exit code.
    """
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        print(f"mxroute spf: {ip!r} is not an IP address", file=sys.stderr)
        return EX_USAGE
    try:
        domain, full_sender, helo_name = parse_sender(sender, helo)
    except AddressError as exc:
        print(f"mxroute spf: bad sender {sender!r}: {exc.message}", file=sys.stderr)
        return EX_USAGE
    result = await check_host(resolver, address, domain, full_sender, helo=helo_name,
                              options=options)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render_spf(result))
    return EXIT_CODES.get(result.result, EX_OK)

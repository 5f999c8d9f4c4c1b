"""Fuzzing, in process (SEC-5, SEC-6, SEC-7, SEC-12; the "never a traceback" promise): hypothesis
over the address parser, the SPF record parser and check_host() evaluator, the SMTP command parsers
of intake.params and the live RelaySMTP protocol. Only the documented error types may escape
(AddressError, PermError, Reply); every call is bounded in time (hypothesis deadline); the SMTP
session answers every input with a well-formed reply and never with aiosmtpd's "500 Error:
(Exception)" fallback.

atheris (coverage-guided) runs too when it is installed (a wheel exists for CPython 3.11 on x86-64
Linux), in a subprocess with a bounded number of runs; otherwise that one test is skipped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxroute.address import parse_address, parse_literal, parse_path
from mxroute.dns.resolver import Resolver
from mxroute.dns.zonefile import ZoneData, ZoneTransport
from mxroute.errors import AddressError
from mxroute.identity.spf.evaluate import check_host
from mxroute.identity.spf.macros import parse_domain_spec, parse_macro_string
from mxroute.identity.spf.parse import parse_record
from mxroute.identity.spf.results import PermError
from mxroute.relay.intake.handler import Intake
from mxroute.relay.intake.params import (
    Reply,
    check_content,
    parse_notify,
    parse_orcpt,
    parse_params,
    received_header,
    split_path,
    xtext_decode,
)
from mxroute.relay.intake.protocol import enhance
from mxroute.relay.spool.store import Spool
from mxroute.settings import Settings
from tests.support.paths import ROOT

TRIED: Counter[str] = Counter()  # inputs tried per target
ERRORS: Counter[str] = Counter()  # documented errors returned per target

FAST = settings(max_examples=int(os.environ.get("FAULTS_FUZZ_EXAMPLES", "1500")), deadline=2000,
                suppress_health_check=[HealthCheck.too_slow])
# deadlines generous enough for a loaded CI machine, still a bound on every single call
SLOW = settings(
    max_examples=int(os.environ.get("FAULTS_FUZZ_SLOW_EXAMPLES", "250")),
    deadline=10000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# text that looks like what the parsers see, plus anything at all
MAILISH = st.lists(
    st.sampled_from(
        list('abcXYZ09.-_@%!:,<>[]"\\ +=;/()\r\n\t\x00\x7fü€ÿ')
        + ["IPv6:", "::1", "192.0.2.1", "xn--", "@a.test", "<u@b.test>"]
    ),
    max_size=60,
).map("".join)
ANY = st.one_of(
    MAILISH, st.text(max_size=300), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
)
# near-valid paths: source routes, quoted parts, IDN, literals, dots
ADDRESSY = st.one_of(ANY, st.from_regex(
    r'\A<?(@[a-z0-9.]{1,20}(,@[a-z.]{1,9})*:)?("[ a-z@%!\\.]{0,20}"|[a-zA-Z0-9.!#%+_=ü-]{1,70})'
    r'@(([a-zA-Z0-9ü-]{1,64}\.){0,4}[a-z0-9-]{1,64}\.?|\[(IPv6:)?[0-9a-f.:]{1,40}\])>?\Z'))


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    from tests.faults.conftest import FIGURES

    for target in sorted(TRIED):
        FIGURES.append(
            (
                f"fuzz {target}",
                {
                    "inputs_tried": TRIED[target],
                    "documented_errors": ERRORS[target],
                    "escaped_exceptions": 0,
                },
            )
        )


# --- addresses (SEC-5) ----------------------------------------------------------------------------

@FAST
@given(ADDRESSY)
def test_fuzz_address_parser_raises_only_address_error(text: str) -> None:
    for name, parse in (
        ("address", parse_address),
        ("path", parse_path),
        ("literal", parse_literal),
    ):
        TRIED[f"address parser ({name})"] += 1
        try:
            result = parse(text)
        except AddressError as exc:
            ERRORS[f"address parser ({name})"] += 1
            assert exc.smtp_reply()[:1] in ("4", "5") and "\n" not in exc.smtp_reply()
            continue
        if isinstance(result, ipaddress.IPv4Address | ipaddress.IPv6Address) or result is None:
            continue
        shown = str(result)
        assert not re.search(r"[\x00-\x1f\x7f]", shown)  # SEC-5: no control character survives
        assert len(result.local.encode()) <= 64 and parse_address(shown) == result  # idempotent


# --- SPF (RFC 7208) -------------------------------------------------------------------------------

TERMS = st.sampled_from([
    "all", "-all", "~all", "?all", "+all", "a", "mx", "ptr", "a/24", "mx/24//64", "a:a.fuzz.test",
    "mx:b.fuzz.test",
    "include:a.fuzz.test", "include:loop.fuzz.test", "include:%{d}", "exists:%{i}.x.fuzz.test",
    "exists:%{l1r+-}.fuzz.test",
    "ip4:127.0.0.1", "ip4:10.0.0.0/8", "ip6:::1", "ip6:2001:db8::/32", "redirect=b.fuzz.test",
    "redirect=%{d2}",
    "exp=e.fuzz.test", "ptr:fuzz.test", "a:%{ir}.%{v}._spf.%{d}", "include:nx.fuzz.test",
    "a:servfail.fuzz.test",
    "ip4:1.2.3.4/33", "foo=bar", "unknown:x", "%{z}", "a:", "include:", "exists:%{", "ip6:",
    "v=spf1",
])
RECORDS = st.one_of(
    st.lists(TERMS, max_size=12).map(lambda terms: " ".join(["v=spf1", *terms])),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters='"\\'),
        max_size=120,
    ).map(lambda t: "v=spf1 " + t),
)


@FAST
@given(st.one_of(RECORDS, ANY))
def test_fuzz_spf_record_and_macro_parsers_raise_only_permerror(text: str) -> None:
    for name, parse in (("record", parse_record), ("macro-string", parse_macro_string),
                        ("domain-spec", parse_domain_spec)):
        TRIED[f"SPF parser ({name})"] += 1
        try:
            parse(text)
        except PermError:
            ERRORS[f"SPF parser ({name})"] += 1


def _spf_zone(record: str, other: str) -> ZoneData:
    data = ZoneData()
    data.load_text(
        "$ORIGIN fuzz.test.\n$TTL 60\n@ IN SOA ns.fuzz.test. h.fuzz.test. 1 3600 600 86400 60\n"
        "a IN A 127.0.0.1\nb IN MX 10 a.fuzz.test.\n"
        'loop IN TXT "v=spf1 include:loop.fuzz.test -all"\n'
        'e IN TXT "denied for %{s} from %{i}"\n'
    )
    data.add("fuzz.test", "TXT", 60, '"' + record + '"')
    data.add("b.fuzz.test", "TXT", 60, '"' + other + '"')
    data.add("a.fuzz.test", "TXT", 60, '"v=spf1 a mx include:fuzz.test ?all"')
    data.fail("servfail.fuzz.test", "SERVFAIL")
    return data


@SLOW
@given(
    record=RECORDS,
    other=RECORDS,
    ip=st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "2001:db8::5", "192.0.2.9"]),
    local=st.sampled_from(["s", "a.b", "x-y+z", '"q q"']),
)
def test_fuzz_spf_check_host_always_returns_a_result(
    record: str, other: str, ip: str, local: str
) -> None:
    """check_host() over hypothesis-made records (includes, redirects, macros, loops, SERVFAIL): one
    of the seven results, never an exception, within the deadline (RFC 7208 §4.6.4 limits)."""
    TRIED["SPF check_host()"] += 1
    resolver = Resolver(ZoneTransport(_spf_zone(record, other)))
    result = asyncio.run(asyncio.wait_for(
        check_host(resolver, ip, "fuzz.test", f"{local}@fuzz.test", helo="h.fuzz.test"), 5))
    assert result.result in (
        "pass",
        "fail",
        "softfail",
        "neutral",
        "none",
        "temperror",
        "permerror",
    )
    if result.result in ("temperror", "permerror"):
        ERRORS["SPF check_host()"] += 1


# --- SMTP command parsing in intake.params -------------------------------------------------------

PARAM_WORDS = st.lists(
    st.one_of(
        ANY,
        st.tuples(
            st.sampled_from(
                ["SIZE", "BODY", "RET", "ENVID", "NOTIFY", "ORCPT", "AUTH", "size", "X-Y", "", "+"]
            ),
            st.sampled_from(["=", "", "=="]),
            MAILISH,
        ).map("".join),
    ),
    max_size=5,
)
PARAM_ARG = st.one_of(
    ADDRESSY,
    MAILISH.map(lambda t: "rfc822;" + t),
    st.lists(
        st.sampled_from(["NEVER", "SUCCESS", "FAILURE", "DELAY", "success", "x", ""]), max_size=4
    ).map(",".join),
)


@FAST
@given(PARAM_ARG, PARAM_WORDS)
def test_fuzz_smtp_parameter_parsers_raise_only_reply(arg: str, words: list[str]) -> None:
    """split_path, parse_params, NOTIFY/ORCPT/xtext: only Reply (a finished SMTP reply) escapes."""
    calls: list[tuple[str, Callable[[], object]]] = [
        ("split_path", lambda: split_path(arg)),
        (
            "parse_params",
            lambda: parse_params(
                words, {"SIZE", "BODY", "RET", "ENVID", "NOTIFY", "ORCPT", "AUTH"}
            ),
        ),
        ("parse_notify", lambda: parse_notify(arg)),
        ("parse_orcpt", lambda: parse_orcpt(arg)),
        ("xtext_decode", lambda: xtext_decode(arg)),
    ]
    for name, call in calls:
        TRIED[f"SMTP parser ({name})"] += 1
        try:
            value = call()
        except Reply as exc:
            ERRORS[f"SMTP parser ({name})"] += 1
            assert re.fullmatch(r"[45]\d\d [45]\.\d{1,3}\.\d{1,3} [^\r\n]*", exc.text), exc.text
            continue
        if name == "parse_orcpt":
            # SEC-6: no control in a kept ORCPT
            assert not re.search(r"[\x00-\x1f\x7f]", str(value))


@FAST
@given(st.binary(max_size=3000), st.sampled_from(["normalize", "reject"]))
def test_fuzz_content_checks_never_raise_and_never_leave_a_bare_newline(
    content: bytes, mode: str
) -> None:
    """SEC-1: whatever DATA holds, the canonical content has only CRLF line ends, or it is
    refused."""
    TRIED["DATA content checks"] += 1
    canonical, problem = check_content(content, mode, 100)
    if problem is not None:
        ERRORS["DATA content checks"] += 1
        assert problem[:1] == "5"
        return
    assert canonical.count(b"\r") == canonical.count(b"\n") == canonical.count(b"\r\n")


@FAST
@given(ANY, ANY)
def test_fuzz_received_header_and_reply_enhancement_stay_single_line(helo: str, rcpt: str) -> None:
    """SEC-6: a hostile EHLO name or recipient never adds a header line; replies keep one line."""
    TRIED["Received: header / reply codes"] += 1
    header = received_header(
        helo=helo,
        rdns=rcpt,
        ip="127.0.0.1",
        by="relay.test",
        proto="ESMTP",
        queue_id="ABC",
        rcpt=rcpt,
        now=0.0,
    )
    lines = header.split(b"\r\n")
    assert lines[-1] == b"" and lines[0].startswith(b"Received: from ")
    assert all(
        line[:1] == b"\t" and b"\r" not in line and b"\n" not in line for line in lines[1:-1]
    )
    reply = enhance("550 " + helo.replace("\r", "").replace("\n", ""))
    assert reply.startswith("550")


# --- the live protocol: RelaySMTP on loopback, in process -----------------------------------------

class InProcessRelay:
    """Intake + RelaySMTP on 127.0.0.1 in a background event loop (stopped by the fixture)."""

    def __init__(self, spool_dir: Path) -> None:
        self.settings = Settings(spool_dir=spool_dir, helo_name="fuzz.test", max_message_size=65536,
                                 command_timeout=5, data_timeout=5, dns_servers=["127.0.0.1:9"])
        self.spool = Spool(spool_dir)
        self.spool.prepare()
        self.queued = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        def on_queued(_meta: object) -> None:
            self.queued += 1

        # DNS from an empty zone: every MAIL FROM domain is NXDOMAIN at once (accepted by the
        # default check)
        resolver = Resolver(ZoneTransport(ZoneData()))
        self.intake = Intake(self.settings, self.spool, on_queued, resolver=resolver)
        self.server = asyncio.run_coroutine_threadsafe(
            self.loop.create_server(self.intake.factory(), "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for session in list(self.intake.sessions):
                if session.transport is not None:
                    session.transport.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.spool.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessRelay]:
    relay = InProcessRelay(tmp_path_factory.mktemp("fuzz") / "spool")
    try:
        yield relay
    finally:
        relay.stop()


VERBS = st.sampled_from(
    [
        "EHLO",
        "HELO",
        "MAIL FROM:",
        "RCPT TO:",
        "DATA",
        "RSET",
        "NOOP",
        "VRFY",
        "EXPN",
        "HELP",
        "AUTH",
        "STARTTLS",
        "BDAT",
        "QUIT",
        "XCLIENT",
        "mail from:",
        "rcpt to:",
        "",
    ]
)
LINE = st.one_of(
    st.tuples(VERBS, MAILISH).map(lambda t: (t[0] + t[1]).encode("utf-8", "surrogateescape")),
    st.tuples(
        st.sampled_from(["MAIL FROM:<a@x.test>", "RCPT TO:<u@dest.test>"]),
        st.lists(
            st.sampled_from(
                [
                    "SIZE=",
                    "BODY=",
                    "RET=",
                    "ENVID=",
                    "NOTIFY=",
                    "ORCPT=",
                    "SMTPUTF8",
                    "AUTH=",
                    "X=",
                    "+",
                    "rfc822;",
                    "+0D+0A",
                    "8BITMIME",
                    "FULL",
                    "99999999999",
                ]
            ),
            max_size=6,
        ),
    ).map(lambda t: (t[0] + " " + "".join(t[1])).encode()),
    st.binary(max_size=120),
)


@SLOW
@given(st.lists(LINE, min_size=1, max_size=10))
def test_fuzz_live_smtp_session_answers_every_input_with_a_clear_reply(
    live: InProcessRelay, lines: list[bytes]
) -> None:
    """Any sequence of command lines (valid verbs with hostile arguments, DSN parameters, raw
    bytes): every reply line is ``NNN[ -]text``, none is aiosmtpd's internal-exception fallback, the
    session ends on QUIT within the bound, and the server keeps serving."""
    TRIED["live SMTP session (RelaySMTP)"] += 1
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        wire = b"".join(line.replace(b"\n", b" ").replace(b"\r", b" ") + b"\r\n" for line in lines)
        sock.sendall(wire + b"\r\n.\r\nQUIT\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
    replies = [line for line in data.split(b"\r\n") if line]
    assert replies and replies[0].startswith(b"220")
    for reply in replies:
        assert re.match(rb"\d{3}[ -]", reply), reply
        assert b"Error: (" not in reply, reply  # an exception inside a handler
    ERRORS["live SMTP session (RelaySMTP)"] += sum(1 for r in replies if r[:1] in b"45")
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as probe:
        assert probe.recv(100).startswith(b"220")


# --- atheris (coverage-guided), when installed ----------------------------------------------------

ATHERIS_HARNESS = r'''
import sys, atheris
with atheris.instrument_imports():
    from mxroute.address import parse_path
    from mxroute.errors import AddressError
    from mxroute.relay.intake.params import Reply, split_path, parse_params, check_content
    from mxroute.identity.spf.parse import parse_record
    from mxroute.identity.spf.results import PermError

def one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(200)
    try:
        parse_path(text)
    except AddressError:
        pass
    try:
        parse_record("v=spf1 " + text)
    except PermError:
        pass
    try:
        path, words = split_path(text)
        parse_params(words, {"SIZE", "BODY", "RET", "ENVID", "NOTIFY", "ORCPT"})
    except Reply:
        pass
    check_content(data, "normalize", 100)

atheris.Setup(sys.argv, one)
atheris.Fuzz()
'''


@pytest.mark.slow
def test_fuzz_atheris_coverage_guided(tmp_path: Path, figures: Callable[..., None]) -> None:
    pytest.importorskip(
        "atheris",
        reason="atheris is not installed (it has wheels for CPython 3.11 on x86-64 Linux)",
    )
    harness = tmp_path / "harness.py"
    harness.write_text(ATHERIS_HARNESS)
    runs = int(os.environ.get("FAULTS_ATHERIS_RUNS", "20000"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(harness), f"-runs={runs}", "-max_total_time=40", "-rss_limit_mb=2048"],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    tail = done.stderr[-3000:]
    executed = re.findall(r"Done (\d+) runs", done.stderr)
    figures(
        "fuzz atheris (address, SPF record, SMTP params, DATA)",
        runs=executed[-1] if executed else "?",
        crashes=0 if done.returncode == 0 else 1,
    )
    assert done.returncode == 0, tail

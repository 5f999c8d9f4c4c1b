"""DNS faults through the real relay (MX-4..6, MX-9..11, SEC-11, SEC-12): a loopback authoritative
server that times out, answers SERVFAIL, truncates (TC=1 → TCP), serves CNAME loops, oversized
answers (500 and 10,000 MX records), MX targets on loopback/private addresses and MX targets that
are the relay itself. Mail is deferred (4.4.3) or bounced with the right RFC 3463 code, never
delivered to a forbidden address, the relay never crashes, and the resolver recovers when the
server comes back (faults healed, and the whole server stopped and restarted).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import pytest

from tests.support.dnsserver import DNSServer, LoggedQuery
from tests.support.relay import ROOT, Relay, World, next_net, wait_for

pytestmark = pytest.mark.slow

MSG = b"From: a@sender.test\r\nSubject: dns fault\r\n\r\nbody\r\n"


class OversizeDNSServer(DNSServer):
    """The loopback server, plus what a real one does with an answer over 64 KiB: over UDP an
    empty TC=1 answer (the client retries over TCP), over TCP as many records as fit, with TC=1."""

    oversize: dict[Any, bytes]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.oversize = {}

    def respond(self, wire: bytes, transport: str) -> bytes | None:
        try:
            request = dns.message.from_wire(wire)
            question = request.question[0]
        except (dns.exception.DNSException, ValueError, IndexError):
            return None
        key = (question.name, question.rdtype, transport)
        cached = self.oversize.get(key)
        if cached is None:
            try:
                return super().respond(wire, transport)
            except dns.exception.TooBig:
                cached = self.oversize[key] = self._oversize(request, transport)
        else:
            # answered from the cache at once, even on a loaded machine, and logged like any other
            self.log.append(LoggedQuery(question.name.to_text(omit_final_dot=True).lower(),
                                        dns.rdatatype.to_text(question.rdtype), transport))
        return wire[:2] + cached[2:]  # the request's ID

    def _oversize(self, request: dns.message.Message, transport: str) -> bytes:
        with self._lock:
            response = self.data.answer(request)
        assert response is not None
        response.flags |= dns.flags.TC
        if transport == "udp":
            response.answer.clear()
            return response.to_wire()
        rrset = response.answer[-1]
        items = list(rrset)
        rrset.clear()
        for item in items[:200]:
            rrset.add(item)
        # from the size of 200 records
        keep = min(len(items), int(200 * 62000 / len(response.to_wire())))
        for _ in range(50):  # bounded: shrink by 2% until it fits
            rrset.clear()
            for item in items[:keep]:
                rrset.add(item)
            try:
                return response.to_wire(max_size=65535)
            except dns.exception.TooBig:
                keep = int(keep * 0.98)
        raise AssertionError("could not fit the answer")


@pytest.fixture
def dworld(tmp_path: Path) -> Iterator[World]:
    net = next_net()
    with (OversizeDNSServer(host=f"127.0.54.{net}") as server,
          World.running(tmp_path, server, net) as w):
        yield w


def _zone(w: World, extra: str) -> None:
    w.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {w.ip(1)}\n"
           f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {w.ip(9)}\n{extra}")


def _send(relay: Relay, rcpt: str, sender: str = "a@sender.test") -> str:
    with relay.client() as client:
        client.mail(sender)
        code, reply = client.rcpt(rcpt)
        assert code == 250, (rcpt, code, reply)
        code, reply = client.data(MSG)
        assert code == 250, (rcpt, code, reply)
    return reply.split()[-1].decode()


def _show(relay: Relay, queue_id: str) -> dict[str, Any] | None:
    done = relay.queue("show", queue_id, "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def _dsn_status(messages: list[Any]) -> dict[str, str]:
    """Final-Recipient → Status of every DSN the sender's sink received (RFC 3464 §2.3)."""
    found: dict[str, str] = {}
    for m in messages:
        text = m.data.decode("utf-8", "replace")
        for block in re.split(r"\r\n\r\n", text):
            final = re.search(r"(?im)^Final-Recipient:\s*rfc822;\s*(\S+)", block)
            status = re.search(r"(?im)^Status:\s*(\S+)", block)
            if final and status:
                found[final.group(1).lower()] = status.group(1)
    return found


def test_dns_faults_defer_or_bounce_with_the_right_code_and_recover(
        dworld: World, figures: Callable[..., None]) -> None:
    """MX-4/5/6/10/11, SEC-12: each DNS fault gives its deferral or bounce; healed, the deferred
    ones go out."""
    w = dworld
    huge = "".join(f"huge IN MX {10 + n % 50000} mx{n}.huge.test.\n" for n in range(10_000))
    many = "".join(f"many IN MX {10 + n} mx{n}.many.test.\n" for n in range(500))
    _zone(w, f"""
timeout IN MX 10 mx1.dest.test.
servfail IN MX 10 mx1.dest.test.
trunc IN MX 10 mx1.dest.test.
loop IN CNAME loop2.test.
loop2 IN CNAME loop.test.
nx-host IN MX 10 nowhere.nx-host.test.
nullmx IN MX 0 .
selfname IN MX 10 relay.test.
relay IN A {w.ip(5)}
selfaddr IN MX 10 mx.selfaddr.test.
mx.selfaddr IN A {w.ip(5)}
{many}*.many IN A {w.ip(1)}
{huge}*.huge IN A {w.ip(1)}
""")
    w.dns.fail("timeout.test", "TIMEOUT")
    w.dns.fail("servfail.test", "SERVFAIL")
    w.dns.truncate.update({"trunc.test", "many.test"})
    warm = dns.message.make_query("huge.test", "MX").to_wire()
    # the 10,000-record answer, computed once
    w.dns.respond(warm, "udp"), w.dns.respond(warm, "tcp")
    w.dns.log.clear()
    sink = w.sink(1)
    dsns = w.sink(9)
    relay = Relay(w.tmp, w.dns, w.sink_port, dns_timeout=1.5, dns_attempts=1, retry_min_seconds=1,
                  retry_max_seconds=2)
    # MX-11 by address: the relay also listens where an MX points, on the delivery port
    relay.env["MXROUTE_LISTEN"] = json.dumps([f"127.0.0.1:{relay.port}",
                                              f"{w.ip(5)}:{w.sink_port}"])
    w.relays.append(relay)
    relay.start()
    deliver = ["u@dest.test", "t@trunc.test", "m@many.test", "h@huge.test"]
    bounce = {"x@nx.test": "5.1.2", "n@nullmx.test": "5.1.10", "s@selfname.test": "5.4.6",
              "s@selfaddr.test": "5.4.6", "h@nx-host.test": "5.4.4"}
    defer = ["t@timeout.test", "s@servfail.test", "l@loop.test"]
    ids = {rcpt: _send(relay, rcpt) for rcpt in deliver + list(bounce) + defer}

    def delivered() -> set[str]:
        return {r for m in sink.messages for r in m.rcpt_to}

    assert wait_for(lambda: set(deliver) <= delivered(), timeout=20), delivered()
    assert wait_for(lambda: set(bounce) <= set(_dsn_status(dsns.messages)),
                    timeout=20), _dsn_status(dsns.messages)
    statuses = _dsn_status(dsns.messages)
    assert {r: statuses[r] for r in bounce} == bounce
    # deferred, with a DNS reason (4.4.3), still queued after several attempts
    assert wait_for(lambda: all((_show(relay, ids[r]) or {}).get("recipients", [{}])[0]
                                .get("attempts", 0) >= 2
                                for r in defer), timeout=20)
    shown = {r: _show(relay, ids[r]) for r in defer}
    for rcpt, data in shown.items():
        assert data is not None, rcpt
        (state,) = data["recipients"]
        assert state["state"] == "pending" and state["status"] == "4.4.3", (rcpt, state)
    assert not delivered() & set(defer)
    tcp = {q.qname for q in w.dns.log if q.transport == "tcp"}
    # TC=1 → retried over TCP (SEC-12, RFC 7766)
    assert {"trunc.test", "many.test", "huge.test"} <= tcp
    huge_hosts = {q.qname for q in w.dns.log
                  if q.qname.endswith(".huge.test") and q.qtype in ("A", "AAAA")}
    assert 0 < len(huge_hosts) <= 32  # the MX RRset is processed only up to the cap (SEC-12)
    assert w.ip(5) not in {c.local[0] for c in sink.connections}
    # the faults heal: the resolver recovers, the deferred mail goes out
    w.dns.heal()
    _zone(w, "timeout IN MX 10 mx1.dest.test.\nservfail IN MX 10 mx1.dest.test.\n"
             "loop IN MX 10 mx1.dest.test.\n")
    time.sleep(5.5)  # the resolver remembers a temporary failure for 5 s (RFC 2308 §7.1)
    assert relay.queue("flush").returncode == 0
    assert wait_for(lambda: set(defer) <= delivered(), timeout=20), delivered()
    # the whole server goes away and comes back on the same address
    w.dns.stop()
    gone_id = _send(relay, "g@dest.test")
    assert wait_for(lambda: ((_show(relay, gone_id) or {}).get("recipients") or [{}])[0]
                    .get("status") == "4.4.3",
                    timeout=20)
    w.dns.start()
    time.sleep(5.5)
    assert relay.queue("flush").returncode == 0
    assert wait_for(lambda: "g@dest.test" in delivered(), timeout=20)
    assert wait_for(lambda: not relay.queued(), timeout=20)
    counts: dict[str, int] = {}
    for r in delivered():
        counts[r] = sum(r in m.rcpt_to for m in sink.messages)
    assert relay.proc is not None and relay.proc.poll() is None
    log = relay.log()
    figures("DNS faults (MX-4..11, SEC-12)", scenarios=len(ids) + 1,
            delivered=len(deliver) + len(defer) + 1,
            bounced_right_code=sum(statuses[r] == c for r, c in bounce.items()),
            deferred_4_4_3_then_recovered=len(defer) + 1, tcp_fallbacks=len(tcp),
            huge_mx_hosts_asked=len(huge_hosts), duplicated=sum(c - 1 for c in counts.values()),
            crashes=0, log_tracebacks=log.count("Traceback"))
    assert "Traceback" not in log
    assert all(c == 1 for c in counts.values()), counts


PRIVATE_TARGETS = {  # SEC-11: each must cause zero connections with allow_private_destinations off
    "loop4": "IN A {sink}", "ten": "IN A 10.1.1.1", "mapped": "IN AAAA ::ffff:{sink}",
    "meta": "IN A 169.254.169.254", "zero": "IN A 0.0.0.0", "cgnat": "IN A 100.64.0.1",
    "v6loop": "IN AAAA ::1", "ula": "IN AAAA fd00::1", "linklocal6": "IN AAAA fe80::1",
    "mcast": "IN A 224.0.0.1", "compat": "IN AAAA ::7f00:1",
}


def test_sec11_mx_to_loopback_or_private_addresses_is_never_dialled(
        dworld: World, figures: Callable[..., None]) -> None:
    """SEC-11: allow_private_destinations=false (the default; the other e2e tests turn it on to
    reach loopback sinks): MX targets on loopback, RFC 1918, link-local, CGNAT, multicast,
    unspecified, IPv4-mapped/compatible → no connection at all, bounced 5.4.4 blocked-address."""
    w = dworld
    records = "".join(f"{name} IN MX 10 mx.{name}.test.\nmx.{name} {rr.format(sink=w.ip(1))}\n"
                      for name, rr in PRIVATE_TARGETS.items())
    _zone(w, records)
    sink = w.sink(1)
    relay = w.relay(allow_private_destinations=False)
    for name in PRIVATE_TARGETS:
        # a null sender: no DSN (it could not go anywhere)
        _send(relay, f"u@{name}.test", sender="<>")
    assert wait_for(lambda: not relay.queued(), timeout=20), relay.queued()
    reasons: dict[str, list[str]] = {}
    for name in PRIVATE_TARGETS:
        done = subprocess.run([sys.executable, "-m", "mxroute", "explain", f"u@{name}.test",
                               "--json"],
                              cwd=ROOT, env=relay.env, check=False, capture_output=True, text=True,
                              timeout=30)
        report = json.loads(done.stdout)
        assert done.returncode == 69 and report["dsn_status"] == "5.4.4", (name, report["reason"])
        assert report["plan"] == []
        reasons[name] = sorted({p["reason"] for p in report["pruned"]})
        assert reasons[name] == ["blocked-address"], (name, report["pruned"])
    time.sleep(0.5)
    log = relay.log()
    bounced = [name for name in PRIVATE_TARGETS if re.search(rf"<u@{name}\.test>.*5\.4\.4", log)]
    figures("SEC-11 forbidden MX targets", targets=len(PRIVATE_TARGETS),
            connections_to_sink=len(sink.connections),
            bounced_5_4_4=len(bounced), delivered=len(sink.messages))
    assert sink.connections == []
    assert sorted(bounced) == sorted(PRIVATE_TARGETS)

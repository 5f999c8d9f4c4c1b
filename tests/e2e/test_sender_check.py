"""The MAIL FROM domain check and in-session refusals, through the real `mxroute serve`.

SPF-13: a sender whose domain publishes a null MX (RFC 7505 §4.2) is refused at MAIL
with ``550 5.7.27``; ``null_mx_sender`` decides what DNS trouble and NXDOMAIN do.
DSN-13: whatever intake can know is refused inside the session, never accepted and
bounced later (RFC 5321 §6.2): no DSN, nothing in the spool.
"""

from __future__ import annotations

import signal
import time

from tests.support.relay import MSG, Relay, World, wait_for

SENDERS = ("nullmx IN MX 0 .\nnullmx IN A 127.0.0.1\n"  # a web-only domain: takes no mail
           "cached 300 IN MX 10 mx.sender.test.\n")


def mx_queries(world: World, name: str) -> int:
    return sum(1 for q in world.dns.log if q.qname == name and q.qtype == "MX")


def test_spf13_null_mx_sender_refused_at_mail_nothing_queued_no_dsn(world: World) -> None:
    """SPF-13: MAIL FROM:<u@nullmx.test> → 550 5.7.27, one log line with client and sender; the
    pipelined RCPT/DATA get 503; nothing is queued or bounced; the session goes on normally."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n{SENDERS}")
    dest = world.sink(1)
    relay = world.relay()
    with relay.client() as client:
        code, text = client.mail("u@nullmx.test")
        assert (code, text[:32]) == (550, b"5.7.27 Sender address has null M"), text
        assert b"nullmx.test" in text
        assert client.rcpt("x@dest.test")[0] == 503
        assert client.docmd("DATA")[0] == 503
        # the same session: a good sender is served
        client.sendmail("a@cached.test", ["x@dest.test"], MSG)
    assert wait_for(lambda: dest.messages)
    assert [m.mail_from for m in dest.messages] == ["a@cached.test"]
    assert wait_for(lambda: relay.queued() == [])
    # the good message's last line: the lines before it (a bounce's among them) are out too
    log = relay.logged("reject: MAIL from 127.0.0.1: 550 5.7.27", "from=<u@nullmx.test>",
                       ": removed")
    assert "reject: MAIL from 127.0.0.1: 550 5.7.27" in log and "from=<u@nullmx.test>" in log
    assert "non-delivery notification" not in log and "status=bounced" not in log


def test_spf13_strict_dns_trouble_451_nxdomain_550_default_accepts_and_delivers(
    world: World,
) -> None:
    """SPF-13: SERVFAIL for the sender's MX → 451 4.4.3 under "strict", NXDOMAIN → 550 5.1.8; under
    the default ("reject") both are accepted, logged, and delivered."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n{SENDERS}")
    world.dns.fail("sick.test", "SERVFAIL")
    dest = world.sink(1)
    strict = world.relay(null_mx_sender="strict")
    with strict.client() as client:
        code, text = client.mail("a@sick.test")
        assert (code, text[:5]) == (451, b"4.4.3"), text
        code, text = client.mail("a@nowhere.test")
        assert (code, text[:5]) == (550, b"5.1.8"), text
        assert client.mail("u@nullmx.test")[0] == 550
        assert client.mail("a@cached.test")[0] == 250
    assert strict.queued() == []
    strict.terminate()
    default = world.relay()
    default.send("a@sick.test", ["x@dest.test"], MSG)
    default.send("a@nowhere.test", ["y@dest.test"], MSG)
    assert wait_for(lambda: len(dest.messages) == 2), default.log()
    assert sorted(m.mail_from for m in dest.messages) == ["a@nowhere.test", "a@sick.test"]
    log = default.logged("sender check: sick.test", "sender check: nowhere.test")
    assert "sender check: sick.test" in log and "sender check: nowhere.test" in log


def test_spf13_null_sender_and_literals_never_looked_up_normal_sender_asks_once(
    world: World,
) -> None:
    """SPF-13 costs: `<>` and an address literal ask DNS nothing; a known domain asks nothing more
    within its TTL (two messages, two sessions: one MX query for cached.test)."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n{SENDERS}")
    dest = world.sink(1)
    relay = world.relay()
    before = len(world.dns.log)
    relay.send("<>", ["x@dest.test"], MSG)
    relay.send("a@[127.0.0.1]", ["x@dest.test"], MSG)
    for n in range(2):
        relay.send(f"a{n}@cached.test", ["x@dest.test"], MSG)
    assert wait_for(lambda: len(dest.messages) == 4)
    asked = {q.qname for q in world.dns.log[before:] if q.qtype == "MX"}
    assert asked == {"dest.test", "cached.test"}, asked
    assert mx_queries(world, "cached.test") == 1


def test_spf13_slow_dns_delays_mail_by_at_most_the_wait_then_accepts(world: World) -> None:
    """DUR-9 at MAIL: every answer for the sender's domain delayed 3 s; the default waits at most
    ~1 s, accepts, and the message is delivered."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n{SENDERS}")
    world.dns.delay["slow.test"] = 3.0
    dest = world.sink(1)
    relay = world.relay()
    with relay.client() as client:
        started = time.monotonic()
        assert client.mail("a@slow.test")[0] == 250
        waited = time.monotonic() - started
        assert client.rcpt("x@dest.test")[0] == 250
        assert client.data(MSG)[0] == 250
    print(f"SPF-13: MAIL with every DNS answer delayed 3 s answered in {waited:.2f} s")
    assert waited < 1.5, waited
    assert wait_for(lambda: dest.messages)


def test_spf13_off_accepts_a_null_mx_sender(world: World) -> None:
    """null_mx_sender = "off": no lookup, accepted."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n{SENDERS}")
    dest = world.sink(1)
    relay = world.relay(null_mx_sender="off")
    relay.send("u@nullmx.test", ["x@dest.test"], MSG)
    assert wait_for(lambda: dest.messages)
    assert mx_queries(world, "nullmx.test") == 0


def test_spf13_sighup_switches_null_mx_sender_and_the_resolver(world: World) -> None:
    """A reload (SIGHUP) applies null_mx_sender to the next MAIL of an open session, and a changed
    dns_* setting gives the check a fresh resolver: a domain cached before is asked again."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n{SENDERS}")
    world.dns.fail("sick.test", "SERVFAIL")
    config = world.tmp / "mxroute.toml"
    config.write_text('null_mx_sender = "reject"\n')
    relay = Relay(world.tmp, world.dns, world.sink_port)
    relay.env["MXROUTE_CONFIG"] = str(config)
    world.relays.append(relay.start())
    with relay.client() as client:
        assert client.mail("a@sick.test")[0] == 250
        client.rset()
        assert client.mail("a@cached.test")[0] == 250
        client.rset()
        assert mx_queries(world, "cached.test") == 1
        config.write_text('null_mx_sender = "strict"\ndns_attempts = 3\n')
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        log = relay.logged("reload done", timeout=10)
        assert "reload done: applied null_mx_sender, dns_attempts" in log, log
        assert client.mail("a@sick.test")[0] == 451
        assert client.mail("u@nullmx.test")[0] == 550
        assert client.mail("a@cached.test")[0] == 250
    assert mx_queries(world, "cached.test") == 2  # the fresh resolver kept nothing of the old one


def test_dsn13_every_intake_knowable_failure_is_refused_in_session_never_bounced(
    world: World,
) -> None:
    """DSN-13: bad syntax, relay denied, null-MX sender, too many Received:, oversize, bare CR, long
    line, address literal, non-ASCII without SMTPUTF8, an IP address written as a domain: each an
    in-session 5xx; afterwards a good message is delivered (a barrier) and no DSN reached the
    sender's MX, nothing is left queued."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
               f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(9)}\n{SENDERS}")
    dest, sender_mx = world.sink(1), world.sink(9)
    relay = world.relay(
        relay_networks=["127.0.0.1/32"], max_received_headers=3, max_message_size=4096
    )
    loop = b"".join(b"Received: from hop%d.test by hop.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % n
                    for n in range(4)) + MSG
    big = MSG + (b"y" * 76 + b"\r\n") * 60
    seen: dict[str, tuple[int, bytes]] = {}

    def session(
        name: str, steps: list[bytes | tuple[str, bytes]], source: str | None = None
    ) -> None:
        """Run ``steps`` (command lines, or ("DATA", content)) up to the first refusal; keep that
        reply."""
        with relay.client(source) as client:
            reply: tuple[int, bytes] = (0, b"")
            for step in steps:
                if isinstance(step, tuple):
                    assert client.docmd("DATA")[0] == 354, name
                    client.send(step[1].replace(b"\r\n.", b"\r\n..") + b".\r\n")
                else:
                    client.send(step + b"\r\n")
                reply = client.getreply()
                if reply[0] >= 400:
                    break
            seen[name] = reply

    start = [b"MAIL FROM:<a@sender.test>", b"RCPT TO:<x@dest.test>"]
    session("MAIL syntax", [b"MAIL FROM:<a@@sender.test>"])
    session("RCPT syntax", [start[0], b"RCPT TO:<x@dest.test"])
    session("relay denied", start, source="127.0.0.9")
    session("null-MX sender", [b"MAIL FROM:<u@nullmx.test>"])
    session("too many Received", [*start, ("DATA", loop)])
    session("SIZE over the limit", [b"MAIL FROM:<a@sender.test> SIZE=5000"])
    session("DATA over the limit", [*start, ("DATA", big)])
    session("bare CR", [*start, ("DATA", MSG + b"a\rb\r\n")])
    session("line over 998", [*start, ("DATA", MSG + b"z" * 1200 + b"\r\n")])
    session("address literal", [start[0], b"RCPT TO:<x@[192.0.2.1]>"])
    session("non-ASCII without SMTPUTF8", [start[0], "RCPT TO:<ü@dest.test>".encode()])
    session("null recipient", [start[0], b"RCPT TO:<>"])
    session("IP address as recipient domain", [start[0], b"RCPT TO:<x@192.0.2.1>"])
    session("IP address as sender domain", [b"MAIL FROM:<a@127.0.0.1>"])
    assert len(big) > 4096
    refused = {name: reply for name, reply in seen.items() if 500 <= reply[0] < 600}
    assert refused == seen, {name: reply for name, reply in seen.items() if name not in refused}
    print(
        "DSN-13:",
        "; ".join(
            f"{name} -> {code} {text.split()[0].decode()}" for name, (code, text) in seen.items()
        ),
    )
    # the barrier: delivered after anything queued before
    relay.send("a@sender.test", ["x@dest.test"], MSG)
    assert wait_for(lambda: dest.messages)
    assert wait_for(lambda: relay.queued() == [])
    time.sleep(0.3)
    assert [m.mail_from for m in dest.messages] == ["a@sender.test"] and sender_mx.messages == []
    log = relay.logged(": removed")  # the barrier's last line: the lines before it are out
    assert "non-delivery notification" not in log and "status=bounced" not in log

"""The identity self-check inside the real `mxroute serve` (SPF-10, SPF-12; issue 3 item 5).

After a message is queued, the relay checks its sender domain's SPF for each egress IP
(and the egress IP's PTR/HELO agreement) in the background: one warning line when it
would fail, cached per domain, never a refusal, nothing for a null sender or when
egress_ips is empty. DNS is the loopback server; mail goes to a loopback sink.
"""

from __future__ import annotations

import ipaddress

from tests.support.relay import MSG, World, wait_for


def _zone(world: World, egress: str, *, ptr: bool = True) -> None:
    reverse = ipaddress.ip_address(egress).reverse_pointer
    world.zone(
        f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
        'a IN TXT "v=spf1 ip4:192.0.2.1 -all"\n'  # excludes the egress IP: spf-fail
        f'b IN TXT "v=spf1 ip4:{egress} -all"\n'  # passes
        f"relay IN A {egress}\n"
        + (f"{reverse}. IN PTR relay.test.\n" if ptr else "")
    )


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING mxroute.identity.selfcheck:" in line]


def test_spf10_serve_warns_once_per_sender_domain_and_delivers(world: World) -> None:
    sink = world.sink(1)
    egress = world.ip(50)
    _zone(world, egress)
    relay = world.relay(egress_ips=[egress], log_level="DEBUG")
    assert wait_for(
        lambda: "PTR and HELO name of" in relay.log()
    )  # the start-up PTR check: fine here
    relay.send("x@a.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: _warnings(relay.log()))
    relay.send("y@a.test", ["u@dest.test"], MSG)  # cached: no second check, no second warning
    relay.send("z@b.test", ["u@dest.test"], MSG)  # passes: no warning
    relay.send("<>", ["u@dest.test"], MSG)  # null sender: nothing to check
    assert wait_for(lambda: "identity: mail from b.test: SPF passes" in relay.log())
    assert wait_for(lambda: len(sink.messages) == 4)  # a warning never stops mail
    log = relay.log()
    (warning,) = _warnings(log)
    assert "identity: mail from a.test: egress " + egress + " spf-fail:" in warning
    assert f"fix: add ip4:{egress} to a.test's SPF record" in warning
    assert log.count("identity: checking mail from a.test") == 1
    assert log.count("identity: checking mail from") == 2  # a.test and b.test, not the null sender
    assert {m.mail_from for m in sink.messages} == {"x@a.test", "y@a.test", "z@b.test", ""}


def test_spf12_serve_reports_a_missing_ptr_once(world: World) -> None:
    sink = world.sink(1)
    egress = world.ip(51)
    _zone(world, egress, ptr=False)
    relay = world.relay(egress_ips=[egress])
    assert wait_for(lambda: _warnings(relay.log()))
    (warning,) = _warnings(relay.log())
    assert "at start-up" in warning and f"egress {egress} ptr-missing" in warning
    assert "fix: set PTR of " + egress + " to relay.test" in warning
    relay.send("z@b.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    relay.send("x@a.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: len(_warnings(relay.log())) == 2)
    second = _warnings(relay.log())[1]
    assert "mail from a.test" in second and "spf-fail" in second and "ptr-missing" not in second
    assert wait_for(lambda: len(sink.messages) == 2)


def test_serve_without_egress_ips_says_so_once_and_checks_nothing(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay()
    relay.send("x@a.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    log = relay.logged("identity: self-check off", "status=sent")
    assert log.count("identity: self-check off: egress_ips is empty") == 1
    assert " INFO mxroute.identity.selfcheck: identity: self-check off" in log
    assert "identity: mail from" not in log and not _warnings(log)


def _message(author: str) -> bytes:
    return (f"From: Someone <{author}>\r\nTo: u@dest.test\r\nSubject: hi\r\n"
            f"Message-ID: <{author}.1@x.test>\r\n\r\nbody\r\n").encode()


def test_issue14_serve_warns_once_per_from_domain_failing_dmarc(world: World) -> None:
    """issue 14 §3 (SPF-10's warn-never-refuse): the first message From: a domain whose DMARC
    verdict is fail logs ONE warning with the fix, cached per From domain; a passing domain
    logs none; the envelope sender is what SPF alignment judges; every message is delivered."""
    sink = world.sink(1)
    egress = world.ip(52)
    reverse = ipaddress.ip_address(egress).reverse_pointer
    world.zone(
        f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
        f"relay IN A {egress}\n{reverse}. IN PTR relay.test.\n"
        'bad IN TXT "v=spf1 ip4:192.0.2.1 -all"\n'
        '_dmarc.bad IN TXT "v=DMARC1; p=reject"\n'
        f'good IN TXT "v=spf1 ip4:{egress} -all"\n'
        '_dmarc.good IN TXT "v=DMARC1; p=reject"\n'
        '_dmarc.other IN TXT "v=DMARC1; p=quarantine"\n'
    )
    relay = world.relay(egress_ips=[egress], log_level="DEBUG")
    relay.send("x@bad.test", ["u@dest.test"], _message("a@bad.test"))
    assert wait_for(lambda: _dmarc_warnings(relay.log()))
    relay.send("y@bad.test", ["u@dest.test"], _message("b@bad.test"))  # cached: no second
    relay.send("z@good.test", ["u@dest.test"], _message("c@good.test"))  # passes
    relay.send("z@good.test", ["u@dest.test"], _message("d@other.test"))  # envelope not aligned
    log = relay.logged("identity: From: good.test: DMARC passes", "From: other.test: dmarc-fail")
    assert wait_for(lambda: len(sink.messages) == 4)  # a warning never stops mail
    bad, other = _dmarc_warnings(relay.log())
    assert "identity: From: bad.test: dmarc-fail (p=reject):" in bad
    assert f"add ip4:{egress} to bad.test's SPF record" in bad and "; fix: " in bad
    assert "mxroute dkim keygen bad.test" in bad
    assert "identity: From: other.test: dmarc-fail (p=quarantine):" in other
    assert "send with an envelope sender (MAIL FROM) under other.test" in other
    assert log.count("identity: checking mail From: bad.test") == 1
    assert "From: good.test: dmarc-fail" not in relay.log()


def test_issue14_no_from_check_without_egress_ips(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay(log_level="DEBUG")
    relay.send("x@bad.test", ["u@dest.test"], _message("a@bad.test"))
    assert wait_for(lambda: sink.messages)
    log = relay.logged("status=sent")
    assert "checking mail From:" not in log and not _dmarc_warnings(log)


def _dmarc_warnings(log: str) -> list[str]:
    return [line for line in _warnings(log) if ": dmarc-fail " in line]

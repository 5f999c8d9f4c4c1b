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

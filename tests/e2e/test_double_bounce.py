"""Issue 15 C7: a bounce that cannot be delivered (the sender's own server refuses the DSN for
good) is logged and counted, and with ``postmaster_address`` set the operator gets a copy from
the null sender (Postfix's double bounce); a copy that fails is only logged and counted, never
bounced again (RFC 5321 §6.1; DSN-3).

The real ``mxroute serve``: a@sender.test sends to bad@dest.test, which dest's MX refuses (550);
the DSN to a@sender.test is refused (550) by sender's MX.
"""

from __future__ import annotations

from tests.support.relay import MSG, Relay, World, free_port, rcpt_script, scrape, wait_for
from tests.support.smtpsink import Sink

UNDELIVERABLE = "mxroute_double_bounces_total"


def bounce_refused(world: World, **settings: object) -> tuple[Sink, Sink, Relay, int, str]:
    dest, sender = world.sink(1), world.sink(9)
    rcpt_script(dest, "bad@dest.test", "550 5.1.1 no such user")
    rcpt_script(sender, "a@sender.test", "550 5.1.1 no such sender")
    rcpt_script(sender, "pm@sender.test", "550 5.1.1 no postmaster either")
    port = free_port()
    relay = world.relay(metrics_listen=f"127.0.0.1:{port}", **settings)
    with relay.client() as client:
        client.mail("a@sender.test")
        client.rcpt("bad@dest.test")
        code, reply = client.data(MSG)
    assert code == 250
    return dest, sender, relay, port, reply.split()[-1].decode()


def counted(port: int, value: int) -> bool:
    return scrape(port).get(UNDELIVERABLE, 0) == value


def test_undeliverable_bounce_is_logged_and_counted(world: World) -> None:
    """issue 15 C7, postmaster_address unset: the INFO line stays, the counter counts, no mail."""
    dest, sender, relay, port, qid = bounce_refused(world)
    assert relay.logged(f"{qid}B0: from=<>, failed recipient(s) <a@sender.test>: "
                        "no bounce for a bounce, discarded")
    assert wait_for(lambda: counted(port, 1)), scrape(port)
    assert wait_for(lambda: relay.queued() == [])
    assert dest.messages == [] and sender.messages == []


def test_postmaster_gets_a_copy_of_the_undeliverable_bounce(world: World) -> None:
    """issue 15 C7: ``postmaster_address`` gets one double-bounce notice from <> naming the
    refused DSN and why."""
    dest, _, relay, port, qid = bounce_refused(world, postmaster_address="postmaster@dest.test")
    assert wait_for(lambda: dest.messages)
    (copy,) = dest.messages
    assert copy.mail_from == "" and copy.rcpt_to == ["postmaster@dest.test"]
    assert b"To: <postmaster@dest.test>" in copy.data or b"To: postmaster@dest.test" in copy.data
    assert b"Final-Recipient: rfc822; a@sender.test" in copy.data
    assert b"550 5.1.1 no such sender" in copy.data
    assert b"To: <a@sender.test>" in copy.data  # the refused bounce itself, enclosed
    assert b"Message-ID: <1@sender.test>" in copy.data  # and in it the original's headers
    log = relay.logged(f"{qid}B0: postmaster double-bounce notification: {qid}B0B0")
    assert "no bounce for a bounce, discarded" in log
    assert wait_for(lambda: counted(port, 1)), scrape(port)
    assert wait_for(lambda: relay.queued() == [])


def test_a_refused_double_bounce_is_only_logged_and_counted(world: World) -> None:
    """issue 15 C7: the postmaster's server refuses the copy too: logged, counted, no third
    notice (never a loop), and the queue empties."""
    _, sender, relay, port, qid = bounce_refused(world, postmaster_address="pm@sender.test")
    assert wait_for(lambda: counted(port, 2), timeout=30), scrape(port)
    assert wait_for(lambda: relay.queued() == [])
    log = relay.logged(f"{qid}B0B0: from=<>")
    assert "postmaster copy undeliverable" in log, log
    assert f"{qid}B0B0B" not in log and sender.messages == []

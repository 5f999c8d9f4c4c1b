"""Deferred recipients of one message for one domain are retried together, in ONE
transaction, as the first attempt sends them (issue 15 section C item 4; RFC 5321 §4.5.4.1
SHOULD; checklist RTY-2, RTY-5).

Each recipient's next try carries its own jitter from the second retry on (RTY-2), so without
grouping the second retry sends a@ and b@ in two transactions, moments apart.
"""

from __future__ import annotations

from tests.support.relay import MSG, World


def test_two_deferred_recipients_of_one_domain_are_retried_in_one_transaction(
    world: World,
) -> None:
    """issue 15 C4: the sink defers the first two transactions at end of data (both recipients
    each time), then accepts: the third transaction carries both, and there is no fourth."""
    sink = world.sink(1, replies={".": ["451 4.3.0 try later", "451 4.3.0 try later"]})
    relay = world.relay(retry_min_seconds=1, retry_max_seconds=4)
    relay.send("a@sender.test", ["a@dest.test", "b@dest.test"], MSG)
    assert relay.logged("to=<a@dest.test>", "to=<b@dest.test>", "status=sent", timeout=30)
    assert sink.wait(lambda s: len(s.messages) >= 1, timeout=20)
    assert relay.logged("removed", timeout=20), relay.log()
    transactions = [t.rcpt_to for c in sink.connections for t in c.transactions if t.rcpt_to]
    assert transactions == [["a@dest.test", "b@dest.test"]] * 3, (transactions, relay.log())
    assert [m.rcpt_to for m in sink.messages] == [["a@dest.test", "b@dest.test"]]

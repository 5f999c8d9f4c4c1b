"""The courier under traffic shaping (issue 18 §1) against a real SMTP sink on loopback: a
connection holds its key's slot while it is open (idle in the pool included) and gives it back
when it ends; a slot that stays taken defers (4.4.5), never bounces; a kept connection serves
only deliveries under the same key."""

from __future__ import annotations

import asyncio
from typing import Any

from mxroute.relay.courier.courier import Courier
from mxroute.relay.envelope import Disposition, Envelope, Recipient
from mxroute.routing.plan import Plan
from mxroute.routing.shaping import Limits, Shape
from tests.support.courierkit import MESSAGE, plan, target
from tests.support.courierkit import courier_settings as settings
from tests.support.smtpsink import Sink


def shape(key: str, limit: int, **limits: Any) -> Shape:
    return Shape("mx1.dest.test", key, "*", "default", None,
                 Limits(connection_limit=limit, **limits))


async def send(courier: Courier, the_plan: Plan, rcpt: str, how: Shape) -> Disposition:
    recipient = Recipient(rcpt)
    [result] = await courier.deliver(the_plan, Envelope("s@src.test", [recipient]), [recipient],
                                     MESSAGE, queue_id="Q1", shape=how)
    return result.disposition


def test_an_idle_connection_holds_its_slot_until_it_ends() -> None:
    """issue 18: after a delivery the kept connection still holds the key's one slot; a
    delivery under another key closes nothing of it, the close gives the slot back."""
    async def main() -> None:
        with Sink("127.0.1.1") as sink:
            courier = Courier(settings())
            the_plan = plan(target(1, sink))
            assert await send(courier, the_plan, "a@dest.test", shape("k", 1)) \
                is Disposition.DELIVERED
            assert courier.limiter.held("k") == 1 and len(courier.pool) == 1
            assert await send(courier, the_plan, "b@dest.test", shape("k", 1)) \
                is Disposition.DELIVERED
            assert len(sink.connections) == 1  # reused under the same key
            assert await send(courier, the_plan, "c@dest.test", shape("other", 1)) \
                is Disposition.DELIVERED
            assert len(sink.connections) == 2  # not handed to another key
            await courier.close()
            assert courier.limiter.held("k") == courier.limiter.held("other") == 0

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_slot_that_stays_taken_defers_with_4_4_5() -> None:
    """issue 18: every slot held elsewhere (another node, say) for connect_timeout: the
    recipient is deferred 4.4.5 naming traffic shaping, and nothing was dialled."""
    async def main() -> None:
        with Sink("127.0.1.1") as sink:
            courier = Courier(settings(connect_timeout=0.3))
            assert await courier.limiter.acquire("k", 1)
            recipient = Recipient("a@dest.test")
            [result] = await courier.deliver(plan(target(1, sink)),
                                             Envelope("s@src.test", [recipient]), [recipient],
                                             MESSAGE, shape=shape("k", 1))
            assert result.disposition is Disposition.DEFERRED and result.status == "4.4.5"
            assert "traffic shaping" in result.reply and sink.connections == []
            await courier.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_max_messages_closes_the_connection_and_frees_the_slot() -> None:
    async def main() -> None:
        with Sink("127.0.1.1") as sink:
            courier = Courier(settings())
            the_plan = plan(target(1, sink))
            how = shape("k", 1, max_messages_per_connection=2)
            for n in range(5):
                assert await send(courier, the_plan, f"r{n}@dest.test", how) \
                    is Disposition.DELIVERED
            assert [len(c.transactions) for c in sink.connections] == [2, 2, 1]
            await courier.close()
            assert courier.limiter.held("k") == 0

    asyncio.run(asyncio.wait_for(main(), 30))


def test_sites_sharing_a_host_keep_their_own_idle_connections() -> None:
    """issue 23: the idle connections kept per address are counted per shaping key, so two sites
    whose MX records name one host do not close each other's: with one kept per destination,
    a, b, a, b under two keys open two connections, not three."""
    async def main() -> None:
        with Sink("127.0.53.1") as sink:
            courier = Courier(settings(), max_idle_per_destination=1)
            the_plan = plan(target(1, sink))
            for n, key in enumerate(["site-a", "site-b", "site-a", "site-b"]):
                assert await send(courier, the_plan, f"r{n}@dest.test", shape(key, 2)) \
                    is Disposition.DELIVERED
            assert len(sink.connections) == 2
            assert courier.stats["reused"] == 2 and len(courier.pool) == 2
            await courier.close()
            assert courier.limiter.held("site-a") == courier.limiter.held("site-b") == 0

    asyncio.run(asyncio.wait_for(main(), 30))

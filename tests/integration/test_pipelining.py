"""Courier PIPELINING (SESS-16, RFC 2920) and the connection pool that rides on it (SESS-17).

[RSET,] MAIL and every RCPT go out in one write when the server advertises PIPELINING;
each reply is checked against its command; DATA only after an accepted RCPT (SESS-6),
data only after 354 (SESS-7). Also under uvloop, which the daemon uses when installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mxroute.relay.courier.courier import Courier
from mxroute.relay.courier.pipelining import PipeliningProtocol
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from tests.support.courierkit import MESSAGE, by, plan, target
from tests.support.courierkit import courier_settings as settings
from tests.support.smtpsink import Sink


def _loops() -> list[Callable[[Coroutine[Any, Any, Any]], Any]]:
    loops: list[Callable[[Coroutine[Any, Any, Any]], Any]] = [asyncio.run]
    try:
        import uvloop

        loops.append(uvloop.run)
    except ImportError:
        pass
    return loops


def _send(
    runner: Callable[[Coroutine[Any, Any, Any]], Any],
    sink: Sink,
    batches: list[list[str]],
    **courier_args: Any,
) -> tuple[Courier, list[list[RecipientResult]]]:
    courier = Courier(settings(), **courier_args)

    async def go() -> list[list[RecipientResult]]:
        try:
            out = []
            for rcpts in batches:
                out.append(
                    await asyncio.wait_for(
                        courier.deliver(
                            plan(target(1, sink)),
                            Envelope("s@src.test"),
                            [Recipient(r) for r in rcpts],
                            MESSAGE,
                        ),
                        20,
                    )
                )
            return out
        finally:
            await courier.close()

    return courier, runner(go())


@pytest.mark.parametrize("runner", _loops(), ids=lambda r: r.__module__)
def test_sess16_pipelined_rcpts_each_reply_checked_in_order(runner: Any) -> None:
    replies = {"RCPT": {"b@dest.test": "550 5.1.1 no such user", "c@dest.test": "450 4.2.1 busy"}}
    with Sink("127.0.1.1", replies=replies) as sink:
        _, [results] = _send(
            runner, sink, [["a@dest.test", "b@dest.test", "c@dest.test", "d@dest.test"]]
        )
        r = by(results)
        assert r["a@dest.test"].disposition is Disposition.DELIVERED
        assert (r["b@dest.test"].disposition, r["b@dest.test"].status) == (
            Disposition.BOUNCED,
            "5.1.1",
        )
        assert (r["c@dest.test"].disposition, r["c@dest.test"].status) == (
            Disposition.DEFERRED,
            "4.2.1",
        )
        assert r["d@dest.test"].disposition is Disposition.DELIVERED
        [message] = sink.messages
        assert sorted(message.rcpt_to) == ["a@dest.test", "d@dest.test"]
        assert sink.connections[0].commands.count("DATA") == 1


@pytest.mark.parametrize("runner", _loops(), ids=lambda r: r.__module__)
def test_sess6_no_data_when_every_pipelined_rcpt_is_refused(runner: Any) -> None:
    with Sink("127.0.1.1", replies={"RCPT": "550 5.1.1 no such user"}) as sink:
        _, [results] = _send(runner, sink, [["a@dest.test", "b@dest.test"]])
        assert {r.disposition for r in results} == {Disposition.BOUNCED}
        assert "DATA" not in sink.connections[0].commands


@pytest.mark.parametrize("runner", _loops(), ids=lambda r: r.__module__)
def test_sess17_reused_connection_rset_pipelined_and_replies_not_lost(runner: Any) -> None:
    """Five messages over one pooled connection (under uvloop too, whose transports cache
    the protocol's methods): RSET before each later transaction, every reply matched."""
    with Sink("127.0.1.1") as sink:
        courier, results = _send(runner, sink, [[f"u{n}@dest.test"] for n in range(5)])
        assert all(r.disposition is Disposition.DELIVERED for batch in results for r in batch)
        assert len(sink.connections) == 1 and len(sink.messages) == 5
        assert sink.connections[0].commands.count("RSET") == 4
        assert courier.stats["reused"] == 4


def test_lock_step_without_pipelining() -> None:
    with Sink("127.0.1.1", pipelining=False) as sink:
        courier, results = _send(
            asyncio.run, sink, [["a@dest.test", "b@dest.test"], ["c@dest.test"]]
        )
        assert all(r.disposition is Disposition.DELIVERED for batch in results for r in batch)
        assert len(sink.messages) == 2 and courier.stats["reused"] == 1


def test_pipelining_protocol_keeps_replies_of_one_segment() -> None:
    """Three replies in one read are all kept, in order (aiosmtplib alone keeps one)."""

    async def go() -> list[int]:
        loop = asyncio.get_running_loop()
        protocol = PipeliningProtocol(loop=loop)
        protocol.expect(3)

        class Transport(asyncio.Transport):
            def get_extra_info(self, name: str, default: Any = None) -> Any:
                return None

            def is_closing(self) -> bool:
                return False

        protocol.connection_made(Transport())
        protocol._response_pending = False
        protocol.data_received(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n")
        return [(await protocol.read_response(timeout=1)).code for _ in range(3)]

    assert asyncio.run(go()) == [250, 250, 550]

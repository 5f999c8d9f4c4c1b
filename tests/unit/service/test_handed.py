"""Issue 23 (handoff): which handed messages the delivery process keeps for a first attempt.

A message crossing with its ID is kept only if the queue does not know it yet and it is young
(sent within HANDED_SECONDS of its queue ID): then no rescan or recovery can have read its file,
and the copy cannot be staler than the file. Any other one is scheduled by its ID and read from
the spool; a payload that does not unpickle is logged and goes as its ID."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field

import pytest

from mxroute.relay.spool.format import MessageMeta, RecipientState, new_queue_id
from mxroute.service import worker
from mxroute.service.worker import HANDED_SECONDS


@dataclass
class Queue:
    known: set[str] = field(default_factory=set)
    added: list[str] = field(default_factory=list)

    def unknown(self, ids: list[str]) -> list[str]:
        return [q for q in ids if q not in self.known]

    def add_id(self, queue_id: str) -> None:
        self.added.append(queue_id)


@dataclass
class Spool:
    kept: list[str] = field(default_factory=list)

    def keep(self, meta: MessageMeta, message: bytes) -> bool:
        self.kept.append(meta.queue_id)
        return True


@dataclass
class Delivery:
    queue: Queue = field(default_factory=Queue)
    spool: Spool = field(default_factory=Spool)


def _handed(delivery: Delivery, queue_id: str, payload: bytes | None = None) -> list[bytes]:
    meta = MessageMeta(queue_id=queue_id, sender="a@example.com", arrival=1.0,
                       recipients=[RecipientState("b@example.net")])
    lines: list[bytes] = []
    worker._handed(delivery, lines.append, queue_id.encode(),  # type: ignore[arg-type]
                   payload if payload is not None else pickle.dumps((meta, b"body\r\n")))
    return lines


def test_a_young_message_new_to_the_queue_is_kept_and_scheduled() -> None:
    delivery = Delivery()
    queue_id = new_queue_id()
    assert _handed(delivery, queue_id) == []
    assert delivery.spool.kept == [queue_id] and delivery.queue.added == [queue_id]


@pytest.mark.parametrize("age", [HANDED_SECONDS + 0.5, 3600.0, -30.0])
def test_an_old_or_future_message_is_scheduled_by_its_id_and_read_from_the_spool(
    age: float,
) -> None:
    delivery = Delivery()
    queue_id = new_queue_id(clock=lambda: time.time() - age)
    _handed(delivery, queue_id)
    assert delivery.spool.kept == [] and delivery.queue.added == [queue_id]


def test_a_message_the_queue_already_knows_is_not_kept() -> None:
    """A rescan (or a restarted delivery process's recovery) read the file first: its state there
    may be newer than the handed copy."""
    queue_id = new_queue_id()
    delivery = Delivery(queue=Queue(known={queue_id}))
    _handed(delivery, queue_id)
    assert delivery.spool.kept == [] and delivery.queue.added == [queue_id]


def test_a_payload_that_is_not_the_message_goes_as_its_id(caplog: pytest.LogCaptureFixture) -> None:
    delivery = Delivery()
    queue_id = new_queue_id()
    other = MessageMeta(queue_id=new_queue_id(), sender="a@example.com", arrival=1.0,
                        recipients=[RecipientState("b@example.net")])
    assert _handed(delivery, queue_id, b"not a pickle") == [queue_id.encode()]
    assert _handed(delivery, queue_id, pickle.dumps((other, b"x"))) == [queue_id.encode()]
    assert delivery.spool.kept == [] and "unreadable handed message" in caplog.text

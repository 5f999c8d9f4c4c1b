"""What the queue tests share: a scripted courier, a recording spool and a harness around a
``QueueManager`` whose clock is a number and whose routing and DSN builder are stand-ins.

The queue's decisions are tested without sockets: the courier replies from a script per
recipient address, every plan is deliverable, and each DSN is recorded (its keyword arguments)
and spooled as a small message naming its recipients.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult, Times
from mxroute.relay.queue.manager import QueueManager
from mxroute.relay.spool.format import MessageMeta, RecipientState, new_queue_id
from mxroute.relay.spool.store import Spool
from mxroute.routing.plan import Plan, RoutingPolicy, Verdict
from mxroute.routing.route import Route
from mxroute.routing.shaping import Shape
from mxroute.settings import Settings
from mxroute.tls.policy import TlsPolicy

DEFER = (Disposition.DEFERRED, "4.4.1", "451 4.4.1 try later")
REJECT = (Disposition.BOUNCED, "5.1.1", "550 5.1.1 no such user")
ACCEPT = (Disposition.DELIVERED, "2.0.0", "250 2.0.0 ok")


class FakeCourier:
    """Replies per recipient address from a script; records every call."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[Disposition, str, str]]] = {}
        self.calls: list[tuple[str, list[str]]] = []
        self.sent: dict[str, bytes] = {}  # queue id -> message, for every delivered transaction
        self.forgotten = 0  # flushes that told the courier to try every host again (RTY-4)

    def will(self, address: str, *replies: tuple[Disposition, str, str]) -> None:
        """Reply to ``address`` with ``replies`` in turn, the last one for ever after."""
        self.script[address] = list(replies)

    async def deliver(self, plan: Plan, envelope: Envelope, recipients: list[Recipient],
                      message_bytes: bytes, *, tls: TlsPolicy, queue_id: str,
                      times: Times | None = None,
                      shape: Shape | None = None) -> list[RecipientResult]:
        self.calls.append((plan.domain, [r.address for r in recipients]))
        results = []
        for r in recipients:
            script = self.script.get(r.address) or [ACCEPT]
            disposition, status, reply = script.pop(0) if len(script) > 1 else script[0]
            results.append(RecipientResult(r.address, disposition, status, reply,
                                           f"mx.{plan.domain}[127.0.0.2]:25",
                                           remote_reply=True))  # scripted as the host's replies
        if any(r.disposition is Disposition.DELIVERED for r in results):
            self.sent[queue_id] = message_bytes
        return results

    def forget_unreachable(self) -> None:
        self.forgotten += 1

    async def close(self) -> None:
        return None


async def fake_route(resolver: Any, domain: str, policy: RoutingPolicy,
                     rng: random.Random, settings: Settings, sender: str = "") -> Route:
    """Every domain deliverable at the default TLS level, with no DNS asked."""
    return Route(Plan(domain, Verdict.DELIVERABLE, "test", "2.0.0"), TlsPolicy())


class RecordingSpool(Spool):
    """The real spool, noting every message it made durable (to count DSNs actually enqueued)."""

    stored: list[tuple[MessageMeta, bytes]]

    async def store(self, meta: MessageMeta, message: bytes) -> None:
        await super().store(meta, message)
        self.stored.append((meta, message))


class Harness:
    """A queue manager over a real spool in ``tmp_path``, a scripted courier and a clock ``now``."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        values = {"spool_dir": tmp_path / "spool", "retry_min_seconds": 60,
                  "retry_max_seconds": 600, "queue_lifetime_seconds": 3600,
                  "helo_name": "relay.test", **overrides}
        self.settings = Settings(**values)
        self.now = 1_000_000.0
        self.spool = RecordingSpool(self.settings.spool_dir, clock=lambda: self.now)
        self.spool.stored = []
        self.spool.prepare()
        self.courier = FakeCourier()
        self.dsns: list[dict[str, Any]] = []
        self.qm = self.manager()

    def manager(self) -> QueueManager:
        """A new manager (a restart: it knows only what ``recover()`` finds in the spool)."""
        return QueueManager(self.settings, self.spool, None, self.courier,  # type: ignore[arg-type]
                            clock=lambda: self.now, rng=random.Random(1), route_fn=fake_route,
                            dsn_builder=self.build)

    def build(self, **kwargs: Any) -> bytes:
        self.dsns.append(kwargs)
        names = "".join(f"Final-Recipient: rfc822;{r.recipient}\r\n" for r in kwargs["results"])
        return f"Subject: Undelivered Mail\r\n\r\n{names}".encode()

    def submit(self, sender: str, *rcpts: str | RecipientState) -> str:
        states = [r if isinstance(r, RecipientState) else RecipientState(r) for r in rcpts]
        meta = MessageMeta(new_queue_id(lambda: self.now), sender, self.now, states, size=10)
        asyncio.run(self.spool.store(meta, b"Subject: t\r\n\r\nhi\r\n"))
        self.qm.add(meta)
        return meta.queue_id

    def run(self) -> int:
        return asyncio.run(self.qm.run_once())

    def queued(self) -> list[MessageMeta]:
        return [self.spool.load_meta(q) for q in self.spool.ids()]

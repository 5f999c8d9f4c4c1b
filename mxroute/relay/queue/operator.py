"""What an operator does to the queue (issue 15 B): pick messages, then act on each.

One ``Request`` (flush, hold, release, requeue, bounce, delete), one ``Operator`` that carries
it out, in either of the spool's two owners:

- a running ``serve``: the delivery side's ``Operator`` (with its ``QueueManager``), reached
  through the control socket (mxroute/service/control.py). The schedule changes at once; a
  message being delivered is acted on when its attempt ends (``after-attempt``), as postsuper
  waits for qmgr;
- no ``serve``: the CLI's ``Operator`` (no queue manager) on the spool files, under the spool
  lock (mxroute/relay/spool/lock.py). Flush and requeue then write "due now" into the queue
  file, so the next ``serve`` tries the message at once.

Every action is logged ``ID: operator: ACTION by uid N`` (stable, for log filters). Hold is
the queue file's ``held`` flag (``MessageMeta.held``): a held message is never tried, and still
expires at ``queue_lifetime_seconds`` and is bounced then (the queue manager's
``_expire_held``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mxroute.errors import EX_DATAERR, EX_NOINPUT, EX_USAGE, MxrouteError
from mxroute.relay.queue.dispatch import domain_of
from mxroute.relay.queue.manager import QueueManager
from mxroute.relay.queue.notices import Notifier, failures
from mxroute.relay.queue.suspensions import Suspension, Suspensions, suspend_name, to_json
from mxroute.relay.spool.format import CorruptFile, MessageMeta
from mxroute.relay.spool.store import Spool
from mxroute.text import LISTING, safe_text

log = logging.getLogger(__name__)

ACTIONS = ("flush", "hold", "release", "requeue", "bounce", "delete")
WAITS_FOR_ATTEMPT = ("hold", "bounce", "delete")  # what a delivery in progress must not race
BOUNCE_STATUS = "5.0.0"  # RFC 3463: other or undefined status (an operator's decision)
LISTED = 10  # IDs named in an "ambiguous prefix" error
BATCH = 1000  # messages acted on at once (their syncs shared)


class SelectionError(MxrouteError):
    """No message, or more than one, for an ID prefix: nothing is done."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class Request:
    """One operator action and the messages it is for: ``ids`` (IDs or unique prefixes), else
    ``all``, ``deferred`` (tried and waiting) or ``domain`` (a pending recipient there)."""

    action: str
    ids: list[str] = field(default_factory=list)
    all: bool = False
    deferred: bool = False
    domain: str | None = None
    reason: str | None = None  # bounce: the text the DSN gives

    def to_json(self) -> dict[str, Any]:
        return {"op": self.action, "ids": self.ids, "all": self.all, "deferred": self.deferred,
                "domain": self.domain, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Request:
        action = str(data.get("op"))
        if action not in ACTIONS:
            raise SelectionError(f"unknown queue action {action!r}", exit_code=EX_USAGE)
        ids = data.get("ids") or []
        if not isinstance(ids, list):
            raise SelectionError("ids is not a list", exit_code=EX_USAGE)
        domain, reason = data.get("domain"), data.get("reason")
        return cls(action, [str(i) for i in ids], bool(data.get("all")),
                   bool(data.get("deferred")), str(domain).lower() if domain else None,
                   str(reason) if reason else None)

    @property
    def everything(self) -> bool:
        """No selection at all: ``flush`` then means every message (``postqueue -f``)."""
        return not (self.ids or self.all or self.deferred or self.domain)


def resolve(known: list[str], wanted: list[str]) -> list[str]:
    """The queue IDs named by ``wanted`` (each an ID or a unique prefix), in order, once each.

    ``SelectionError``: a name matching no message (exit 66) or several (exit 64, listing them).
    """
    found: list[str] = []
    for name in wanted:
        matches = [name] if name in known else [q for q in known if q.startswith(name)]
        if not matches or not name:
            raise SelectionError(f"{safe_text(name, 80)}: no such message in the queue",
                                 exit_code=EX_NOINPUT)
        if len(matches) > 1:
            shown = " ".join(matches[:LISTED]) + (" ..." if len(matches) > LISTED else "")
            raise SelectionError(f"{safe_text(name, 80)}: ambiguous queue ID prefix, "
                                 f"{len(matches)} messages match: {shown}", exit_code=EX_USAGE)
        if matches[0] not in found:
            found.append(matches[0])
    return found


class Operator:
    """Carries out ``Request``s on ``spool``: with ``queue`` (a running serve's), on its
    schedule too; without, on the files alone (the caller holds the spool lock)."""

    def __init__(self, spool: Spool, notices: Notifier, queue: QueueManager | None = None,
                 forget_hosts: Callable[[], None] | None = None) -> None:
        self.spool = spool
        self.notices = notices
        self.queue = queue
        self.forget_hosts = forget_hosts  # flush, requeue: every host is worth a try again
        self._suspensions: Suspensions | None = None if queue is None else queue.suspensions
        # issue 19: told of each suspension made or lifted here (the fleet publishes them)
        self.on_suspend: Callable[[list[Suspension]], None] | None = None
        self.on_resume: Callable[[list[str]], None] | None = None

    @property
    def suspensions(self) -> Suspensions:
        """The suspended domains: the running queue's, else the spool file's (read once)."""
        if self._suspensions is None:
            try:
                self._suspensions = Suspensions.load(self.spool.root)
            except ValueError as exc:
                raise SelectionError(str(exc), exit_code=EX_DATAERR) from None
        return self._suspensions

    def suspended(self) -> list[dict[str, Any]]:
        """The suspensions in force (``mxroute queue suspend`` with no domain)."""
        return [to_json(e) for e in self.suspensions.current(time.time())]

    async def suspend(self, domains: list[str], reason: str | None, duration: float | None,
                      uid: int | None) -> list[dict[str, Any]]:
        """Stop delivery to ``domains`` (for ``duration`` seconds, None: until resumed); saved
        before the reply. Their mail already due is passed over at its next attempt."""
        names = _domains(domains)
        made = self.suspensions.suspend(names, reason, time.time(), duration)
        await asyncio.get_running_loop().run_in_executor(None, self.suspensions.save)
        why = f" ({safe_text(reason, LISTING)})" if reason else ""
        for entry in made:
            log.info("operator: suspend %s by uid %s%s", entry.domain, uid, why)
        if self.on_suspend is not None:
            self.on_suspend(made)
        return [to_json(e) for e in made]

    async def resume(self, domains: list[str] | None, uid: int | None,
                     tell: bool = True) -> list[str]:
        """Lift the suspension of ``domains`` (None: all); their recipients are due now.
        ``tell`` False: a lift another node of the fleet made (issue 19), not told back."""
        lifted = self.suspensions.resume(None if domains is None else _domains(domains),
                                         time.time())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.suspensions.save)
        for domain in lifted:
            if tell:
                log.info("operator: resume %s by uid %s", domain, uid)
        if lifted and tell and self.on_resume is not None:
            self.on_resume(lifted)
        if lifted:
            ids = await loop.run_in_executor(None, self.spool.ids)
            names = set(lifted)
            if self.queue is not None:  # the domains at a resumed site (issue 18 §2)
                names |= {d for d, site in self.queue.dispatcher.sites.items() if site in names}
            for queue_id in ids:
                await self._due_now(queue_id, names)
        return lifted

    async def _due_now(self, queue_id: str, domains: set[str]) -> None:
        """``queue_id``'s recipients at ``domains`` due now (one being delivered is left to
        its attempt, which reschedules it)."""
        queue = self.queue
        if queue is not None and queue.busy(queue_id):
            return
        if queue is not None and not await queue.first_look(queue_id):
            return
        try:
            meta = await asyncio.get_running_loop().run_in_executor(
                None, self.spool.load_meta, queue_id)
        except (FileNotFoundError, CorruptFile):
            return
        chosen = [r for r in meta.pending if domain_of(r.address) in domains]
        if not chosen:
            return
        for rcpt in chosen:
            rcpt.next_try = 0.0
        await self._record(meta)

    def select(self, request: Request) -> list[str]:
        """The queue IDs ``request`` is for (``SelectionError`` for a bad prefix)."""
        known = self.spool.ids()
        if request.ids:
            return resolve(known, request.ids)
        if request.all or request.everything:
            return known
        chosen = []
        for queue_id in known:
            meta = self._meta(queue_id)
            if meta is None:
                continue
            if request.deferred and not any(r.attempts for r in meta.pending):
                continue
            if request.domain and not any(domain_of(r.address) == request.domain
                                          for r in meta.pending):
                continue
            chosen.append(queue_id)
        return chosen

    def _meta(self, queue_id: str) -> MessageMeta | None:
        try:
            return self.spool.load_meta(queue_id)
        except (FileNotFoundError, CorruptFile):
            return None

    async def act(self, request: Request, uid: int | None) -> list[dict[str, str]]:
        """Do ``request``: one ``{"queue_id", "result"}`` per message chosen, in spool order.

        Messages are acted on ``BATCH`` at a time, so their file syncs are shared (a
        ``delete --all`` of a large queue costs a directory sync per batch, not per message).
        """
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(None, self.select, request)  # reads files: off the loop
        if request.action in ("flush", "requeue") and self.forget_hosts is not None:
            self.forget_hosts()
        out: list[dict[str, str]] = []
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            results = await asyncio.gather(*(self._each(q, request, uid) for q in chunk))
            out.extend({"queue_id": q, "result": r} for q, r in zip(chunk, results))
        return out

    async def _each(self, queue_id: str, request: Request, uid: int | None) -> str:
        queue = self.queue
        if queue is not None and request.action in WAITS_FOR_ATTEMPT and queue.busy(queue_id):
            queue.after_attempt[queue_id] = _later(self, queue_id, request, uid)
            log.info("%s: operator: %s by uid %s requested: after the delivery attempt in "
                     "progress", queue_id, request.action, uid)
            return "after-attempt"
        return await self.one(queue_id, request, uid)

    async def one(self, queue_id: str, request: Request, uid: int | None) -> str:
        """Act on one message: its result (``deleted``, ``held``, ..., ``gone``, ``on-hold``,
        ``not-held``)."""
        action, queue = request.action, self.queue
        if action == "delete":  # the bytes are not needed: never read them
            return await self._delete(queue_id, uid)
        if action == "flush" and queue is not None:  # the queue knows what is held
            return self._flush_live(queue, queue_id, uid)
        if queue is not None and not await queue.first_look(queue_id):
            return "gone"  # issue 23: scheduled from the snapshot, and gone or corrupt
        try:
            meta, message = await self.spool.aload(queue_id)
        except (FileNotFoundError, CorruptFile):
            return "gone"  # delivered (or moved aside) since it was chosen
        if action in ("flush", "requeue") and meta.held:
            return "on-hold"  # held mail is never tried: release it first
        if action == "release" and not meta.held:
            return "not-held"  # nothing to do (postsuper -H of a message not on hold)
        reason = f" ({safe_text(request.reason, LISTING)})" if request.reason else ""
        log.info("%s: operator: %s by uid %s%s", queue_id, action, uid, reason)
        if action == "bounce":
            why = f"bounced by the operator: {request.reason or 'no reason given'}"
            if queue is not None:
                await queue.discard(meta, message, BOUNCE_STATUS, why)
            else:
                await self.notices.bounce(meta, message, failures(meta, BOUNCE_STATUS, why))
                await self.spool.remove(queue_id)
            return "bounced"
        if action in ("hold", "release"):
            meta.held = action == "hold"
            if not meta.held:
                for rcpt in meta.pending:
                    rcpt.next_try = 0.0  # released: due now
            await self._record(meta)  # rescheduled: at expiry (held) or now
            return "held" if meta.held else "released"
        # flush, requeue: due now, every recipient (a requeue also routes afresh: no plan is
        # kept across the attempt it forces, see Operator.act's forget_hosts and plans)
        if queue is not None:
            if action == "requeue" and queue.plans is not None:
                queue.plans.forget({domain_of(r.address) for r in meta.pending})
            queue.timetable.force(queue_id)
            queue.wake()
        else:
            for rcpt in meta.pending:
                rcpt.next_try = 0.0
            await self.spool.update(meta)
        return "flushed" if action == "flush" else "requeued"


    async def _record(self, meta: MessageMeta) -> None:
        """Write ``meta``'s new state; a running queue reschedules it from that. Its ID is out
        of the schedule while the file changes, so a schedule snapshot taken meanwhile has no
        entry for it (issue 23: the snapshot never says later than the file)."""
        queue = self.queue
        if queue is None:
            await self.spool.update(meta)
            return
        queue.timetable.drop(meta.queue_id)
        try:
            await self.spool.update(meta)
        except BaseException:
            queue.add_id(meta.queue_id)  # due now: the attempt reads what the file holds
            raise
        queue.add(meta)

    def _flush_live(self, queue: QueueManager, queue_id: str, uid: int | None) -> str:
        if queue_id in queue.held:
            return "on-hold"
        log.info("%s: operator: flush by uid %s", queue_id, uid)
        queue.timetable.force(queue_id)
        queue.wake()
        return "flushed"

    async def _delete(self, queue_id: str, uid: int | None) -> str:
        if not self.spool.exists(queue_id):
            return "gone"
        log.info("%s: operator: delete by uid %s", queue_id, uid)
        await self.spool.remove(queue_id)
        if self.queue is not None:
            self.queue.timetable.drop(queue_id)
            self.queue.held.discard(queue_id)
        return "deleted"


def _domains(names: list[str]) -> list[str]:
    """``names`` as domain names, once each (``SelectionError``, exit 64, for one that is not).
    """
    out: list[str] = []
    for name in names:
        try:
            domain = suspend_name(str(name))
        except ValueError as exc:
            raise SelectionError(safe_text(str(exc), 200), exit_code=EX_USAGE) from None
        if domain not in out:
            out.append(domain)
    return out


def _later(operator: Operator, queue_id: str, request: Request,
           uid: int | None) -> Callable[[], Any]:
    async def run() -> None:
        await operator.one(queue_id, request, uid)

    return run


__all__ = ["ACTIONS", "Operator", "Request", "SelectionError", "resolve"]

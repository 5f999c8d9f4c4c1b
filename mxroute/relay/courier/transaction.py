"""Mail transactions on a ready session: lock-step or pipelined (RFC 2920), then the data.

MAIL, RCPT×n, DATA (RFC 5321 §3.3, §4.5.3), with the parameters each advertised extension
allows (SESS-1/13/14/15, DSN-9). Both styles classify replies with ``replies`` and sort the
recipients with one ``Tally``; only the pipelined one writes [RSET,] MAIL and every RCPT at
once and reads the replies in order (SESS-16).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX

from mxroute.relay.courier.attempt import Attempt
from mxroute.relay.courier.replies import (
    Answer,
    Kind,
    data_answer,
    final_answer,
    mail_answer,
    rcpt_answer,
    reply_text,
)
from mxroute.relay.courier.session import WIRE_ERRORS, HostFailure, Session, Stale
from mxroute.relay.envelope import Disposition, Recipient
from mxroute.routing.plan import Target
from mxroute.settings import Settings
from mxroute.text import safe_text, xtext

CHUNK = 64 * 1024  # one "data block" for the §4.5.3.2.5 timeout
END = b".\r\n"  # the end of data, the last of ``stuffed_blocks``
_LEADING_DOT = re.compile(rb"(?m)^\.")
_LOST_BEFORE_DATA = "451 4.4.2 lost connection before DATA"


def dot_stuff(canonical: bytes) -> bytes:
    """Transparency (RFC 5321 §4.5.2): double each leading ".", then end with ``.<CRLF>``."""
    return b"".join(stuffed_blocks(canonical))


def stuffed_blocks(canonical: bytes, block: int = CHUNK) -> Iterator[bytes]:
    """``dot_stuff(canonical)`` a block at a time, never a whole stuffed copy (issue 22): each
    block of ``canonical`` as it is when no line in it starts with ".", else stuffed; a block's
    first byte starts a line when the block before ends with LF."""
    for start in range(0, len(canonical), block):
        piece = canonical[start : start + block]
        line_start = start == 0 or canonical[start - 1] == 0x0A
        if not (line_start and piece.startswith(b".")) and b"\n." not in piece:
            yield piece
            continue
        text = _LEADING_DOT.sub(b"..", piece)
        if not line_start and text[:2] == b"..":  # this "." continues a line: not stuffed
            text = text[1:]
        yield text
    yield END


def mail_params(session: Session, attempt: Attempt) -> list[bytes]:
    """MAIL parameters, each only when the server advertised its extension (SESS-1/13/14/15,
    DSN-9)."""
    if not session.esmtp:
        return []
    env, params = attempt.envelope, []
    if session.has("size"):
        params.append(f"SIZE={len(attempt.body)}")
    if session.has("8bitmime") and (attempt.eight_bit or (env.body or "").upper() == "8BITMIME"):
        params.append("BODY=8BITMIME")
    if session.has("smtputf8") and (attempt.utf8 or env.smtputf8):
        params.append("SMTPUTF8")
    if session.has("dsn"):
        if env.ret and env.ret.upper() in ("FULL", "HDRS"):
            params.append(f"RET={env.ret.upper()}")
        if env.envid:
            params.append(f"ENVID={xtext(env.envid)}")
    return [p.encode("ascii") for p in params]


def rcpt_params(session: Session, rcpt: Recipient) -> list[bytes]:
    """NOTIFY and ORCPT passed through to a DSN-capable next hop (RFC 3461 §5.2; DSN-9)."""
    if not session.has("dsn"):
        return []
    params = []
    notify = [
        n.upper() for n in rcpt.notify if n.upper() in ("NEVER", "SUCCESS", "FAILURE", "DELAY")
    ]
    if notify:
        params.append("NOTIFY=" + ",".join(notify))
    if rcpt.orcpt:
        kind, sep, address = rcpt.orcpt.partition(";")
        if sep and re.fullmatch(r"[A-Za-z0-9-]+", kind):
            params.append(f"ORCPT={kind};{xtext(address)}")
    return [p.encode("ascii") for p in params]


@dataclass
class Tally:
    """Where one transaction's recipients went: accepted, refused as too many (``leftovers``,
    for a further transaction, SESS-9) or temporarily refused (``soft``)."""

    accepted: list[Recipient] = field(default_factory=list)
    leftovers: list[Recipient] = field(default_factory=list)
    soft: list[Recipient] = field(default_factory=list)

    def take(
        self, recipients: list[Recipient], answer: Answer, attempt: Attempt, target: Target
    ) -> None:
        """Record what ``target`` answered for ``recipients``."""
        attempt.answered(recipients, answer, target)
        bucket = {
            Kind.ACCEPTED: self.accepted,
            Kind.TOO_MANY: self.leftovers,
            Kind.TEMPORARY: self.soft,
        }
        bucket.get(answer.kind, []).extend(recipients)

    @classmethod
    def refused_mail(
        cls, queue: list[Recipient], answer: Answer, attempt: Attempt, target: Target
    ) -> Tally:
        """MAIL was refused: every recipient bounces (5xx, MX-17) or stays pending."""
        attempt.answered(queue, answer, target)
        return cls(soft=list(queue) if answer.kind is Kind.TEMPORARY else [])


class Transactions:
    """Runs the transactions of one message on a session; ``settings`` may be replaced."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(
        self, session: Session, attempt: Attempt, pending: list[Recipient]
    ) -> list[Recipient]:
        """As many transactions as it takes on this session; return the recipients still pending.

        RFC 5321 §4.5.3.1.10 / SESS-9: recipients refused with "too many" go into a
        further transaction, as long as the previous one made progress.
        """
        refusal = _unsendable(session, attempt)
        if refusal is not None:
            status, reply = refusal
            for rcpt in pending:
                attempt.finish(
                    rcpt, Disposition.BOUNCED, status, reply, session.target, remote=False
                )
            return []
        queue = list(pending)
        later: list[Recipient] = []
        while queue:
            rset = bool(session.transactions) or session.rset_due
            if session.pipelining:  # SESS-16: [RSET] MAIL RCPT... in one write
                tally = await self._pipelined(session, attempt, queue, rset)
                session.transactions += 1
                session.messages += 1
            else:
                if rset:
                    await session.rset(self.settings.mail_timeout)
                session.rset_due = False
                session.transactions += 1
                session.messages += 1
                tally = await self._lock_step(session, attempt, queue)
            if tally.accepted:  # SESS-6: no DATA without an accepted recipient
                await self._data(session, attempt, tally.accepted)
            later.extend(
                tally.soft + [r for r in tally.accepted if r.address not in attempt.results]
            )
            if not tally.accepted or not tally.leftovers:
                later.extend(tally.leftovers)
                break
            queue = tally.leftovers
        return later

    async def _lock_step(self, session: Session, attempt: Attempt, queue: list[Recipient]) -> Tally:
        """MAIL, then each RCPT after the reply to the one before."""
        s, target = self.settings, session.target
        sender = attempt.envelope.sender.encode("utf-8")
        resp = await session.command(
            b"MAIL",
            b"FROM:<" + sender + b">",
            *mail_params(session, attempt),
            timeout=s.mail_timeout,
        )
        mail = mail_answer(resp.code, resp.message, session.enhanced)
        if mail.kind is not Kind.ACCEPTED:
            return Tally.refused_mail(queue, mail, attempt, target)
        tally = Tally()
        for index, rcpt in enumerate(queue):
            try:
                resp = await session.command(
                    b"RCPT",
                    b"TO:<" + rcpt.address.encode("utf-8") + b">",
                    *rcpt_params(session, rcpt),
                    timeout=s.rcpt_timeout,
                )
            except HostFailure:
                attempt.soft(tally.accepted, "4.4.2", _LOST_BEFORE_DATA, target, remote=False)
                raise
            answer = rcpt_answer(resp.code, resp.message, session.enhanced)
            if answer.kind is Kind.TOO_MANY:
                # SESS-9: this one and the rest in a further transaction
                tally.take(queue[index:], answer, attempt, target)
                break
            tally.take([rcpt], answer, attempt, target)
        return tally

    async def _pipelined(
        self, session: Session, attempt: Attempt, queue: list[Recipient], rset: bool
    ) -> Tally:
        """RFC 2920 (SESS-16): [RSET,] MAIL and RCPT×n in one write, then every reply in order.

        DATA is not pipelined: it is sent only once a recipient was accepted (SESS-6), and
        data only after its 354 (SESS-7). A failed RSET on a connection just taken from the
        pool raises ``Stale`` (nothing was delivered on it; the caller opens a new one).
        """
        s, target = self.settings, session.target
        lines = [b"RSET"] if rset else []
        lines.append(
            b" ".join(
                [
                    b"MAIL",
                    b"FROM:<" + attempt.envelope.sender.encode("utf-8") + b">",
                    *mail_params(session, attempt),
                ]
            )
        )
        for rcpt in queue:
            lines.append(
                b" ".join(
                    [
                        b"RCPT",
                        b"TO:<" + rcpt.address.encode("utf-8") + b">",
                        *rcpt_params(session, rcpt),
                    ]
                )
            )
        # as aiosmtplib checks each command
        if any(COMMAND_INJECTION_REGEX.search(line) for line in lines):
            raise HostFailure(
                "4.4.2", f"451 4.4.2 refusing to send a control character to {target}", remote=False
            )
        fresh, session.rset_due = session.rset_due, False
        protocol = session.pipelined
        if protocol is None:
            if fresh:
                raise Stale()
            raise HostFailure("4.4.2", f"451 4.4.2 lost connection with {target}", remote=False)
        protocol.expect(len(lines))
        try:
            protocol.write(b"\r\n".join(lines) + b"\r\n")
            if rset:
                await _pipelined_rset(session, fresh, s.mail_timeout)
            resp = await session.reply("MAIL", s.mail_timeout)
            mail = mail_answer(resp.code, resp.message, session.enhanced)
            tally = Tally()
            for rcpt in queue:
                try:
                    resp = await session.reply("RCPT", s.rcpt_timeout)
                except HostFailure:
                    attempt.soft(tally.accepted, "4.4.2", _LOST_BEFORE_DATA, target, remote=False)
                    raise
                if mail.kind is Kind.ACCEPTED:  # the RCPT replies of a refused MAIL mean nothing
                    tally.take(
                        [rcpt],
                        rcpt_answer(resp.code, resp.message, session.enhanced),
                        attempt,
                        target,
                    )
        finally:
            protocol.expect(0)
        if mail.kind is not Kind.ACCEPTED:
            return Tally.refused_mail(queue, mail, attempt, target)
        return tally

    async def _data(self, session: Session, attempt: Attempt, accepted: list[Recipient]) -> None:
        """DATA, the stuffed message, and the reply that covers every accepted recipient (SESS-7/8).

        Each stage has its own timeout (RFC 5321 §4.5.3.2.4–.6; SESS-3): aiosmtplib's
        ``data()`` applies a single timeout to the 354 and to the final reply and none
        to the writes, so the data phase is driven here, block by block; the end of data goes
        in the last block's write (one write for a message under ``CHUNK``). On a pipelining
        session DATA is written and its reply read as a group of one, without aiosmtplib's
        per-command lock and checks (issue 23: a constant command).
        """
        s, target, client = self.settings, session.target, session.client
        protocol = session.pipelined
        if protocol is None:
            resp = await session.command(b"DATA", timeout=s.data_init_timeout)
        else:
            protocol.expect(1)
            try:
                try:
                    protocol.write(b"DATA\r\n")
                except WIRE_ERRORS as exc:
                    raise session.lost("DATA", exc) from None
                resp = await session.reply("DATA", s.data_init_timeout)
            finally:
                protocol.expect(0)
        answer = data_answer(resp.code, resp.message, session.enhanced)
        if answer.kind is not Kind.ACCEPTED:  # SESS-7: never send data without 354
            attempt.answered(accepted, answer, target)
            return
        wire = client.protocol
        sent_end = False
        try:
            if wire is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            wire._response_pending = True  # replies arriving while we write belong to this command
            held = b""  # the block before the end of data, written with it
            for piece in stuffed_blocks(attempt.body):  # no stuffed copy of the message
                if piece is not END:
                    if held:
                        await _write(wire, held, s.data_block_timeout)
                    held = piece
                    continue
                sent_end = True
                await _write(wire, held + END, s.data_block_timeout)
            resp = await wire.read_response(timeout=s.data_done_timeout)
        except (*WIRE_ERRORS, TimeoutError) as exc:
            client.close()
            raise _lost_data(attempt, accepted, target, sent_end, exc) from None
        answer = final_answer(resp.code, resp.message, session.enhanced)
        attempt.answered(accepted, answer, target)
        if answer.kind is Kind.ACCEPTED:
            for rcpt in accepted:
                attempt.finish(
                    rcpt, Disposition.DELIVERED, answer.status, answer.reply, target, remote=True
                )
                # DSN-9: a DSN-capable hop got NOTIFY/ORCPT, owns success notices (RFC 3461 §5.2.2)
                attempt.results[rcpt.address].next_hop_dsn = session.esmtp and session.has("dsn")
        elif answer.kind is Kind.TEMPORARY and resp.code == 421:
            client.close()
            raise HostFailure(answer.status, answer.reply, remote=True)


async def _write(wire: aiosmtplib.protocol.SMTPProtocol, block: bytes, timeout: float) -> None:
    """One block of the data phase; waits (``timeout``) only while the transport is full."""
    wire.write(block)
    if wire._paused or wire._connection_lost:  # else nothing to wait for
        await asyncio.wait_for(wire._drain_helper(), timeout)


def _unsendable(session: Session, attempt: Attempt) -> tuple[str, str] | None:
    """(status, reply) when this message cannot go to this server at all, else None."""
    target, size, limit = session.target, len(attempt.body), session.size_limit
    if attempt.utf8 and not session.has("smtputf8"):  # RFC 6531 §3.2: no downgrade (SESS-15)
        return (
            "5.6.7",
            f"553 5.6.7 {target} does not support SMTPUTF8, needed for a non-ASCII address",
        )
    if attempt.eight_bit and not session.has("8bitmime"):  # RFC 6152 §3: never raw 8-bit (SESS-14)
        return (
            "5.6.3",
            f"554 5.6.3 {target} does not support 8BITMIME and the message has 8-bit content",
        )
    if limit is not None and size > limit:  # RFC 1870 §6: do not send it (SESS-13)
        return "5.3.4", f"552 5.3.4 message size {size} exceeds the fixed limit {limit} of {target}"
    return None


async def _pipelined_rset(session: Session, fresh: bool, timeout: float) -> None:
    """The reply to a pipelined RSET; on a session just taken from the pool a failure is
    ``Stale``."""
    try:
        resp = await session.reply("RSET", timeout)
    except HostFailure:
        if fresh:
            raise Stale() from None
        raise
    if resp.code != 250:
        session.client.close()
        if fresh:
            raise Stale()
        raise HostFailure(
            "4.4.2",
            f"451 4.4.2 {session.target} refused RSET: {reply_text(resp.code, resp.message)}",
            remote=False,
        )


def _lost_data(
    attempt: Attempt, accepted: list[Recipient], target: Target, sent_end: bool, exc: BaseException
) -> HostFailure:
    """The connection failed during the data phase (SESS-4)."""
    why = safe_text(str(exc) or type(exc).__name__)
    if not sent_end:
        return HostFailure(
            "4.4.2",
            f"451 4.4.2 lost connection with {target} while sending data: {why}",
            remote=False,
        )
    # No reply after "." is "not delivered, retry later". Not retried at another address in
    # this attempt, to keep the duplicate risk to one retry.
    reply = f"451 4.4.2 lost connection with {target} after end of data: {why}"
    for rcpt in accepted:
        attempt.finish(rcpt, Disposition.DEFERRED, "4.4.2", reply, target, remote=False)
    return HostFailure("4.4.2", reply, remote=False)


__all__ = [
    "CHUNK", "Tally", "Transactions", "dot_stuff", "mail_params", "rcpt_params", "stuffed_blocks",
]

"""The queue file format and queue IDs: pure encode and decode, no file I/O (DUR-2).

Queue file format, version 1 (all integers big-endian)::

    b"MXQ1\\n"                                magic and version
    frame*                                    type(1) length(4) payload crc32(4)
                                              (crc32 over type, length and payload)
      E  envelope JSON (sender, recipients, DSN parameters, arrival, client)
      M  the message bytes (CRLF lines, our Received: header first)
      Z  END marker (empty payload)            -- the file is a message only with it
      S  state JSON, appended after Z           -- snapshot of per-recipient state,
         zero or more                              the DSN count and the hold flag;
                                                   the last valid one wins

A file without an S record holds a message whose state is its envelope's: every recipient
pending, never tried, no DSN sent, not held. A new message is written so (issue 23: its
first S record is appended by the first change); files written before issue 23 begin with
such an S record after Z, and read the same.

A file whose E/M/Z part is incomplete, out of order or fails its checksum does not
decode (``CorruptFile``); a torn trailing S frame is not part of the valid end that
``decode`` reports. How the files are written, synced and recovered: ``store``.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mxroute.relay.envelope import Envelope, Recipient

MAGIC = b"MXQ1\n"
_HEAD = struct.Struct(">cI")
_CRC = struct.Struct(">I")
MAX_FRAME = 1 << 31
QUEUE_ID = re.compile(r"[0-9A-Za-z]{8,64}\Z")

PENDING, DELIVERED, BOUNCED = "pending", "delivered", "bounced"


# per process: IDs differ across restarts even if the clock jumps back
_ID_PREFIX = secrets.token_hex(3).upper()
_ID_COUNTER = itertools.count()


def new_queue_id(clock: Callable[[], float] = time.time) -> str:
    """A queue ID unique across restarts and clock jumps: microseconds (sortable), a random
    per-process prefix and a per-process counter (no system call per ID on the hot path)."""
    micros = int(clock() * 1_000_000) & (2**56 - 1)
    return f"{micros:014X}{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFF:05X}"


def queue_id_time(queue_id: str) -> float | None:
    """When ``queue_id`` was made (``new_queue_id``'s clock, seconds), or None for an ID not of
    that shape."""
    try:
        return int(queue_id[:14], 16) / 1_000_000 if len(queue_id) >= 14 else None
    except ValueError:
        return None


@dataclass(slots=True)
class RecipientState:
    """Everything the queue remembers about one recipient (DUR-6)."""

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str | None = None
    state: str = PENDING
    attempts: int = 0
    next_try: float = 0.0
    status: str | None = None  # last enhanced status code
    reply: str | None = None  # last reply or local reason
    remote_reply: bool = False  # ``reply`` is the remote's own reply, not a local reason (DSN-6)
    why: str | None = None  # why it is retried next (or why it ended)
    hosts: dict[str, str] = field(default_factory=dict)  # remote MTA -> last reply it sent
    warned: bool = False  # a delay warning was sent (DSN-10: at most one)

    def recipient(self) -> Recipient:
        return Recipient(self.address, self.notify, self.orcpt)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address, "notify": list(self.notify), "orcpt": self.orcpt,
            "state": self.state, "attempts": self.attempts, "next_try": self.next_try,
            "status": self.status, "reply": self.reply, "remote_reply": self.remote_reply,
            "why": self.why, "hosts": self.hosts, "warned": self.warned,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecipientState:
        return cls(
            address=str(data["address"]), notify=tuple(data.get("notify") or ()),
            orcpt=data.get("orcpt"), state=str(data.get("state", PENDING)),
            attempts=int(data.get("attempts", 0)), next_try=float(data.get("next_try", 0.0)),
            status=data.get("status"), reply=data.get("reply"),
            remote_reply=bool(data.get("remote_reply", False)), why=data.get("why"),
            hosts=dict(data.get("hosts") or {}), warned=bool(data.get("warned")),
        )


@dataclass(slots=True)
class MessageMeta:
    """A queue file without its message bytes: envelope, intake facts and recipient state."""

    queue_id: str
    sender: str
    arrival: float
    recipients: list[RecipientState]
    ret: str | None = None
    envid: str | None = None
    body: str | None = None
    smtputf8: bool = False
    client: str = ""  # "helo (verified reverse name or unknown [ip])" of the client, sanitised
    size: int = 0
    intake: float = 0.0  # seconds from the client's MAIL FROM to arrival (issue 15 D: delays a)
    # for a DSN: {"queue_id": ..., "recipients": [...]} (DSN-12)
    bounce_of: dict[str, Any] | None = None
    bounces: int = 0  # DSNs enqueued so far for this message (names the next one)
    held: bool = False  # on hold (``mxroute queue hold``): never tried, still expires (issue 15)

    def envelope(self) -> Envelope:
        return Envelope(
            sender=self.sender, recipients=[r.recipient() for r in self.recipients], ret=self.ret,
            envid=self.envid, body=self.body, smtputf8=self.smtputf8,
        )

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.state == PENDING]

    @property
    def done(self) -> bool:
        return not self.pending

    def next_due(self) -> float | None:
        times = [r.next_try for r in self.pending]
        return min(times) if times else None

    def envelope_json(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id, "sender": self.sender, "arrival": self.arrival,
            "recipients": [
                {"address": r.address, "notify": list(r.notify), "orcpt": r.orcpt}
                for r in self.recipients
            ],
            "ret": self.ret, "envid": self.envid, "body": self.body, "smtputf8": self.smtputf8,
            "client": self.client, "size": self.size, "bounce_of": self.bounce_of,
            "intake": self.intake,
        }

    def state_json(self) -> dict[str, Any]:
        return {"bounces": self.bounces, "held": self.held,
                "recipients": [r.to_json() for r in self.recipients]}

    def to_json(self) -> dict[str, Any]:
        return {**self.envelope_json(), **self.state_json()}


class CorruptFile(Exception):
    """A queue file that does not validate (DUR-2)."""


# --- encoding ------------------------------------------------------------------------

def frame(kind: bytes, payload: bytes) -> bytes:
    """One record: type, length, payload and the crc32 over all three."""
    head = _HEAD.pack(kind, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


_END = frame(b"Z", b"")


def encode(meta: MessageMeta, message: bytes) -> bytes:
    """The complete bytes of a new queue file."""
    return b"".join(encode_parts(meta, (message,)))


def encode_parts(meta: MessageMeta, parts: Sequence[bytes | bytearray]) -> list[bytes | bytearray]:
    """A new queue file as pieces to write one after the other: the message is ``parts``
    in order, never joined (issue 22: no second copy of a large message). An S record only
    for a state beyond the envelope's (issue 23)."""
    env = json.dumps(meta.envelope_json(), separators=(",", ":")).encode()
    head = _HEAD.pack(b"M", sum(len(part) for part in parts))
    crc = zlib.crc32(head)
    for part in parts:
        crc = zlib.crc32(part, crc)
    tail = _CRC.pack(crc) + _END
    if not _as_enveloped(meta):
        tail += encode_state(meta)
    return [MAGIC + frame(b"E", env) + head, *parts, tail]


def _as_enveloped(meta: MessageMeta) -> bool:
    """Is ``meta``'s state what a file without S records means (``decode``)?"""
    return not (meta.bounces or meta.held) and all(
        r.state == PENDING and not (r.attempts or r.next_try or r.status or r.reply
                                    or r.remote_reply or r.why or r.hosts or r.warned)
        for r in meta.recipients)


def encode_state(meta: MessageMeta) -> bytes:
    """The S record to append when ``meta``'s recipient state changes (DUR-6)."""
    return frame(b"S", json.dumps(meta.state_json(), separators=(",", ":")).encode())


# --- decoding ------------------------------------------------------------------------

def _frames(data: bytes, offset: int,
            message: bytes | None = None) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield (type, payload, end offset) for each complete, checksummed frame;
    stop at the first bad one. ``message``: the M frame's payload, left out of ``data``
    (``message_span``), whose M frame is then its head and checksum only."""
    while offset + _HEAD.size <= len(data):
        kind, length = _HEAD.unpack_from(data, offset)
        if kind == b"M" and message is not None:
            payload, end = message, offset + _HEAD.size + _CRC.size
            if length != len(message) or end > len(data):
                return
            message = None
        else:
            end = offset + _HEAD.size + length + _CRC.size
            if length > MAX_FRAME or end > len(data):
                return
            payload = data[offset + _HEAD.size : offset + _HEAD.size + length]
        (crc,) = _CRC.unpack_from(data, end - _CRC.size)
        if crc != zlib.crc32(payload, zlib.crc32(data[offset : offset + _HEAD.size])):
            return
        yield kind, payload, end
        offset = end


def message_span(head: bytes) -> tuple[int, int] | None:
    """(offset, length) of the M payload of a queue file that begins with ``head``; None when
    ``head`` does not reach the M frame's head (or is no queue file: ``decode`` says why)."""
    offset = len(MAGIC)
    if not head.startswith(MAGIC) or offset + _HEAD.size > len(head):
        return None
    kind, length = _HEAD.unpack_from(head, offset)
    offset += _HEAD.size + length + _CRC.size  # past E
    if kind != b"E" or offset + _HEAD.size > len(head):
        return None
    kind, length = _HEAD.unpack_from(head, offset)
    return (offset + _HEAD.size, length) if kind == b"M" else None


def _envelope(payload: bytes, queue_id: str) -> tuple[MessageMeta, list[Any]]:
    """The E record: the meta without recipient state, and the recipients as listed."""
    try:
        env = json.loads(payload)
        listed = env["recipients"]
        if not isinstance(listed, list):
            raise TypeError("recipients is not a list")
        meta = MessageMeta(
            queue_id=queue_id, sender=str(env["sender"]), arrival=float(env["arrival"]),
            recipients=[], ret=env.get("ret"), envid=env.get("envid"), body=env.get("body"),
            smtputf8=bool(env.get("smtputf8")), client=str(env.get("client", "")),
            size=int(env.get("size", 0)), bounce_of=env.get("bounce_of"),
            intake=float(env.get("intake", 0.0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFile(f"bad envelope record: {exc}") from None
    return meta, listed


def decode(data: bytes, queue_id: str,
           message: bytes | None = None) -> tuple[MessageMeta, bytes, int]:
    """Parse a queue file: (meta with the latest state, message bytes, offset of the valid end).

    ``message``: the M payload read on its own (issue 22: one copy of a large message), left
    out of ``data`` (the offset returned is then in ``data``). Raises CorruptFile unless magic,
    E, M and Z are all present, in order, with good checksums.
    """
    if not data.startswith(MAGIC):
        raise CorruptFile("bad magic or unknown version")
    frames = _frames(data, len(MAGIC), message)
    try:
        parts = [next(frames) for _ in range(3)]
    except StopIteration:
        raise CorruptFile("truncated or bad checksum before END") from None
    if [p[0] for p in parts] != [b"E", b"M", b"Z"] or parts[2][1]:
        raise CorruptFile("records out of order or END missing")
    meta, listed = _envelope(parts[0][1], queue_id)
    end = parts[2][2]
    last = None  # the state that wins: recipient objects are built for it only (start-up speed)
    for kind, payload, stop in frames:
        if kind != b"S":
            break
        try:
            state = json.loads(payload)
            last = (state["recipients"], int(state.get("bounces", 0)), bool(state.get("held")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptFile(f"bad state record: {exc}") from None
        end = stop
    try:
        if last is None:
            meta.recipients = [RecipientState.from_json(r) for r in listed]
        else:
            meta.recipients = [RecipientState.from_json(r) for r in last[0]]
            meta.bounces, meta.held = last[1], last[2]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        record = "envelope" if last is None else "state"
        raise CorruptFile(f"bad {record} record: {exc}") from None
    return meta, parts[1][1], end

"""PURE: which on-disk states a power cut may leave, from a recorded trace (ALICE, OSDI 2014).

Issue 21. The trace is a list of ``Op`` (``stracefs`` reads them from strace): file creations,
writes, truncations, renames, unlinks, mkdirs and fsyncs under one directory, and ``ack``
marks (a ``250`` written to a client). A crash at point ``k`` (after ``ops[:k]``) may leave,
in this model:

- a file's data: at least every write and truncation its last fsync covered; of the later
  ones, a prefix in order, the next one possibly torn (a prefix of its bytes) or, when it
  extended the file, read back as zeros;
- a directory's entries: at least every create, rename, unlink and mkdir its last fsync
  covered (a rename: of either directory it touches); each later one independently persisted
  or not, so a rename may land before or after the data it was meant to follow;
- a rename is atomic: the file is under its old name or its new one.

``Trace(ops)`` resolves paths to inodes once; ``points()`` are the crash points,
``choices(k, rng, randoms)`` a bounded, deterministic set of allowed states at ``k`` (everything
persisted, nothing unsynced persisted, each unsynced op alone left out or alone kept, each
file's unsynced data lost, torn or zeroed, then ``randoms`` random mixes), ``materialize``
the directories and file bytes of one state. ``without(ops, pred)`` drops ops (the tests'
switch that pretends an fsync never happened).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

TAILS = ("whole", "torn", "zeros")


@dataclass(frozen=True, slots=True)
class Op:
    """One file-system call (paths relative to the traced directory; "." is the directory)."""

    kind: str  # create write trunc rename unlink mkdir fsync ack
    path: str
    dst: str = ""  # rename
    offset: int = -1  # write: the file offset, -1 = at the end (O_APPEND)
    data: bytes = b""  # write
    size: int = 0  # trunc
    text: str = ""  # ack: the queue ID acknowledged
    at: float = 0.0  # when the call returned (seconds since the epoch)
    tid: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """An op resolved against the file system at its point in the trace."""

    index: int  # its position in the ops
    kind: str  # data, entry, sync, ack
    op: Op
    inode: int = -1  # data/entry: the file; sync: the file or -1 for a directory
    dirs: tuple[str, ...] = ()  # entry: the directories it changes; sync: the one synced
    offset: int = 0  # data: where a write lands (appends resolved)


@dataclass(frozen=True, slots=True)
class Choice:
    """One allowed state at crash point ``k``: the unsynced entry events kept, and per file
    how many unsynced data events land and how the last of them lands (``TAILS``)."""

    k: int
    entries: frozenset[int]
    data: tuple[tuple[int, int, str], ...]  # (inode, count, tail)


@dataclass
class Disk:
    """A materialized state: directories and files (bytes), relative paths."""

    dirs: set[str] = field(default_factory=set)
    files: dict[str, bytes] = field(default_factory=dict)

    def key(self) -> tuple[tuple[str, ...], tuple[tuple[str, bytes], ...]]:
        return tuple(sorted(self.dirs)), tuple(sorted(self.files.items()))


def parent(path: str) -> str:
    return path.rpartition("/")[0] or "."


def without(ops: Iterable[Op], drop: Callable[[Op], bool]) -> list[Op]:
    """``ops`` without those ``drop`` names (a switch for the tests, never for the product)."""
    return [op for op in ops if not drop(op)]


class Trace:
    """The events of a trace; ``dirs``: directories that exist before it starts."""

    def __init__(self, ops: list[Op], dirs: Iterable[str] = (".",)) -> None:
        self.ops = ops
        self.initial = set(dirs)
        self.events: list[Event] = []
        known: set[str] = set(self.initial)
        names: dict[str, int] = {}
        sizes: dict[int, int] = {}
        for index, op in enumerate(ops):
            event = self._resolve(index, op, names, sizes, known)
            if event is not None:
                self.events.append(event)

    def _resolve(self, index: int, op: Op, names: dict[str, int], sizes: dict[int, int],
                 known: set[str]) -> Event | None:
        if op.kind == "ack":
            return Event(index, "ack", op)
        if op.kind == "create":
            if op.path in names:
                return None
            names[op.path] = inode = len(sizes)
            sizes[inode] = 0
            return Event(index, "entry", op, inode, (parent(op.path),))
        if op.kind == "mkdir":
            known.add(op.path)
            return Event(index, "entry", op, -1, (parent(op.path),))
        if op.kind == "fsync":
            if op.path in known:
                return Event(index, "sync", op, -1, (op.path,))
            if op.path in names:
                return Event(index, "sync", op, names[op.path])
            return None
        inode = names.get(op.path, -1)
        if inode < 0:
            return None
        if op.kind == "write":
            offset = sizes[inode] if op.offset < 0 else op.offset
            sizes[inode] = max(sizes[inode], offset + len(op.data))
            return Event(index, "data", op, inode, offset=offset)
        if op.kind == "trunc":
            sizes[inode] = op.size
            return Event(index, "data", op, inode)
        if op.kind == "unlink":
            del names[op.path]
            return Event(index, "entry", op, inode, (parent(op.path),))
        if op.kind == "rename":
            del names[op.path]
            names[op.dst] = inode
            return Event(index, "entry", op, inode, (parent(op.dst), parent(op.path)))
        return None

    # --- crash points and states ---
    def points(self) -> list[int]:
        """Every crash point that follows a change or a sync: k such that ops[:k] ran."""
        return [e.index + 1 for e in self.events if e.kind != "ack"]

    def acked(self, k: int) -> dict[str, float]:
        """Queue IDs told ``250`` before crash point ``k`` -> when."""
        return {e.op.text: e.op.at for e in self.events if e.kind == "ack" and e.index < k}

    def split(self, k: int) -> tuple[set[int], list[Event], dict[int, list[Event]],
                                     dict[int, list[Event]]]:
        """At ``k``: durable entry events, unsynced entry events that matter, and per file its
        durable and its unsynced data events."""
        before = [e for e in self.events if e.index < k]
        last_dir: dict[str, int] = {}
        last_file: dict[int, int] = {}
        for e in before:
            if e.kind == "sync":
                if e.inode < 0:
                    last_dir[e.dirs[0]] = e.index
                else:
                    last_file[e.inode] = e.index
        durable: set[int] = set()
        unsynced: list[Event] = []
        for e in before:
            if e.kind == "entry":
                if any(last_dir.get(d, -1) > e.index for d in e.dirs):
                    durable.add(e.index)
                else:
                    unsynced.append(e)
        # an unsynced entry event superseded by a durable one on the same file cannot matter
        settled = {e.inode: e.index for e in before if e.index in durable and e.inode >= 0}
        unsynced = [e for e in unsynced if e.inode < 0 or settled.get(e.inode, -1) < e.index]
        kept: dict[int, list[Event]] = {}
        loose: dict[int, list[Event]] = {}
        for e in before:
            if e.kind == "data":
                side = kept if last_file.get(e.inode, -1) > e.index else loose
                side.setdefault(e.inode, []).append(e)
        return durable, unsynced, kept, loose

    def choices(self, k: int, rng: random.Random, randoms: int = 4) -> list[Choice]:
        """A bounded, deterministic (given ``rng``) set of allowed states at crash point ``k``."""
        _, unsynced, _, loose = self.split(k)
        every = frozenset(e.index for e in unsynced)
        full = tuple((inode, len(evs), "whole") for inode, evs in sorted(loose.items()))
        none = tuple((inode, 0, "whole") for inode in sorted(loose))
        found: dict[tuple[frozenset[int], tuple[tuple[int, int, str], ...]], None] = {}
        found[(every, full)] = None
        found[(frozenset(), none)] = None
        for e in unsynced:
            found[(every - {e.index}, full)] = None
            found[(frozenset({e.index}), none)] = None
        for inode, evs in sorted(loose.items()):
            for count, tail in ((0, "whole"), (len(evs), "torn"), (len(evs), "zeros")):
                data = tuple((i, count, tail) if i == inode else (i, n, t) for i, n, t in full)
                found[(every, data)] = None
        for _ in range(randoms):
            entries = frozenset(e.index for e in unsynced if rng.random() < 0.5)
            data = tuple((inode, n, rng.choice(TAILS) if n else "whole")
                         for inode, evs in sorted(loose.items())
                         for n in [rng.randint(0, len(evs))])
            found[(entries, data)] = None
        return [Choice(k, entries, data) for entries, data in found]

    def materialize(self, choice: Choice) -> Disk:
        """The directories and files of one allowed state."""
        durable, _, kept, loose = self.split(choice.k)
        disk = Disk(dirs=set(self.initial))
        names: dict[str, int] = {}
        for e in self.events:
            if e.index >= choice.k:
                break
            if e.kind != "entry" or not (e.index in durable or e.index in choice.entries):
                continue
            op = e.op
            if op.kind == "mkdir":
                disk.dirs.add(op.path)
            elif op.kind == "create":
                names[op.path] = e.inode
            elif op.kind == "unlink":
                if names.get(op.path) == e.inode:
                    del names[op.path]
            elif op.kind == "rename":
                if names.get(op.path) == e.inode:
                    del names[op.path]
                names[op.dst] = e.inode
        plan = {inode: (count, tail) for inode, count, tail in choice.data}
        for path, inode in names.items():
            if parent(path) not in disk.dirs:
                continue  # its directory did not reach the disk
            content = bytearray()
            for e in kept.get(inode, []):
                _apply(content, e, "whole")
            later = loose.get(inode, [])
            count, tail = plan.get(inode, (len(later), "whole"))
            for n, e in enumerate(later[:count]):
                _apply(content, e, tail if n == count - 1 else "whole")
            disk.files[path] = bytes(content)
        return disk


def _apply(content: bytearray, e: Event, tail: str) -> None:
    """One data event on ``content``: whole, torn (half its bytes) or as zeros (an extension
    whose data never landed)."""
    if e.op.kind == "trunc":
        del content[e.op.size:]
        content.extend(b"\0" * (e.op.size - len(content)))
        return
    data = e.op.data
    if tail == "torn":
        data = data[: len(data) // 2]
    elif tail == "zeros":
        if e.offset + len(data) <= len(content):
            return  # an overwrite inside the file: the old bytes stay
        data = b"\0" * len(data)
    if len(content) < e.offset:
        content.extend(b"\0" * (e.offset - len(content)))
    content[e.offset : e.offset + len(data)] = data


__all__ = ["TAILS", "Choice", "Disk", "Event", "Op", "Trace", "parent", "without"]

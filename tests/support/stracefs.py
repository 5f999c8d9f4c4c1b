"""PURE: the file-system operations under one directory in an ``strace -f -ttt -y -xx`` log.

Issue 21: what ``mxroute serve`` did to its spool, in order, as ``crashmodel.Op`` values: file
creations and truncations, writes with their bytes and offsets, renames, unlinks, mkdirs and
fsyncs, plus an ``ack`` op for every ``250 2.0.0 ... queued as ID`` written to a client socket
(the moment the client was told). ``-xx`` makes every string hex, ``-y`` names each
descriptor's path, ``-s`` must be larger than any write. Lines split by ``<unfinished ...>`` /
``<... resumed>`` (several threads) are joined; an op is placed where its call returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.support.crashmodel import Op

TRACED = "openat,write,pwrite64,writev,sendto,sendmsg,rename,renameat,renameat2,unlink,unlinkat," \
    "mkdir,mkdirat,ftruncate,fsync,fdatasync"

_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)(?:<([^>]*)>)?")
_HEX = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')
_FD = re.compile(r"(-?\d+|AT_FDCWD)<((?:\\x[0-9a-f]{2})*)>")
_ACK = re.compile(rb"250 2\.0\.0 [^\r\n]*queued as ([0-9A-Za-z]+)")


def unhex(text: str) -> bytes:
    """``\\x41\\x42`` -> ``b"AB"`` (strace -xx)."""
    return bytes.fromhex(text.replace("\\x", ""))


@dataclass
class _Fd:
    path: str
    pos: int
    append: bool


class Parser:
    """Feed strace lines (``feed``) and collect the ops under ``root`` (``ops``)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") + "/"
        self.ops: list[Op] = []
        self._pending: dict[str, str] = {}  # tid -> the first half of an unfinished call
        self._fds: dict[tuple[str, int], _Fd] = {}  # (path, fd) -> position (files we follow)

    def rel(self, path: str) -> str | None:
        """``path`` relative to the root, or None outside it."""
        if path.endswith(" (deleted)"):
            return None
        if path == self.root.rstrip("/"):
            return "."
        return path[len(self.root):] if path.startswith(self.root) else None

    def feed_text(self, text: str) -> list[Op]:
        for line in text.splitlines():
            self.feed(line)
        return self.ops

    def feed(self, line: str) -> None:
        match = _LINE.match(line)
        if match is None:
            return
        tid, stamp, rest = match.groups()
        if rest.endswith("<unfinished ...>"):
            self._pending[tid] = rest[: -len("<unfinished ...>")].rstrip()
            return
        if rest.startswith("<... "):
            first = self._pending.pop(tid, None)
            if first is None:
                return
            rest = first + rest.split("resumed>", 1)[1]
        call = _CALL.match(rest)
        if call is None:
            return
        name, args, ret, retpath = call.groups()
        if int(ret) < 0:
            return
        self._call(name, args, int(ret), unhex(retpath).decode() if retpath else None,
                   float(stamp), int(tid))

    def _call(self, name: str, args: str, ret: int, retpath: str | None, at: float,
              tid: int) -> None:
        fds = [(int(n) if n != "AT_FDCWD" else -100, unhex(p).decode())
               for n, p in _FD.findall(args)]
        strings = [unhex(s) for s in _HEX.findall(_FD.sub("", args))]

        def emit(kind: str, path: str, **kw: object) -> None:
            self.ops.append(Op(kind, path, at=at, tid=tid, **kw))  # type: ignore[arg-type]

        if name == "openat" and retpath is not None:
            rel = self.rel(retpath)
            if rel is None:
                return
            self._fds[(retpath, ret)] = _Fd(rel, 0, "O_APPEND" in args)
            if "O_CREAT" in args:
                emit("create", rel)
            if "O_TRUNC" in args:
                emit("trunc", rel, size=0)
        elif name in ("write", "pwrite64", "writev", "sendto", "sendmsg") and fds:
            fd, path = fds[0]
            data = b"".join(strings)
            if path.startswith("socket:"):
                for queue_id in _ACK.findall(data):
                    emit("ack", "", text=queue_id.decode())
                return
            rel = self.rel(path)
            if rel is None:
                return
            data = data[:ret]
            if name == "pwrite64":
                offset = int(args.rsplit(",", 1)[1])
            else:
                state = self._fds.get((path, fd))
                if state is None or state.append:
                    offset = -1
                else:
                    offset = state.pos
                    state.pos += ret
            emit("write", rel, offset=offset, data=data)
        elif name == "ftruncate" and fds:
            rel = self.rel(fds[0][1])
            if rel is not None:
                emit("trunc", rel, size=int(args.rsplit(",", 1)[1]))
        elif name in ("fsync", "fdatasync") and fds:
            rel = self.rel(fds[0][1])
            if rel is not None:
                emit("fsync", rel)
        elif name in ("rename", "renameat", "renameat2"):
            paths = self._paths(name, fds, strings)
            if len(paths) == 2 and paths[0] is not None and paths[1] is not None:
                emit("rename", paths[0], dst=paths[1])
        elif name in ("unlink", "unlinkat", "mkdir", "mkdirat"):
            paths = self._paths(name, fds, strings)
            if paths and paths[0] is not None and "AT_REMOVEDIR" not in args:
                emit("mkdir" if name.startswith("mkdir") else "unlink", paths[0])

    def _paths(self, name: str, fds: list[tuple[int, str]],
               strings: list[bytes]) -> list[str | None]:
        """The path arguments, made absolute with their directory descriptor (``*at`` calls)."""
        out: list[str | None] = []
        dirs = [p for _, p in fds]
        for i, raw in enumerate(strings):
            path = raw.decode("utf-8", "replace")
            if not path.startswith("/") and i < len(dirs):
                path = dirs[i].rstrip("/") + "/" + path
            out.append(self.rel(path))
        return out


def parse(text: str, root: str) -> list[Op]:
    """The ops under ``root`` in one strace log."""
    return Parser(root).feed_text(text)


__all__ = ["TRACED", "Parser", "parse", "unhex"]

"""``LeanSMTP``: aiosmtpd 1.4.6's per-command machinery, made lean (issue 23).

aiosmtpd's ``_handle_client`` formats a log record per line (with a regex over it) even when
its logger is off, re-arms a timer per command and drains the writer after every reply. This
subclass keeps its protocol and replies and changes only how it reads and writes:

* command lines as aiosmtpd reads them (``readuntil``, the same checks and replies: ``500``
  for a line too long or a bad command, the bogus-command budget, the STARTTLS rules), then
  ``run_command`` (a subclass adds its session caps there);
* replies batched under PIPELINING (RFC 2920 §3.1): the ``2xx`` of MAIL, RCPT and RSET waits
  while the next command is already in the buffer, and goes out in one write with the reply
  of the last command of the batch; the writer is drained only when the transport holds back
  data (or is closing);
* the idle timer armed once, and re-armed only when it fires before the session's deadline;
* ``body_piece``: the DATA body read in bulk: up to ``<CRLF>.<CRLF>`` in one ``readuntil``
  whenever the next line is surely not the lone dot; line by line otherwise, and for the rest
  of a body beyond the stream's read-ahead (SEC-1: only ``<CRLF>.<CRLF>`` ends it either way).

The stream reader's buffer is peeked at (``_buffer``, as aiosmtpd itself clears it after
STARTTLS), never consumed other than through ``readuntil``/``read``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, BOGUS_LIMIT, SMTP, TLSSetupException

log = logging.getLogger(__name__)

BATCHED = frozenset({"MAIL", "RCPT", "RSET"})  # RFC 2920 §3.1: may be followed in a group
END = b"\r\n.\r\n"


def buffered(reader: asyncio.StreamReader) -> bytearray:
    """What ``reader`` holds unread (asyncio's own buffer: look, do not touch)."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    return buffer


def unstuff(chunk: bytes | bytearray | memoryview) -> bytes:
    """CRLF lines starting at a line start, with the transparency dot of each line that has one
    taken off (RFC 5321 §4.5.2)."""
    data = bytes(chunk)
    if data[:1] == b".":
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n") if b"\r\n." in data else data


class LeanSMTP(SMTP):
    """aiosmtpd's SMTP with a lean command loop, batched replies and bulk DATA reading."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._pending: list[bytes] = []  # replies held while a pipelined batch is read
        self._batch = False  # the command being run may have its 2xx held
        self._deadline = 0.0  # the idle timeout's, in loop time
        self._bulk = True  # this DATA body may still be read in one piece

    # -- replies --
    async def write_reply(self, reply: bytes) -> None:
        """The one way a reply goes out (``reply`` without its last CRLF)."""
        self._pending.append(reply + b"\r\n")
        if self._batch and reply[:1] == b"2":
            return
        self.flush_replies()
        transport = self.transport
        if transport is not None and (transport.is_closing()
                                      or transport.get_write_buffer_size() > 0):  # type: ignore[attr-defined]
            await self._writer.drain()

    def flush_replies(self) -> None:
        """Write what is held, in one write."""
        pending, self._pending = self._pending, []
        if pending and self.transport is not None:
            self._writer.write(b"".join(pending) if len(pending) > 1 else pending[0])

    async def push(self, status: Any) -> None:
        line = (status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
                if isinstance(status, str) else bytes(status))
        await self.write_reply(line)

    # -- the idle timer --
    def _reset_timeout(self, duration: float | None = None) -> None:
        """The session's deadline moves; the timer is re-armed only if it would fire late."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        handle, armed = self._timeout_handle, self._deadline
        self._deadline = deadline
        if handle is not None and not handle.cancelled() and armed <= deadline:
            return  # fires first at ``armed``, then waits out the rest
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)

    def _timeout_cb(self) -> None:
        """SEC-10: an idle or dripping client is told why before the close
        (as Postfix: 421 4.4.2)."""
        if self.loop.time() < self._deadline:  # there was activity since it was armed
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_cb)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                self.flush_replies()
                reply = f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n"
                transport.write(reply.encode())  # type: ignore[attr-defined]
            except (OSError, RuntimeError):
                pass
        # aiosmtpd leaves it unannotated
        super()._timeout_cb()  # type: ignore[no-untyped-call, unused-ignore]

    # -- commands --
    async def _handle_client(self) -> None:
        if self._proxy_timeout is not None or self._enforce_call_limit:
            await super()._handle_client()  # features the intake does not use: aiosmtpd's loop
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        self._bogus = BOGUS_LIMIT
        reader = self._reader
        while self.transport is not None:
            try:
                if self._pending and b"\n" not in buffered(reader):
                    self.flush_replies()
                try:
                    line = await reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    await self._skip_line(error.consumed)
                    await self.push("500 Command line too long")
                    continue
                await self._command(line)
            except (asyncio.CancelledError, ConnectionResetError):
                session = self.session
                log.info("%r Connection lost during _handle_client()",
                         session.peer if session else None)
                self._writer.close()
                raise
            except Exception as error:  # noqa: BLE001 - as aiosmtpd: a reply, and on
                await self._failed(error)

    async def _skip_line(self, consumed: int) -> None:
        """Read the rest of a line longer than the stream's limit."""
        await self._reader.read(consumed)
        for _ in range(1 << 20):
            try:
                await self._reader.readuntil()
                return
            except asyncio.LimitOverrunError as error:
                await self._reader.read(error.consumed)

    async def _failed(self, error: Exception) -> None:
        """A command raised: ``handle_exception``'s reply (aiosmtpd's handling)."""
        try:
            status = await self.handle_exception(error)
        except Exception as inner:
            log.exception("Exception in handle_exception()")
            status = f"500 Error: ({inner.__class__.__name__}) {inner}"
        if isinstance(error, TLSSetupException):
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(error)
        else:
            await self.push(status)

    async def _command(self, line: bytes) -> None:
        """One command line: aiosmtpd's checks and replies, then ``run_command``."""
        line = line.rstrip(b"\r\n")
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            command = ""
        if not command:
            await self.push("500 Error: bad syntax")
            return
        arg: str | None = None
        if arg_bytes:
            try:
                arg = (str(arg_bytes.strip(), "utf-8", "surrogateescape") if self.enable_SMTPUTF8
                       else str(arg_bytes.strip(), "ascii"))
            except UnicodeDecodeError:
                await self.push("500 Error: strict ASCII mode")
                return
        assert self.session is not None and self.transport is not None
        limit = (self.command_size_limits[command] if self.session.extended_smtp
                 else self.command_size_limit)
        if len(line) > limit:
            await self.push("500 Command line too long")
        elif not self._tls_handshake_okay and command != "QUIT":
            await self.push("554 Command refused due to lack of security")
        elif (self.require_starttls and not self._tls_protocol
              and command not in ALLOWED_BEFORE_STARTTLS):
            await self.push("530 Must issue a STARTTLS command first")  # RFC 3207 §4
        elif (method := self._smtp_methods.get(command)) is None:
            log.warning("%r unrecognised: %s", self.session.peer, command)
            self._bogus -= 1
            if self._bogus < 1:
                await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                self.transport.close()
            else:
                await self.push(f'500 Error: command "{command}" not recognized')
        else:
            self._reset_timeout()
            self._batch = command in BATCHED and b"\n" in buffered(self._reader)
            try:
                await self.run_command(command, method, arg)
            finally:
                self._batch = False

    async def run_command(self, command: str, method: Any, arg: str | None) -> None:
        """Run one recognised command (a subclass adds its bounds here)."""
        await method(arg)

    # -- DATA --
    async def body_piece(self, continued: bool = False) -> tuple[bytes, bool]:
        """The next piece of a DATA body, stuffed, and whether it ends the body: the rest up to
        and without ``.<CRLF>`` when the next line is surely not the lone dot (the body's
        whole when it has arrived), one ``<CRLF>`` line otherwise; ``(b"", True)`` for the
        lone dot. ``continued``: the reader is inside a line (the rest of an over-long one:
        no end of data). Raises ``LimitOverrunError`` for a line longer than the stream's
        limit (as ``readuntil``), nothing consumed."""
        reader = self._reader
        if self._bulk and not continued:
            ahead = buffered(reader)
            first = ahead[:1]
            if (first and first != b".") or (len(ahead) > 2 and ahead[:3] != b".\r\n"):
                try:
                    chunk = await reader.readuntil(END)
                    return chunk[:-3], True
                except asyncio.LimitOverrunError:
                    self._bulk = False  # beyond the read-ahead: line by line from here
        line = await reader.readuntil(b"\r\n")
        if line == b".\r\n" and not continued:
            return b"", True
        return line, False

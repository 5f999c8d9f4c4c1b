"""An aiosmtplib protocol that keeps every reply of a pipelined group (RFC 2920, SESS-16)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import aiosmtplib
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse


class PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping every reply that arrives (RFC 2920 PIPELINING).

    aiosmtplib parses one reply per read and drops data that arrives while a parsed
    reply waits for pick-up, which is right for lock-step but loses the replies to a
    pipelined group. This keeps them in order while ``expect`` says replies are
    outstanding; otherwise it behaves as aiosmtplib (unsolicited data is dropped). A
    session's protocol becomes this one after EHLO (and any STARTTLS, see ``adopt``), so
    STARTTLS still reads exactly one reply (TLS-2).
    """

    _replies: collections.deque[SMTPResponse | BaseException]
    expected: int  # replies outstanding for the group written last

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        connection_lost_callback: Callable[[SMTPProtocol], None] | None = None,
    ) -> None:
        super().__init__(loop=loop, connection_lost_callback=connection_lost_callback)
        self._replies = collections.deque()
        self.expected = 0

    def expect(self, count: int) -> None:
        """``count`` replies are outstanding (0: none, lock-step again)."""
        self.expected = count

    def data_received(self, data: bytes) -> None:
        if self._response_waiter is None or not (self._response_pending or self.expected):
            return
        self._buffer.extend(data)
        while True:
            try:
                response = self._read_response_from_buffer()
            except Exception as exc:  # noqa: BLE001 -- any malformed reply ends the session
                del self._buffer[:]
                self._hand(exc)
                return
            if response is None:
                break
            self._hand(response)
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            del self._buffer[:]
            self._hand(aiosmtplib.SMTPResponseException(500, "Response too long"))

    def _hand(self, item: SMTPResponse | BaseException) -> None:
        waiter = self._response_waiter
        if (
            self._response_pending
            and not self._replies
            and waiter is not None
            and not waiter.done()
        ):
            if isinstance(item, BaseException):
                self._set_response_exception(waiter, item)
            else:
                waiter.set_result(item)
        else:
            self._replies.append(item)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        """The next reply: one kept, else the one awaited (aiosmtplib's ``read_response``, with
        the timeout a timer on the reply's future instead of ``wait_for``'s wrapping, issue 23)."""
        if self._replies:
            item = self._replies.popleft()
            if isinstance(item, BaseException):
                raise item
            return item
        waiter = self._response_waiter
        if waiter is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._response_pending = True
        timer = None if timeout is None else self._loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._response_pending = False
            # as aiosmtplib: a new waiter for the next reply, none once disconnected
            self._response_waiter = None if self.transport is None else self._loop.create_future()


def _time_out(waiter: asyncio.Future[SMTPResponse]) -> None:
    """No reply within the timeout: what aiosmtplib raises then."""
    if not waiter.done():
        timed_out = aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
        waiter.set_exception(timed_out)


def adopt(protocol: SMTPProtocol | None) -> None:
    """Make a connected session's protocol keep pipelined replies (see ``PipeliningProtocol``)."""
    if protocol is not None and type(protocol) is SMTPProtocol:
        protocol.__class__ = PipeliningProtocol
        assert isinstance(protocol, PipeliningProtocol)
        protocol._replies = collections.deque()
        protocol.expected = 0
        if protocol.transport is not None:  # uvloop caches the protocol's bound methods: renew them
            protocol.transport.set_protocol(protocol)


__all__ = ["PipeliningProtocol", "adopt"]

"""A real authoritative DNS server on loopback for the tests (UDP and TCP).

It serves ``ZoneData`` (zone text) over the wire, on 127.0.0.x and an ephemeral
port, and can be told per name to answer SERVFAIL, drop the query (a timeout),
truncate UDP answers (TC=1, so the client must retry over TCP) or delay, and
told which names a validating resolver would call secure: their answers carry AD
(only when the query set AD or DO, as RFC 6840 §5.7 has a validating resolver
answer; TLS-7). Every query is logged. Start it as a context manager; it stops itself.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Self

import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from mxroute.dns.zonefile import ZoneData


@dataclass
class LoggedQuery:
    qname: str
    qtype: str
    transport: str  # "udp" or "tcp"
    ad: bool = False  # the query set the AD bit


@dataclass
class DNSServer:
    """Authoritative server for ``zone`` text; ``host:port`` once started."""

    zone: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    truncate: set[str] = field(default_factory=set)  # names whose UDP answers get TC=1
    delay: dict[str, float] = field(default_factory=dict)  # name -> seconds before answering
    log: list[LoggedQuery] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = ZoneData()
        if self.zone:
            self.data.load_text(self.zone)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._servers: list[socketserver.BaseServer] = []

    # --- zone control -------------------------------------------------------
    def set_zone(self, text: str) -> None:
        """Replace every record (failures, secure names and truncation settings are kept)."""
        data = ZoneData()
        data.load_text(text)
        with self._lock:
            data.failures.update(self.data.failures)
            data.secure.update(self.data.secure)
            self.data = data

    def fail(self, name: str, kind: str = "SERVFAIL", rdtype: str | None = None) -> None:
        with self._lock:
            self.data.fail(name, kind, rdtype)

    def heal(self) -> None:
        """Forget every SERVFAIL / TIMEOUT instruction."""
        with self._lock:
            self.data.failures.clear()

    def queries(self, qtype: str | None = None) -> list[tuple[str, str]]:
        return [(q.qname, q.qtype) for q in self.log if qtype is None or q.qtype == qtype]

    @property
    def secure(self) -> set[str]:
        """Names answered with AD (when the query asks); ".zone": every name under it (TLS-7)."""
        return {name for name, _ in self.data.secure}

    @secure.setter
    def secure(self, names: set[str]) -> None:
        with self._lock:
            self.data.secure.clear()
            for name in names:
                self.data.mark_secure(name)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- wire ---------------------------------------------------------------
    def respond(self, wire: bytes, transport: str) -> bytes | None:
        try:
            request = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 -- any garbage on the wire is dropped, as a server would
            return None
        question = request.question[0]
        qname = question.name.to_text(omit_final_dot=True).lower()
        self.log.append(
            LoggedQuery(
                qname,
                dns.rdatatype.to_text(question.rdtype),
                transport,
                bool(request.flags & dns.flags.AD),
            )
        )
        pause = self.delay.get(qname)
        if pause:
            time.sleep(pause)
        with self._lock:
            response = self.data.answer(request)
        if response is None:
            return None
        if transport == "udp" and qname in self.truncate:
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
        return response.to_wire(max_size=65535)

    def start(self) -> Self:
        owner = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = owner.respond(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                conn.settimeout(5)
                try:
                    while True:
                        header = _recv_exact(conn, 2)
                        if header is None:
                            return
                        body = _recv_exact(conn, struct.unpack("!H", header)[0])
                        if body is None:
                            return
                        reply = owner.respond(body, "tcp")
                        if reply is None:
                            return
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

        class UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
            daemon_threads = True
            allow_reuse_address = True

        class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        udp = UDPServer((self.host, self.port), UDPHandler)
        self.port = udp.server_address[1]
        tcp = TCPServer((self.host, self.port), TCPHandler)
        self._servers = [udp, tcp]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    chunks = b""
    while len(chunks) < n:
        chunk = conn.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks

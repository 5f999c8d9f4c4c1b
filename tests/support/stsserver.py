"""A real HTTPS server on loopback serving an MTA-STS policy file (TLS-5 tests).

    ca = TestCA(tmp_path)
    with PolicyServer("127.0.0.80", ca.server_context("mta-sts.dest.test"), POLICY) as web:
        ...MXROUTE_MTA_STS_PORT=web.port, MXROUTE_TLS_CA_FILE=ca.ca_file...
        web.requests   # [(path, host header)], one per GET
        web.sni        # server names the clients asked for

``status``, ``body``, ``content_type`` and ``headers`` may be changed between requests
(``web.status = 301; web.headers = {"Location": ...}``); ``raw`` (bytes) replaces the whole
response, written as is before the connection is closed (chunked bodies, no Content-Length).
``stop()`` closes the listener, so a later connection is refused. Runs in a daemon thread; a
context manager.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from typing import Any, Self


class PolicyServer:
    """HTTPS on ``host:port`` (port 0: ephemeral) answering every GET with the configured
    response."""

    def __init__(self, host: str, context: ssl.SSLContext, body: str = "", *, port: int = 0,
                 status: int = 200, content_type: str = "text/plain") -> None:
        self.host = host
        self.port = port
        self.context = context
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers: dict[str, str] = {}
        self.raw: bytes | None = None
        self.requests: list[tuple[str, str]] = []
        self.sni: list[str | None] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        context.sni_callback = self._sni

    def _sni(self, _sock: Any, name: str | None, _context: Any) -> None:
        self.sni.append(name)

    def start(self) -> Self:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Host", "")))
                if owner.raw is not None:
                    self.wfile.write(owner.raw)
                    self.close_connection = True
                    return
                data = owner.body.encode("utf-8")
                self.send_response(owner.status)
                if owner.content_type:
                    self.send_header("Content-Type", owner.content_type)
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

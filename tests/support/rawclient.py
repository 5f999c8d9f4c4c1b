"""``Raw``: an SMTP client that sends exact bytes and reads reply lines (hostile-client and
hardening tests, tests/faults), bounded by a socket timeout."""

from __future__ import annotations

import socket


class Raw:
    """A raw SMTP client: exact bytes out, reply lines in (bounded by a socket timeout)."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.stream = self.sock.makefile("rb")
        self.banner = self.line()

    def line(self) -> bytes:
        return self.stream.readline(65536)

    def reply(self) -> tuple[int, str]:
        """A whole (multi-line) reply: (code, last line's text); (0, "") on a closed connection."""
        text = ""
        for _ in range(1000):
            line = self.line()
            if not line:
                return 0, text
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if line[3:4] != b"-":
                return int(text[:3]), text[4:]
        raise AssertionError("endless multi-line reply")

    def cmd(self, data: bytes) -> tuple[int, str]:
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\r\n")
        return self.reply()

    def closed(self, timeout: float) -> tuple[bool, bytes]:
        """Wait up to ``timeout`` for the server to close; (closed, whatever it said first)."""
        self.sock.settimeout(timeout)
        said = b""
        try:
            for _ in range(100):
                chunk = self.sock.recv(4096)
                if not chunk:
                    return True, said
                said += chunk
        except TimeoutError:
            return False, said
        except OSError:
            return True, said
        return False, said

    def close(self) -> None:
        try:
            self.stream.close()
            self.sock.close()
        except OSError:
            pass

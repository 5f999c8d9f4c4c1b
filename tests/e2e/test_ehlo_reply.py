"""The intake's multi-line replies reach the client in one write (issue 13 item 5).

A client that reads once after sending EHLO (sslscan, many probes) must find the whole reply:
every extension line, STARTTLS when TLS is configured, and the final ``250 `` line. Checklist:
TLS-4 (the intake's STARTTLS, which such a client otherwise misses), SEC-8 (AUTH only inside
TLS), the multi-line reply form of SESS-5 (RFC 5321 §4.2.1). Postfix writes the reply in one
segment; so does mxroute. Segments are counted without strace: Linux's
``TCP_INFO`` ``tcpi_data_segs_in`` on the client's socket (Linux 4.6+).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import pytest

from mxroute.relay.intake.auth import hash_password
from tests.support.relay import Relay, World
from tests.support.smtpsink import tls_available, tls_files

EXTENSIONS = ("SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "DSN")
_DATA_SEGS_IN = 152  # offsetof(struct tcp_info, tcpi_data_segs_in), linux/tcp.h


def data_segments_in(sock: socket.socket) -> int:
    """Segments carrying data this socket has received (TCP_INFO), for counting writes."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _DATA_SEGS_IN + 4:
        pytest.skip("TCP_INFO has no tcpi_data_segs_in on this kernel")
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


def tls_relay(world: World, tmp_path: Path) -> Relay:
    if not tls_available():
        pytest.skip("the cryptography package is needed to make a test certificate")
    cert, key = tls_files()
    creds = tmp_path / "credentials"
    creds.write_text(f"alice:{hash_password('s3cret')}\n")
    return world.relay(tls_cert_file=str(cert), tls_key_file=str(key),
                       auth_credentials_file=str(creds))


def read_once(sock: socket.socket, command: bytes) -> tuple[list[str], int]:
    """Send ``command``, then exactly ONE recv: (the reply's lines, data segments it came in)."""
    before = data_segments_in(sock)
    sock.sendall(command)
    data = sock.recv(65536)
    lines = data.decode("ascii").split("\r\n")
    assert lines[-1] == "", f"the reply ends mid-line: {data!r}"
    return lines[:-1], data_segments_in(sock) - before


def assert_nothing_more(sock: socket.socket) -> None:
    """A second recv finds nothing: the first one had the whole reply."""
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.recv(65536)
    sock.settimeout(10)


def assert_complete(lines: list[str], *expected: str) -> None:
    assert lines, "no reply"
    assert all(line.startswith("250-") for line in lines[:-1]), lines
    assert lines[-1].startswith("250 "), f"one read missed the final line: {lines}"
    keywords = {line[4:].split(" ")[0] for line in lines[1:]}
    missing = [word for word in (*EXTENSIONS, *expected) if word not in keywords]
    assert not missing, f"one read missed {missing}: {lines}"


def test_ehlo_reply_in_one_segment_with_starttls(world: World, tmp_path: Path) -> None:
    """Issue 13 item 5: one recv after EHLO holds every extension, STARTTLS and the final
    ``250 `` line; it came in ONE segment and a second recv finds nothing."""
    relay = tls_relay(world, tmp_path)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        assert sock.recv(1024).startswith(b"220 ")
        lines, segments = read_once(sock, b"EHLO client.test\r\n")
        assert_complete(lines, "STARTTLS")
        assert "AUTH" not in {line[4:8] for line in lines}  # SEC-8: not before TLS
        assert_nothing_more(sock)
        assert segments == 1, f"the EHLO reply came in {segments} segments"
        # HELO is one line; a second EHLO (RFC 5321 §4.1.4) is again one write
        lines, segments = read_once(sock, b"EHLO again.test\r\n")
        assert_complete(lines, "STARTTLS")
        assert segments == 1


def test_ehlo_reply_inside_tls_in_one_read(world: World, tmp_path: Path) -> None:
    """Issue 13 item 5 inside TLS: after STARTTLS, one read of the EHLO reply holds AUTH
    (SEC-8) and the final line; it came in one TLS record and one segment."""
    relay = tls_relay(world, tmp_path)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.test\r\n")
        for _ in range(30):
            if reader.readline()[3:4] == b" ":
                break
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 ")
        with context.wrap_socket(raw, server_hostname="relay.test") as tls:
            # a round trip first: TLS 1.3 session tickets arrive before its reply, not in the count
            tls.sendall(b"NOOP\r\n")
            assert tls.recv(1024).startswith(b"250 ")
            lines, segments = read_once(tls, b"EHLO client.test\r\n")
            assert_complete(lines, "AUTH")
            assert "STARTTLS" not in lines[-1] and "250-STARTTLS" not in lines
            assert_nothing_more(tls)
            assert segments == 1, f"the EHLO reply came in {segments} segments"


SSLSCAN = shutil.which("sslscan")


@pytest.mark.interop
def test_sslscan_finds_starttls_and_modern_tls_only(world: World, tmp_path: Path) -> None:
    """Issue 13 item 5 interop: ``sslscan --starttls-smtp`` (which reads the EHLO reply once)
    finds STARTTLS; TLS 1.2 and 1.3 enabled, 1.0 and 1.1 disabled (TLS-4's intake side)."""
    if SSLSCAN is None:
        if os.environ.get("CI") == "true":
            pytest.fail("sslscan must be installed in CI (.ci/run installs it)")
        pytest.skip("sslscan is not installed (Debian package sslscan); CI installs it")
    relay = tls_relay(world, tmp_path)
    done = subprocess.run([SSLSCAN, "--no-colour", "--starttls-smtp", "--no-cipher-details",
                           "--no-ciphersuites", "--no-groups", "--no-heartbleed",
                           "--no-renegotiation", "--no-compression", "--no-fallback",
                           f"127.0.0.1:{relay.port}"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"})
    out = done.stdout + done.stderr
    assert "did not appear to support STARTTLS" not in out, out
    assert "Testing SSL server 127.0.0.1" in out, out  # STARTTLS found, TLS up
    versions = re.findall(r"^(SSLv[23]|TLSv1\.[0-3])\s+(enabled|disabled)", out, re.MULTILINE)
    assert dict(versions) == {"SSLv2": "disabled", "SSLv3": "disabled", "TLSv1.0": "disabled",
                              "TLSv1.1": "disabled", "TLSv1.2": "enabled",
                              "TLSv1.3": "enabled"}, out

"""Checklist rules through the real `mxroute serve` that the other e2e files do not cover.

SEC-4 (no open relay at start-up), TLS-4 (STARTTLS discards pipelined plaintext),
DUR-9 (slow DNS never delays the 250), MX-18 (each retry re-resolves), RTY-4 (a dead
host costs O(1) connections per cycle, not one per message), SPF-14 (no
Received-SPF / Authentication-Results added), SESS-20 (content untouched: a DKIM
signature made before the relay still verifies after it).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.relay import MSG, ROOT, World, wait_for


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mxroute", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_sec4_open_relay_configuration_refused_at_start(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    """SEC-4: 0.0.0.0/0 or ::/0 in relay_networks → exit 78 with one line, unless
    allow_open_relay."""
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MXROUTE_SPOOL_DIR": str(tmp_path / "spool"),
           "MXROUTE_LISTEN": '["127.0.0.1:0"]',
           # check-config looks the HELO name up (issue 15 C2): on loopback only
           "MXROUTE_DNS_SERVERS": f'["{dns_server.address}"]'}
    for network in ("0.0.0.0/0", "::/0"):
        env["MXROUTE_RELAY_NETWORKS"] = f'["{network}"]'
        for command in (["check-config"], ["serve"]):
            done = _run(command, env)
            assert done.returncode == 78, (command, done.stdout, done.stderr)
            assert "open relay" in done.stderr and "Traceback" not in done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
    env["MXROUTE_ALLOW_OPEN_RELAY"] = "true"
    assert _run(["check-config"], env).returncode == 0


def test_sec4_default_listens_on_loopback_only() -> None:
    from mxroute.settings import Settings

    assert Settings().listen == ["127.0.0.1:2525"]


def test_tls4_starttls_discards_pipelined_plaintext(world: World) -> None:
    """TLS-4 (CVE-2024-34083 class): `STARTTLS\\r\\nNOOP\\r\\n` in one write: no NOOP reply
    inside TLS."""
    from tests.support.smtpsink import tls_available, tls_files

    if not tls_available():
        pytest.skip("the cryptography package is needed to make a test certificate")
    cert, key = tls_files()
    relay = world.relay(tls_cert_file=str(cert), tls_key_file=str(key))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        raw.sendall(b"EHLO client.test\r\n")
        for _ in range(30):
            line = reader.readline()
            if line[3:4] == b" ":
                break
        raw.sendall(b"STARTTLS\r\nNOOP\r\n")
        reply = reader.readline()
        assert reply.startswith(b"220"), reply
        # Whatever the server does with the injected NOOP, its reply must not arrive inside TLS.
        with context.wrap_socket(raw, server_hostname="relay.test") as tls:
            tls.settimeout(1.0)
            try:
                early = tls.recv(1000)
            except TimeoutError:
                early = b""
            assert early == b"", (
                f"plaintext injected before the handshake was answered inside TLS: {early!r}"
            )
            tls.settimeout(10)
            tls.sendall(b"EHLO client.test\r\n")
            assert tls.recv(1000).startswith(b"250")


def test_dur9_slow_dns_never_delays_the_250(world: World) -> None:
    """DUR-9: every DNS answer delayed 3 s; the time from "." to 250 stays well under it."""
    world.sink(1)
    relay = world.relay()
    for name in ("dest.test", "mx1.dest.test", "sender.test", "mx.sender.test", "_spf.sender.test"):
        world.dns.delay[name] = 3.0
    latencies = []
    with relay.client() as client:
        for n in range(5):
            client.mail(f"a{n}@sender.test")
            client.rcpt("u@dest.test")
            started = time.monotonic()
            code, _ = client.data(MSG)
            latencies.append(time.monotonic() - started)
            assert code == 250
    assert max(latencies) < 1.5, latencies


def test_mx18_each_retry_resolves_the_mx_again(world: World) -> None:
    """MX-18: the first attempt meets a 4xx at mx1; the zone then moves dest to mx2; the retry
    goes there."""
    first = world.sink(1, replies={"RCPT": "451 4.3.0 try later"})
    second = world.sink(2)
    relay = world.relay(retry_min_seconds=1, retry_max_seconds=1)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: first.connections, timeout=10)
    world.zone(f"dest IN MX 10 mx2.dest.test.\nmx2.dest IN A {world.ip(2)}\n"
               f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(9)}\n")
    time.sleep(1.2)  # the zone's TTL is 1 s: the cached MX expires
    assert relay.queue("flush").returncode == 0
    assert wait_for(lambda: second.messages, timeout=20), relay.log()
    assert first.messages == []
    assert wait_for(lambda: relay.queued() == [])


def test_rty4_a_dead_host_costs_few_connections_per_cycle(world: World) -> None:
    """RTY-4: 30 messages for a host answering 421 at the greeting: far fewer connections than
    messages."""
    dead = world.sink(1, replies={"GREETING": "421 4.3.2 down"})
    relay = world.relay(retry_min_seconds=60, retry_max_seconds=120)
    with relay.client() as client:
        for n in range(30):
            client.sendmail(f"a{n}@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: relay.log().count("status=deferred") >= 30, timeout=30), relay.log()
    time.sleep(0.5)
    connects = len(dead.connections)
    print(f"RTY-4: 30 messages for a dead host -> {connects} connections in the first cycle")
    assert connects <= 2, (
        connects
    )  # first contact is one connection at a time until the host answers
    assert len(relay.queued()) == 30


def test_spf14_no_authentication_headers_added(world: World) -> None:
    """SPF-14: an outbound relay adds Received: only; no Received-SPF or Authentication-Results."""
    sink = world.sink(1)
    relay = world.relay(egress_ips=["127.0.0.1"], sender_domain="sender.test")
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    head = sink.messages[0].data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"received-spf:" not in head and b"authentication-results:" not in head
    assert head.count(b"received:") == 1


def test_sess20_dkim_signature_survives_the_relay(world: World) -> None:
    """SESS-20: the relay changes nothing but prepending Received:, so DKIM still verifies at the
    MX."""
    dkim = pytest.importorskip("dkim", reason="dkimpy is a test dependency")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import base64

    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    body = (b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: signed\r\n"
            b"Message-ID: <dkim@sender.test>\r\n\r\n"
            b"line one  with  spaces \r\n.leading dot\r\n\r\n\r\ntail\t\r\n")
    signature = dkim.sign(
        body,
        b"sel",
        b"sender.test",
        private,
        canonicalize=(b"simple", b"simple"),
        include_headers=[b"from", b"to", b"subject", b"message-id"],
    )
    signed = signature + body
    sink = world.sink(1)
    relay = world.relay()
    relay.send("a@sender.test", ["u@dest.test"], signed)
    assert wait_for(lambda: sink.messages)
    received = sink.messages[0].data

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.sender.test."
        return txt

    assert dkim.verify(received, dnsfunc=dnsfunc), received[:400]

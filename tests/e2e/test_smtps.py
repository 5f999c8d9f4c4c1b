"""Issue 17: implicit TLS on a submissions port (RFC 8314 §3.3), ``listen = ["smtps://..."]``,
through the real ``mxroute serve``: TLS before the greeting, AUTH offered at once and no
STARTTLS, a reload's new certificate served there too, and no certificate: a clear error."""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from mxroute.relay.intake.auth import hash_password
from tests.support.relay import ROOT, World, free_port, service_env
from tests.support.smtpsink import tls_available, tls_files
from tests.support.tlsca import TestCA


def served_certificate(port: int) -> bytes:
    """The DER certificate the listener on ``port`` presents (not verified)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        assert tls.recv(100).startswith(b"220 ")  # the greeting comes over TLS
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_smtps_listener_greets_over_tls_offers_auth_and_takes_a_reloaded_certificate(
        world: World, tmp_path: Path) -> None:
    """TLS first, then ``220``; EHLO offers AUTH and not STARTTLS; AUTH then relaying works; after
    SIGHUP with a new certificate in the same files, port 465 presents the new one."""
    if not tls_available():
        pytest.skip("the cryptography package is needed to make a test certificate")
    sink = world.sink(1)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for made, copy in zip(tls_files(), (cert, key), strict=True):
        shutil.copy(made, copy)
    creds = tmp_path / "credentials"
    creds.write_text(f"app:{hash_password('app-secret')}\n")
    port, smtps = free_port(), free_port()
    relay = world.relay(port, tls_cert_file=str(cert), tls_key_file=str(key),
                        auth_credentials_file=str(creds), relay_networks=["127.0.0.254/32"],
                        listen=[f"127.0.0.1:{port}", f"smtps://127.0.0.1:{smtps}"])
    assert "(implicit TLS, RFC 8314)" in relay.logged("implicit TLS")
    before = served_certificate(smtps)
    context = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP_SSL("127.0.0.1", smtps, context=context, timeout=20) as client:
        code, features = client.ehlo("client.test")
        assert code == 250 and b"AUTH LOGIN PLAIN" in features and b"STARTTLS" not in features
        client.login("app", "app-secret")
        client.sendmail("a@sender.test", ["u@dest.test"], b"Subject: smtps\r\n\r\nover 465\r\n")
    assert sink.wait(lambda s: len(s.messages) == 1, timeout=20)
    assert b"with ESMTPSA" in (sink.messages[0].data or b"")
    new_cert, new_key = TestCA(tmp_path / "ca").leaf_files("relay.test")
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    relay.logged("reload done")
    after = served_certificate(smtps)
    assert after != before
    assert ssl.DER_cert_to_PEM_cert(after).strip() == new_cert.read_text().strip()


def test_smtps_listener_without_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    env = dict(service_env(), MXROUTE_LISTEN='["smtps://127.0.0.1:4650"]',
               MXROUTE_SPOOL_DIR=str(tmp_path / "spool"))
    done = subprocess.run([sys.executable, "-m", "mxroute", "serve"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 78, done.stderr
    assert ("listen smtps://127.0.0.1:4650 (implicit TLS) needs tls_cert_file and tls_key_file"
            in done.stderr), done.stderr
    assert "Traceback" not in done.stderr

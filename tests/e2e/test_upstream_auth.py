"""issue 16 §1 through the real ``serve`` and CLI: a ``routes`` rule with ``auth`` sends mail to
an upstream that requires AUTH (``mxroute serve`` itself with ``auth_credentials_file``, and an
implicit-TLS aiosmtpd listener for ``smtps://``); a wrong password is a deferral showing the
upstream's ``535`` in ``mxroute queue show``, never a bounce; ``check-config`` names an unusable
``password_file``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT
from tests.support.relay import MSG, Relay, World, free_port, wait_for
from tests.support.smtpsink import Sink, tls_available
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.skipif(
    not tls_available(), reason="the cryptography package is needed for certificates"
)

USER = "relay-user"
SECRET = "s3cret-upstream-Password"


def secret_file(tmp: Path, secret: str = SECRET) -> Path:
    path = tmp / "upstream.secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def relay_in(world: World, name: str, **settings: Any) -> Relay:
    """A ``serve`` of its own (spool and log under ``name``), stopped with the world."""
    (world.tmp / name).mkdir(parents=True, exist_ok=True)
    relay = Relay(world.tmp / name, world.dns, world.sink_port, **settings).start()
    world.relays.append(relay)
    return relay


def upstream(world: World, ca: TestCA) -> Relay:
    """``mxroute serve`` as the upstream: STARTTLS with a certificate for hop.test, AUTH required
    of every client but 127.0.0.9 (so of the relay under test), delivering to the sink of
    dest.test's MX."""
    from mxroute.relay.intake.auth import hash_password

    cert, key = ca.leaf_files("hop.test")
    creds = world.tmp / "credentials"
    creds.write_text(f"{USER}:{hash_password(SECRET)}\n")
    return relay_in(world, "upstream", relay_networks=["127.0.0.9/32"], tls_cert_file=str(cert),
                    tls_key_file=str(key), auth_credentials_file=str(creds))


def routed_relay(world: World, ca: TestCA, next_hop: str, password_file: Path,
                 **settings: Any) -> Relay:
    """The relay under test: dest.test routed to ``next_hop`` with AUTH as USER."""
    return relay_in(world, "relay", tls_ca_file=str(ca.ca_file),
                    routes=[{"match": "dest.test", "next_hop": next_hop,
                             "auth": {"username": USER, "password_file": str(password_file)}}],
                    **settings)


def zone(world: World) -> None:
    world.zone(f"dest IN MX 10 mx.dest.test.\nmx.dest IN A {world.ip(1)}\n"
               "hop IN A 127.0.0.1\n")


def no_secret(text: str) -> None:
    for form in (SECRET, base64.b64encode(f"\0{USER}\0{SECRET}".encode()).decode(),
                 base64.b64encode(SECRET.encode()).decode()):
        assert form not in text


def test_routed_mail_is_delivered_through_an_upstream_requiring_auth(world: World) -> None:
    """issue 16 §1: message queued at the relay → sent to the upstream ``mxroute serve`` over
    STARTTLS (verified for hop.test) with AUTH → delivered by the upstream to the MX; the
    secret is in no log line."""
    zone(world)
    ca = TestCA(world.tmp / "ca")
    mx = world.sink(1)
    up = upstream(world, ca)
    relay = routed_relay(world, ca, f"[hop.test]:{up.port}", secret_file(world.tmp))
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: mx.messages, timeout=30)
    assert b"with ESMTPSA" in mx.messages[0].data  # the upstream took it authenticated
    log = relay.logged("status=sent")
    assert f"relay=hop.test[127.0.0.1]:{up.port}" in log and "/verified" in log, log
    assert wait_for(lambda: relay.queued() == [])
    no_secret(relay.log() + up.log())


def test_wrong_password_defers_with_535_in_queue_show_and_never_bounces(world: World) -> None:
    """issue 16 §1: the upstream refuses the login (535): the message stays queued, deferred
    (4.7.8) with the upstream's reply in ``mxroute queue show`` and the log; no bounce is
    sent, nothing reaches the MX."""
    zone(world)
    ca = TestCA(world.tmp / "ca")
    mx = world.sink(1)
    up = upstream(world, ca)
    relay = routed_relay(world, ca, f"[hop.test]:{up.port}",
                         secret_file(world.tmp, "wrong-" + SECRET))
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    log = relay.logged("status=deferred", "535 5.7.8")
    assert "dsn=4.7.8" in log and "said: 535 5.7.8" in log, log
    [queue_id] = relay.queued()
    shown = wait_for(lambda: (s := relay.queue("show", queue_id[:12]).stdout) and "535" in s
                     and s, timeout=15)
    assert shown and "535 5.7.8" in shown, shown
    data = json.loads(relay.queue("show", queue_id[:12], "--json").stdout)
    assert "535 5.7.8" in json.dumps(data)
    assert "bounced" not in relay.log() and mx.messages == []
    no_secret(relay.log() + shown)
    assert "wrong-" not in relay.log() + shown


def test_smtps_next_hop_with_auth_delivers_over_implicit_tls(world: World) -> None:
    """issue 16 §1, RFC 8314: ``smtps://hop.test:PORT`` with AUTH: TLS from the first byte
    (no STARTTLS), verified for hop.test, then AUTH PLAIN and the message."""
    zone(world)
    ca = TestCA(world.tmp / "ca")
    sink = Sink("127.0.0.1", free_port(), implicit_tls=True, auth={USER: SECRET})
    sink.tls_context = ca.server_context("hop.test")
    sink.start()
    world.sinks.append(sink)
    relay = routed_relay(world, ca, f"smtps://hop.test:{sink.port}", secret_file(world.tmp))
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages, timeout=30)
    conn = sink.connections[0]
    assert conn.tls and "STARTTLS" not in conn.commands and conn.auth == [("PLAIN", USER, True)]
    log = relay.logged("status=sent")
    assert f"relay=hop.test[127.0.0.1]:{sink.port}" in log, log


def test_unreadable_password_file_defers_naming_the_file(world: World) -> None:
    """issue 16 §1: a password_file that is missing: a warning at start naming the rule and
    the file; the mail is deferred (4.3.5), the log names the file; the upstream is not
    contacted."""
    zone(world)
    ca = TestCA(world.tmp / "ca")
    up = upstream(world, ca)
    missing = world.tmp / "nowhere" / "upstream.secret"
    relay = routed_relay(world, ca, f"[hop.test]:{up.port}", missing)
    started = relay.logged("routes rule 1 (dest.test): password_file")
    assert f"password_file {missing}: cannot read" in started and "deferred until" in started
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    log = relay.logged("status=deferred")
    assert f"password_file {missing}: cannot read" in log and "dsn=4.3.5" in log, log
    assert "AUTH" not in up.log()


def check_config(tmp: Path, password_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MXROUTE_", "PYTHON"))}
    config = tmp / "mxroute.toml"
    config.write_text(f'spool_dir = "{tmp / "spool"}"\nhelo_name = "relay.test"\n'
                      '[[routes]]\nmatch = "*"\nnext_hop = "[hop.test]:587"\n'
                      f'auth = {{ username = "{USER}", password_file = "{password_file}" }}\n')
    env.update({"PYTHONPATH": str(ROOT), "MXROUTE_DNS_TIMEOUT": "0.5"})
    return subprocess.run([sys.executable, "-m", "mxroute", "check-config", "--config",
                           str(config), "--dns", "127.0.0.1:9"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60, check=False)


def test_check_config_reports_an_unusable_password_file(tmp_path: Path) -> None:
    """issue 16 §1: ``check-config`` exits 78 naming the rule and the password_file that cannot
    be read (missing, a directory, empty); a readable one passes, and its secret is not
    printed."""
    for path, why in [(tmp_path / "missing", "cannot read"),
                      (tmp_path, "cannot read"),
                      (secret_file(tmp_path, ""), "is empty")]:
        done = check_config(tmp_path, path)
        assert done.returncode == 78, done
        assert done.stderr.startswith("mxroute: configuration error: setting routes"), done.stderr
        assert f"rule 1 (*): password_file {path}" in done.stderr and why in done.stderr
    good = secret_file(tmp_path)
    done = check_config(tmp_path, good)
    assert done.returncode == 0, done.stderr
    no_secret(done.stdout + done.stderr)

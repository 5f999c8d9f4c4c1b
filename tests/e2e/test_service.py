"""`mxroute serve` as a service (issue 5), through the real program.

sd_notify: the test binds its own AF_UNIX datagram socket, passes it as
NOTIFY_SOCKET and reads what the relay tells systemd (READY=1, RELOADING=1 with
MONOTONIC_USEC, STATUS=, STOPPING=1). SIGHUP reloads; SIGTERM stops. Socket
activation passes a pre-bound listener as fd 3 (LISTEN_FDS/LISTEN_PID), once by
a small exec wrapper and once by systemd's own systemd-socket-activate. The
Prometheus endpoint is scraped over loopback; the event log is checked line by
line; Debian's bsd-mailx `mail` submits through `mxroute sendmail`.

Every wait is bounded; every process started here is stopped here (by PID).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.relay import MSG, ROOT, Relay, World, free_port, rcpt_script, scrape, wait_for

IN_CI = os.environ.get("CI") == "true"


def need_tool(name: str) -> str:
    """The tool's path; skip with a reason when it is missing outside CI (in CI: fail)."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed: .ci/run installs it")
        pytest.skip(
            f"{name} is not installed here "
            f"(apt-get install -y {'bsd-mailx' if name == 'mail' else 'systemd'})"
        )
    return path


# --- the test's side of sd_notify -----------------------------------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mxn-", dir="/tmp")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[tuple[float, dict[str, str]]] = []  # (monotonic time, fields)

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _read(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except (TimeoutError, BlockingIOError):
            return None
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        self.received.append((time.monotonic(), fields))
        return fields

    def wait(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        """The next datagram holding ``key`` (=``value``); fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for _ in range(10000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            fields = self._read(left)
            if fields is not None and key in fields and (value is None or fields[key] == value):
                return fields
        pytest.fail(
            f"no {key}{'=' + value if value else ''} from the relay within {timeout} s; "
            f"got {self.received}"
        )

    def drain(self) -> None:
        for _ in range(1000):
            if self._read(0.001) is None:
                return


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def spawn(world: World, relay: Relay, argv: list[str] | None = None, cwd: Path = ROOT,
          **popen: Any) -> Relay:
    """Start the relay process without waiting for its port (the test decides what "ready"
    means)."""
    with open(relay.log_path, "ab") as log:
        relay.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "mxroute", "serve"],
            cwd=cwd,
            env=relay.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            **popen,
        )
    world.relays.append(relay)  # the world fixture kills it by PID if the test did not stop it
    return relay


def banner(port: int, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        return sock.recv(200)


def write_config(path: Path, **values: Any) -> None:
    path.write_text("".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items()))


# --- readiness, reload, stop ----------------------------------------------------------------------


def test_ready_only_once_the_port_accepts_then_status(world: World, notify: NotifySocket) -> None:
    """READY=1 is sent after the listener is bound: a connection made the moment it arrives gets
    the 220 greeting. STATUS= tells the queue and connection counts (or that the queue is still
    being recovered, and then the counts)."""
    relay = Relay(world.tmp, world.dns, world.sink_port)
    relay.env["NOTIFY_SOCKET"] = notify.path
    spawn(world, relay)
    ready = notify.wait("READY", "1")
    assert banner(relay.port).startswith(b"220 relay.test")  # no retry: it must accept now
    counts = "queue: 0 active, 0 deferred; 0 connections"
    # issue 23: intake is ready before the delivery process has read the queue; STATUS= says so,
    # then tells the counts once it has (the next update, at most STATUS_INTERVAL = 5 s later)
    if ready.get("STATUS") != counts:
        assert ready.get("STATUS") == "recovering the queue; 0 connections"
        notify.wait("STATUS", counts, timeout=15.0)
    assert relay.proc is not None and relay.proc.poll() is None
    assert "mxroute ready" in relay.logged("mxroute ready")
    assert relay.terminate() == 0


def test_sighup_reloads_relay_networks_and_limits_with_mail_flowing(
    world: World, notify: NotifySocket
) -> None:
    """SIGHUP re-reads the configuration file: a client on 127.0.0.7 refused before (SEC-3) is
    accepted after, max_recipients (SEC-9) applies at once, an SMTP session opened before the
    reload finishes its transaction, and mail keeps flowing. systemd hears RELOADING=1 with
    MONOTONIC_USEC, then READY=1. A setting that needs a restart is named in a warning and kept;
    a broken file is logged and the running configuration kept."""
    sink = world.sink(1)
    config = world.tmp / "mxroute.toml"
    write_config(config, relay_networks=["127.0.0.1/32"], max_recipients=10)
    relay = Relay(world.tmp, world.dns, world.sink_port)
    relay.env["MXROUTE_CONFIG"] = str(config)
    relay.env["NOTIFY_SOCKET"] = notify.path
    spawn(world, relay)
    notify.wait("READY", "1")

    with relay.client(source="127.0.0.7") as outsider:
        outsider.mail("a@sender.test")
        code, reply = outsider.rcpt("u@dest.test")
        assert (code, reply[:5]) == (554, b"5.7.1")

    survivor = relay.client()  # an open session across the reload
    survivor.mail("a@sender.test")
    assert survivor.rcpt("early@dest.test")[0] == 250

    metrics_port = free_port()
    write_config(
        config,
        relay_networks=["127.0.0.1/32", "127.0.0.7/32"],
        max_recipients=2,
        dns_attempts=3,
        metrics_listen=f"127.0.0.1:{metrics_port}",
    )
    assert relay.proc is not None
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    relay.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait("RELOADING", "1")
    assert (
        before
        <= int(reloading["MONOTONIC_USEC"])
        <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    )
    notify.wait("READY", "1")
    log = relay.logged("reload done", "metrics_listen changed")
    assert "reload done: applied relay_networks, max_recipients, dns_attempts" in log, (
        log
    )  # a fresh resolver
    assert (
        "WARNING mxroute.service.daemon: reload: metrics_listen changed but needs a restart "
        "(systemctl restart mxroute)"
        in log
    ), log
    with pytest.raises(OSError):
        banner(metrics_port)  # kept: no endpoint until a restart

    assert (
        survivor.rcpt("late@dest.test")[0] == 250
    )  # the policy is checked afresh, the session lives on
    assert survivor.data(MSG)[0] == 250
    survivor.quit()
    with relay.client(source="127.0.0.7") as insider:
        insider.mail("a@sender.test")
        assert [insider.rcpt(f"r{i}@dest.test")[0] for i in range(3)] == [
            250,
            250,
            452,
        ]  # max_recipients=2
        assert insider.data(MSG)[0] == 250
    assert wait_for(lambda: len(sink.messages) == 2)
    assert sorted(r for m in sink.messages for r in m.rcpt_to) == [
        "early@dest.test",
        "late@dest.test",
        "r0@dest.test",
        "r1@dest.test",
    ]

    config.write_text("relay_networks = [\n")  # not TOML
    relay.proc.send_signal(signal.SIGHUP)
    notify.wait("RELOADING", "1")
    notify.wait("READY", "1")
    assert wait_for(lambda: "reload failed" in relay.log(), timeout=5)
    assert "still running with the previous configuration" in relay.log()
    write_config(
        config, relay_networks=["127.0.0.1/32"], max_recipients="many"
    )  # TOML, but invalid
    relay.proc.send_signal(signal.SIGHUP)
    notify.wait("READY", "1")
    assert wait_for(lambda: "setting max_recipients" in relay.log(), timeout=5)
    with relay.client(source="127.0.0.7") as insider:  # still the last good configuration
        insider.mail("a@sender.test")
        assert insider.rcpt("u@dest.test")[0] == 250
    assert relay.proc.poll() is None
    assert relay.terminate() == 0


def test_watchdog_pings_and_journald_priorities(world: World, notify: NotifySocket) -> None:
    """WatchdogSec= (WATCHDOG_USEC): WATCHDOG=1 every half interval while the event loop runs.
    With stdout connected to journald (JOURNAL_STREAM), each line is "<priority>logger: message"
    (sd-daemon(3) prefixes): journald keeps the level and adds time and PID itself."""
    relay = Relay(world.tmp, world.dns, world.sink_port, relay_networks=["127.0.0.1/32"])
    relay.env.update(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000", JOURNAL_STREAM="8:4242")
    spawn(world, relay)
    notify.wait("READY", "1")
    started = time.monotonic()
    for _ in range(3):
        notify.wait("WATCHDOG", "1", timeout=5)
    assert time.monotonic() - started < 3
    with relay.client(source="127.0.0.9") as client:
        client.mail("a@sender.test")
        assert client.rcpt("u@dest.test")[0] == 554
    assert relay.terminate() == 0
    lines = relay.log().splitlines()
    assert f"<6>mxroute.service.daemon: listening on 127.0.0.1:{relay.port}" in lines
    assert any(
        line.startswith("<6>mxroute.relay.intake.handler: reject: RCPT from 127.0.0.9")
        for line in lines
    )
    assert all(re.match(r"<[2-7]>[\w.]+: ", line) for line in lines), lines


def test_sigterm_sends_stopping_exits_0_and_keeps_queued_mail(
    world: World, notify: NotifySocket
) -> None:
    """DUR-8: a deferred message shows in STATUS=; SIGTERM → STOPPING=1, exit 0, the message
    still in the spool, pending, and `mxroute queue list` shows it after the stop."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 try later")
    relay = Relay(
        world.tmp, world.dns, world.sink_port, retry_min_seconds=300, retry_max_seconds=600
    )
    relay.env["NOTIFY_SOCKET"] = notify.path
    spawn(world, relay)
    notify.wait("READY", "1")
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    notify.wait("STATUS", "queue: 0 active, 1 deferred; 0 connections", timeout=15)
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGTERM)
    notify.wait("STOPPING", "1", timeout=10)
    assert relay.proc.wait(timeout=15) == 0
    (queue_id,) = relay.queued()
    shown = json.loads(relay.queue("show", queue_id, "--json").stdout)
    assert [r["state"] for r in shown["recipients"]] == ["pending"]
    assert queue_id in relay.queue("list").stdout


# --- socket activation ----------------------------------------------------------------------------

# Put the passed socket at fd 3 and exec mxroute in the same process, so LISTEN_PID is its own PID.
EXEC_WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'mxroute', 'serve'])\n"
)


def test_delivery_process_runs_the_relays_own_code_whatever_the_directory(
    world: World, notify: NotifySocket
) -> None:
    """The delivery process imports the mxroute the relay runs, never one in the directory
    `serve` was started from (a checkout, a home directory holding an `mxroute/` folder): here a
    decoy package in the working directory that would stop any process importing it."""
    sink = world.sink(1)
    decoy = world.tmp / "cwd"
    (decoy / "mxroute").mkdir(parents=True)
    (decoy / "mxroute" / "__init__.py").write_text('raise SystemExit("decoy mxroute imported")\n')
    relay = Relay(world.tmp, world.dns, world.sink_port)
    relay.env["NOTIFY_SOCKET"] = notify.path
    entry = Path(sys.executable).with_name("mxroute")  # the console script, as systemd runs it
    spawn(world, relay, [str(entry), "serve"], cwd=decoy)
    notify.wait("READY", "1")
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages, timeout=20)
    assert "decoy" not in relay.log()
    assert relay.terminate() == 0


def test_socket_activation_with_a_prebound_listener(world: World, notify: NotifySocket) -> None:
    """LISTEN_FDS/LISTEN_PID (sd_listen_fds(3)): the relay serves on the socket it was given, not on
    `listen`; mail accepted there is delivered; READY=1 comes once it accepts."""
    sink = world.sink(1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    relay = Relay(world.tmp, world.dns, world.sink_port)  # its `listen` port is never bound
    relay.env["NOTIFY_SOCKET"] = notify.path
    try:
        spawn(world, relay, [sys.executable, "-c", EXEC_WRAPPER, str(listener.fileno())],
              pass_fds=(listener.fileno(),))
    finally:
        listener.close()  # the relay has its own copy
    notify.wait("READY", "1")
    assert banner(port).startswith(b"220 relay.test")
    with pytest.raises(OSError):
        banner(relay.port)
    relay.port = port
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert f"listening on 127.0.0.1:{port} (socket activation)" in relay.logged("listening on")
    assert relay.terminate() == 0


def test_socket_activation_by_systemd_socket_activate(world: World, notify: NotifySocket) -> None:
    """The same through systemd's own tool: it binds, waits for the first connection, then execs the
    relay with LISTEN_FDS=1 and LISTEN_PID set; that first client is served."""
    tool = need_tool("systemd-socket-activate")
    sink = world.sink(1)
    port = free_port()
    relay = Relay(world.tmp, world.dns, world.sink_port)
    relay.env["NOTIFY_SOCKET"] = notify.path
    passed = [name for name in relay.env if name.startswith("MXROUTE_")] + [
        "PYTHONPATH",
        "NOTIFY_SOCKET",
        "PATH",
    ]
    argv = [tool, f"--listen=127.0.0.1:{port}", *(f"--setenv={name}" for name in passed),
            sys.executable, "-m", "mxroute", "serve"]
    spawn(world, relay, argv)
    assert wait_for(lambda: _connects(port), timeout=10), relay.log()
    relay.port = port
    relay.send("a@sender.test", ["u@dest.test"], MSG)  # the connection that starts the relay
    notify.wait("READY", "1")
    assert wait_for(lambda: sink.messages)
    assert f"listening on 127.0.0.1:{port} (socket activation)" in relay.logged("listening on")
    assert relay.terminate() == 0


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- logs -----------------------------------------------------------------------------------------

QID = r"[0-9A-F]{25}"


def test_one_log_line_per_event_with_the_queue_id_and_no_password(
    world: World, tmp_path: Path
) -> None:
    """Accepted, each delivery attempt (sent / deferred / bounced), the retry scheduled, expiry
    (RTY-3), the sender notifications (DSN-1) and the removal: one line each, each starting with
    the queue ID, key=value, Postfix-like. At log_level DEBUG an AUTH password (SEC-8), right or
    wrong, never reaches the log, neither in clear nor in base64."""
    from tests.support.smtpsink import tls_available, tls_files

    if not tls_available():
        pytest.skip("the cryptography package is needed to make a test certificate")
    import ssl

    from mxroute.relay.intake.auth import hash_password

    password, wrong = "Corr3ct-Horse-Pw", "Wr0ng-Battery-Pw"
    cert, key = tls_files()
    creds = tmp_path / "credentials"
    creds.write_text(f"alice:{hash_password(password)}\n")
    sink = world.sink(1)
    sender_mx = world.sink(9)
    rcpt_script(sink, "bad@dest.test", "550 5.1.1 no such user")
    rcpt_script(sink, "later@dest.test", "451 4.3.0 greylisted")
    relay = world.relay(log_level="DEBUG", tls_cert_file=str(cert), tls_key_file=str(key),
                        auth_credentials_file=str(creds), queue_lifetime_seconds=2)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with relay.client() as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", wrong)
        client.login("alice", password)
        client.mail("a@sender.test")
        for rcpt in ("u@dest.test", "bad@dest.test", "later@dest.test"):
            client.rcpt(rcpt)
        code, reply = client.data(MSG)
    assert code == 250
    qid = reply.split()[-1].decode()
    assert re.fullmatch(QID, qid)
    assert wait_for(lambda: f"{qid}: removed" in relay.log(), timeout=30), relay.log()
    assert wait_for(lambda: len(sender_mx.messages) == 2)  # one DSN for the 550, one for the expiry
    log = relay.log()
    mine = [line for line in log.splitlines() if f"{qid}" in line]
    events = {
        "accepted": rf"INFO mxroute.relay.intake.handler: {qid}: from=<a@sender.test>, "
        r"size=\d+, nrcpt=3, "
        r"client=unknown\[127.0.0.1\], helo=<client.test>, status=accepted$",  # C5
        "sent": rf"INFO mxroute.relay.courier.courier: {qid}: to=<u@dest.test>, "
        r"relay=mx1.dest.test\[[\d.]+\]:\d+, "
        r"delay=[\d.]+, "
        r"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, tls=none, dsn=2.0.0, status=sent \(250 .*\)$",
        "bounced": rf"INFO mxroute.relay.courier.courier: {qid}: to=<bad@dest.test>, relay=\S+, "
        r"delay=[\d.]+, "
        r"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, tls=none, dsn=5.1.1, "
        r"status=bounced \(host \S+ said: 550 5.1.1 no such user\)$",  # DSN-6: the host's words
        "deferred": rf"INFO mxroute.relay.courier.courier: {qid}: to=<later@dest.test>, "
        r"relay=\S+, delay=[\d.]+, "
        r"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, tls=none, dsn=4.3.0, "
        r"status=deferred \(host \S+ said: 451 4.3.0 greylisted\)$",
        "retry": rf"INFO mxroute.relay.queue.manager: {qid}: to=<later@dest.test>, attempts=1, "
        r"next_try=\+\d+s \(retry scheduled\)$",
        "expired": rf"INFO mxroute.relay.queue.manager: {qid}: to=<later@dest.test>, delay=\d+, "
        r"attempts=\d+, status=expired "
        r"\(gave up after \d+s in the queue; last: 451 4.3.0 greylisted\)$",
        "bounce notice": rf"INFO mxroute.relay.queue.notices: {qid}: "
        rf"sender non-delivery notification: {qid}B0$",
        "expiry notice": rf"INFO mxroute.relay.queue.notices: {qid}: "
        rf"sender non-delivery notification: {qid}B1$",
        "removed": rf"INFO mxroute.relay.queue.manager: {qid}: removed$",
    }
    for event, pattern in events.items():
        found = [line for line in mine if re.search(pattern, line)]
        assert found, f"no {event!r} line for {qid}:\n" + "\n".join(mine)
        if event in ("accepted", "sent", "bounced", "expired", "removed"):
            assert len(found) == 1, (event, found)  # one line per event, never duplicated
    attempts = [
        line for line in mine if "to=<later@dest.test>" in line and "status=deferred" in line
    ]
    retries = [
        line for line in mine if "to=<later@dest.test>" in line and "retry scheduled" in line
    ]
    assert len(retries) == len(attempts) - 1  # the last attempt expired instead
    for line in log.splitlines():  # every recipient/sender line names its message
        if re.search(r"\b(to|from)=<", line):
            assert re.search(rf"mxroute(\.\w+)+: {QID}(B\d+)?: ", line), line
    assert "auth ok: user=alice" in log and "auth failed: user=alice" in log
    for secret in (password, wrong):
        for form in (secret, base64.b64encode(f"\0alice\0{secret}".encode()).decode(),
                     base64.b64encode(secret.encode()).decode()):
            assert form not in log, f"{form!r} is in the log"


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_endpoint_scraped_during_a_real_delivery(world: World) -> None:
    """metrics_listen: counters and gauges move with the traffic (accepted, delivered, deferred,
    bounced, queue by state, attempt latency, DNS queries and cache hit ratio, connections)."""
    pytest.importorskip("prometheus_client")
    sink = world.sink(
        1, delays={".": 1.5}
    )  # the end-of-data reply comes late: a delivery in flight
    rcpt_script(sink, "bad@dest.test", "550 5.1.1 no such user")
    world.sink(9)
    port = free_port()
    relay = world.relay(metrics_listen=f"127.0.0.1:{port}")
    before = scrape(port)
    assert before["mxroute_messages_accepted_total"] == 0
    assert before['mxroute_queue_messages{state="deferred"}'] == 0
    assert before["mxroute_delivery_attempt_seconds_count"] == 0
    with relay.client() as client:
        assert scrape(port)["mxroute_smtp_connections"] == 1
        client.sendmail("a@sender.test", ["u@dest.test", "bad@dest.test"], MSG)
    during = wait_for(
        lambda: (v := scrape(port))['mxroute_queue_messages{state="active"}'] >= 1 and v, timeout=10
    )
    assert during, "no delivery seen in flight"
    assert during["mxroute_messages_accepted_total"] == 1
    assert wait_for(lambda: sink.messages and relay.queued() == [], timeout=20)
    after = wait_for(
        lambda: (v := scrape(port))['mxroute_recipients_total{outcome="delivered"}'] >= 2 and v,
        timeout=10,
    )  # u@dest.test and the DSN to a@sender.test
    assert after, scrape(port)
    assert after['mxroute_recipients_total{outcome="bounced"}'] == 1
    assert after["mxroute_dsn_generated_total"] == 1
    assert after["mxroute_delivery_attempt_seconds_count"] >= 2
    assert after["mxroute_delivery_attempt_seconds_sum"] >= 1.0  # the 1.5 s end-of-data reply
    assert after["mxroute_dns_queries_total"] >= 2  # MX and A of dest.test, of sender.test
    assert 0.0 <= after["mxroute_dns_cache_hit_ratio"] <= 1.0
    assert after['mxroute_outbound_sessions_total{event="connections"}'] >= 1
    assert after["mxroute_smtp_connections"] == 0
    assert wait_for(
        lambda: scrape(port)['mxroute_queue_messages{state="active"}'] == 0, timeout=5
    )  # tasks done
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/nothing")
    assert conn.getresponse().status == 404
    conn.close()
    assert relay.terminate() == 0


def test_metrics_listen_without_prometheus_client_is_a_config_error(world: World) -> None:
    """metrics_listen set but the package missing: one line naming the setting, exit 78, no
    traceback."""
    relay = Relay(world.tmp, world.dns, world.sink_port, metrics_listen="127.0.0.1:9")
    hide = ("import sys; sys.modules['prometheus_client'] = None; "
            "from mxroute.cli.main import main; sys.exit(main(['serve']))")
    result = subprocess.run(
        [sys.executable, "-c", hide],
        cwd=ROOT,
        env=relay.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert "setting metrics_listen" in result.stderr and "mxroute[metrics]" in result.stderr
    assert "Traceback" not in result.stderr


# --- sendmail, called by a real program -----------------------------------------------------------


def test_bsd_mailx_submits_through_mxroute_sendmail(world: World, tmp_path: Path) -> None:
    """Debian's `mail` (bsd-mailx) with `set sendmail=` pointing at a `sendmail` link to mxroute,
    as the README installs it as /usr/sbin/sendmail: the message reaches the destination sink
    through the running relay, with mail's Subject, and the headers sendmail adds (RFC 6409 §8)."""
    mail = need_tool("mail")
    sink = world.sink(1)
    relay = world.relay()
    entry = Path(sys.executable).with_name("mxroute")
    link = tmp_path / "bin" / "sendmail"
    link.parent.mkdir()
    if entry.exists():
        link.symlink_to(entry)  # invoked as "sendmail": sendmail's command line (cli.main)
    else:  # not installed as a script here: the same through a tiny wrapper
        link.write_text(f"#!/bin/sh\nexec {sys.executable} -m mxroute sendmail \"$@\"\n")
        link.chmod(0o755)
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={link}\n")
    env = dict(
        relay.env, MAILRC=str(mailrc), HOME=str(tmp_path), MXROUTE_HELO_NAME="app.sender.test"
    )
    result = subprocess.run(
        [mail, "-s", "nightly report", "-r", "cron@sender.test", "u@dest.test"],
        input="all backups done\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: sink.messages, timeout=20), relay.log()
    (got,) = sink.messages
    assert got.rcpt_to == ["u@dest.test"]
    head, _, body = got.data.partition(b"\r\n\r\n")
    assert b"Subject: nightly report" in head and b"all backups done" in body
    assert re.search(rb"(?m)^Message-ID: <", head) and re.search(rb"(?m)^Date: ", head)
    assert wait_for(lambda: relay.queued() == [])


# --- the documented configuration ----------------------------------------------------------------

def test_config_file_documents_every_setting_and_what_needs_a_restart() -> None:
    """config/mxroute.toml names every setting (as `# name = default`) and marks the ones a reload
    cannot change, which are exactly the daemon's RESTART_ONLY; the file as shipped loads."""
    from mxroute.service.daemon import RESTART_ONLY
    from mxroute.settings import Settings, load_settings

    text = (ROOT / "config" / "mxroute.toml").read_text()
    missing = [name for name in Settings.model_fields if not re.search(rf"(?m)^# {name} = ", text)]
    assert not missing, f"settings not documented in config/mxroute.toml: {missing}"
    blocks = text.split("\n\n")
    marked = {name for block in blocks if "Restart needed." in block
              for name in re.findall(r"(?m)^# (\w+) = ", block)}
    assert marked == set(RESTART_ONLY)
    assert load_settings(str(ROOT / "config" / "mxroute.toml")).listen == ["127.0.0.1:2525"]


def test_unreadable_configuration_is_one_line_and_exit_78(tmp_path: Path) -> None:
    """A configuration this user may not read (e.g. `mxroute sendmail` run by a cron user while
    /etc/mxroute is closed to it): one line, EX_CONFIG, no traceback."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to run as another user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    (locked / "mxroute.toml").write_text('listen = ["127.0.0.1:2525"]\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    as_nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable]
    if (
        subprocess.run(
            [*as_nobody, "-c", "import mxroute"],
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode
        != 0
    ):
        pytest.skip("the user nobody cannot run this Python")
    for argv in (
        ["check-config", "--config", str(locked / "mxroute.toml")],
        ["sendmail", "u@dest.test"],
    ):
        result = subprocess.run(
            [*as_nobody, "-m", "mxroute", *argv],
            cwd="/",
            input="x\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=dict(env, MXROUTE_CONFIG=str(locked / "mxroute.toml")),
        )
        assert result.returncode == 78, (argv, result.stderr)
        assert (
            result.stderr.strip()
            == f"mxroute: configuration error: cannot read {locked}/mxroute.toml: "
            "Permission denied"
        ), result.stderr


@pytest.mark.parametrize("value", ["nonsense:port:x", "bad host:1", ":9125", "127.0.0.1:99999"])
def test_metrics_listen_must_be_host_port(value: str) -> None:
    from mxroute.errors import ConfigError
    from mxroute.settings import load_settings

    with pytest.raises(ConfigError, match="setting metrics_listen"):
        load_settings(None, metrics_listen=value)
    assert load_settings(None, metrics_listen="[::1]:9125").metrics_listen == "[::1]:9125"


def test_sighup_gives_the_identity_self_check_the_new_egress_ips(
    world: World, notify: NotifySocket
) -> None:
    """SPF-10/12 after a reload: egress_ips added by SIGHUP turn the serve-time self-check on,
    and a sender domain whose SPF excludes the new egress IP is warned about."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
               f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(9)}\n"
               'sender IN TXT "v=spf1 ip4:192.0.2.1 -all"\n')
    sink = world.sink(1)
    config = world.tmp / "mxroute.toml"
    write_config(config, relay_networks=["127.0.0.1/32"])
    relay = Relay(world.tmp, world.dns, world.sink_port)
    relay.env["MXROUTE_CONFIG"] = str(config)
    relay.env["NOTIFY_SOCKET"] = notify.path
    spawn(world, relay)
    notify.wait("READY", "1")
    assert "self-check off" in relay.logged("self-check off")
    write_config(config, relay_networks=["127.0.0.1/32"], egress_ips=["127.0.0.1"])
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    notify.wait("RELOADING", "1")
    notify.wait("READY", "1")
    assert wait_for(lambda: "self-check on for egress 127.0.0.1" in relay.log(), timeout=5), (
        relay.log()
    )
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert wait_for(lambda: "egress 127.0.0.1 spf-fail" in relay.log(), timeout=10), relay.log()
    assert relay.terminate() == 0

"""A private Postfix instance for interop tests: its main.cf and master.cf templates, whether one
can be started here, starting it, the instance's held queue, and stopping it.

``start_postfix(host)`` starts one on ``host`` and a fresh port with its own config, queue and
data directories in a temporary directory; every message is put on *hold* by an access rule, so
nothing is delivered anywhere and ``held()`` / ``message()`` show exactly what Postfix stored.
``stop_postfix(instance, instance.root)`` stops it (bounded) and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.smtpsink import tls_available, tls_files

POSTFIX = Path("/usr/sbin/postfix")
POSTCAT = Path("/usr/sbin/postcat")

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
# the loopback interface is the one configured address; master.cf binds {host} itself
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.interop.test
mydomain = interop.test
myorigin = interop.test
mydestination = interop.test
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
    check_recipient_access inline:{{ {{nobody@interop.test = 550 5.1.1 no such user here}} }},
    check_client_access static:HOLD, permit
smtpd_recipient_limit = 3
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
biff = no
smtpd_banner = $myhostname ESMTP
{extra}
"""

MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000    1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000    0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def unavailable() -> str | None:
    """Why no private Postfix instance can be started here, or None when one can."""
    if not POSTFIX.exists() or not POSTCAT.exists():
        return "Postfix (Debian package postfix) is not installed"
    if os.geteuid() != 0:
        return "starting a private Postfix instance needs root"
    return None


@dataclass
class PostfixInstance:
    """A running private Postfix: its directory, listening address and whether it offers TLS."""

    root: Path
    host: str
    port: int
    tls: bool

    @property
    def config(self) -> Path:
        return self.root / "etc"

    def held(self) -> list[str]:
        hold = self.root / "queue" / "hold"
        return sorted(p.name for p in hold.iterdir()) if hold.is_dir() else []

    def wait_held(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.held()) < count:
            time.sleep(0.05)
        return self.held()

    def postcat(self, queue_id: str, *flags: str) -> str:
        done = subprocess.run([str(POSTCAT), "-c", str(self.config), *flags, "-q", queue_id],
                              capture_output=True, timeout=30, check=True)
        return done.stdout.decode("utf-8", "replace")

    def body(self, queue_id: str) -> bytes:
        """The message body as Postfix stored it, with CRLF line ends."""
        return self.message(queue_id).split(b"\r\n\r\n", 1)[1]

    def message(self, queue_id: str) -> bytes:
        """The whole message (header and body) as Postfix stored it, byte for byte, with CRLF
        line ends (8-bit content is not decoded)."""
        done = subprocess.run([str(POSTCAT), "-c", str(self.config), "-h", "-b", "-q", queue_id],
                              capture_output=True, timeout=30, check=True)
        text = done.stdout
        if text.endswith(b"\n"):
            text = text[:-1]
        return b"".join(line + b"\r\n" for line in text.split(b"\n"))

    def answering(self) -> bool:
        """True when the instance's smtpd answers a connection with its 220 greeting."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                return sock.recv(100).startswith(b"220")
        except OSError:
            return False

    def clear(self) -> None:
        for queue_id in self.held():
            subprocess.run(["/usr/sbin/postsuper", "-c", str(self.config), "-d", queue_id, "hold"],
                           capture_output=True, timeout=30, check=False)


def start_postfix(host: str, *, tls: bool = False, extra: str = "",
                  prefix: str = "mxroute-postfix-") -> PostfixInstance:
    """Start a private instance listening on ``host`` (a fresh port) and wait, bounded, for its
    greeting; ``extra`` is appended to main.cf, ``tls`` offers STARTTLS with a self-signed
    certificate (when ``cryptography`` is installed). A failure to start fails the test with
    Postfix's log. The caller checks ``unavailable()`` first and stops it with ``stop_postfix``."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # Postfix daemons run as the postfix user and must reach the queue
    for sub in ("etc", "queue", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", user="postfix")
    lines = [extra] if extra else []
    if tls and tls_available():
        cert, key = tls_files()
        shutil.copy(cert, root / "etc" / "cert.pem")
        shutil.copy(key, root / "etc" / "key.pem")
        lines += ["smtpd_tls_security_level = may", f"smtpd_tls_cert_file = {root}/etc/cert.pem",
                  f"smtpd_tls_key_file = {root}/etc/key.pem", "smtpd_tls_received_header = yes"]
    port = free_port(host)
    main_cf = merged_main_cf(MAIN_CF.format(root=root, host=host, extra="\n".join(lines)))
    (root / "etc" / "main.cf").write_text(main_cf)
    (root / "etc" / "master.cf").write_text(MASTER_CF.format(host=host, port=port))
    instance = PostfixInstance(root, host, port, tls and tls_available())
    started = subprocess.run([str(POSTFIX), "-c", str(instance.config), "start"],
                             capture_output=True, timeout=60, check=False)
    deadline = time.monotonic() + 20
    for _ in range(200):
        if started.returncode != 0 or instance.answering() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if started.returncode != 0 or not instance.answering():
        log = (root / "maillog").read_text() if (root / "maillog").exists() else ""
        stop_postfix(instance, root)
        pytest.fail(f"the private Postfix instance did not start: "
                    f"{started.stderr.decode(errors='replace')} {log[-2000:]}")
    return instance


def merged_main_cf(text: str) -> str:
    """``text`` with each parameter once, its last value in its first place (what Postfix makes
    of a repeated one). A repeat would make every Postfix process log "overriding earlier
    entry" to postlogd's datagram socket at start; with Linux's default queue of 10 datagrams
    and postlogd logging the same warning to itself, that can deadlock the instance."""
    blocks: dict[str, list[str]] = {}
    order: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and current is not None and line.strip():
            current.append(line)  # a continuation line of the parameter above
            continue
        key = line.partition("=")[0].strip() if "=" in line and line[:1] != "#" else ""
        current = [line]
        if key in blocks:
            blocks[key][:] = current  # the later value, in the earlier place
            current = blocks[key]
        else:
            order.append(current)
            if key:
                blocks[key] = current
    return "\n".join(line for block in order for line in block) + "\n"


def stop_postfix(instance: PostfixInstance, root: Path) -> None:
    """``postfix stop``, wait (bounded) until its master process is gone, remove the instance."""
    subprocess.run([str(POSTFIX), "-c", str(instance.config), "stop"], check=False,
                   capture_output=True, timeout=60)
    pid_file = root / "queue" / "pid" / "master.pid"
    deadline = time.monotonic() + 15
    while pid_file.exists() and time.monotonic() < deadline:
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
        except (OSError, ValueError):
            break
        time.sleep(0.1)
    shutil.rmtree(root, ignore_errors=True)


def free_port(host: str) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])

"""The interop suite's common parts (issue 17): the real client programs, the guide's tested
snippets, the relay they submit to, and the three messages every client sends.

``need(tool, package)``: the program's path; skipped when missing here, a FAILURE under
``CI=true`` (``.ci/run`` installs it). ``snippet(name)``: the code block after
``<!-- tested: name -->`` in docs/clients.md, so the guide's lines are the tested ones.
``submission_relay(world, tmp)``: ``mxroute serve`` started from the guide's server block (its
ports moved to free ones, its files into ``tmp``), loopback NOT in ``relay_networks`` unless
asked, so relaying needs AUTH.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from mxroute.relay.intake.auth import hash_password
from tests.support.relay import ROOT, Relay, World, free_port
from tests.support.smtpsink import Transaction, tls_available, tls_files

GUIDE = ROOT / "docs" / "clients.md"
USER, PASSWORD = "app", "app-secret"  # the guide's account
PORT, SMTPS_PORT = 2525, 465  # the guide's ports, replaced by free ones in the tests
IN_CI = os.environ.get("CI") == "true"


def need(tool: str, package: str) -> str:
    """The path of ``tool``: skip with the Debian package to install when it is missing here,
    fail under CI=true (issue 17: a client that does not install is a failure)."""
    path = shutil.which(tool) or next(
        (str(p) for p in (Path("/usr/sbin") / tool, Path("/usr/bin") / tool) if p.exists()), None)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is not installed: .ci/run installs the Debian package {package}")
        pytest.skip(f"{tool} is not installed (apt-get install {package}); CI installs it")
    return path


def snippet(name: str) -> str:
    """The fenced block that follows ``<!-- tested: name -->`` in docs/clients.md."""
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(rf"<!-- tested: {re.escape(name)} -->\n```[a-z]*\n(.*?)```", text, re.DOTALL)
    assert found, f"docs/clients.md has no tested block {name!r}"
    return found.group(1)


def replaced(text: str, swaps: dict[str, str]) -> str:
    """``text`` with each key, as a whole word, replaced by its value in one pass (a new port
    is never rewritten again); every key must occur (the test and the guide cannot drift apart
    silently)."""
    pattern = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, swaps)) + r")(?!\w)")
    missing = [old for old in swaps if not re.search(rf"(?<!\w){re.escape(old)}(?!\w)", text)]
    assert not missing, f"the guide's snippet no longer has {missing}:\n{text}"
    return pattern.sub(lambda found: swaps[found.group(1)], text)


@dataclass
class Submission:
    """A running relay set up as the guide says: ``port`` (STARTTLS + AUTH), ``smtps_port``
    (implicit TLS + AUTH), ``cert`` (its self-signed certificate: the clients' trust file)."""

    relay: Relay
    port: int
    smtps_port: int
    cert: Path


def submission_relay(world: World, tmp: Path, *, trusted: bool = False) -> Submission:
    """``mxroute serve`` from the guide's mxroute.toml block; ``trusted``: loopback may relay
    without AUTH (the default relay_networks), else only a login lets mail through."""
    if not tls_available():
        pytest.skip("the cryptography package is needed to make a test certificate")
    cert, key = tls_files()
    creds = tmp / "credentials"
    creds.write_text(f"{USER}:{hash_password(PASSWORD)}\n")
    port, smtps_port = free_port(), free_port()
    toml = replaced(snippet("mxroute.toml"), {
        "2525": str(port), "465": str(smtps_port), "/etc/mxroute/cert.pem": str(cert),
        "/etc/mxroute/key.pem": str(key), "/etc/mxroute/credentials": str(creds)})
    settings = tomllib.loads(toml)
    if not trusted:
        settings["relay_networks"] = ["127.0.0.254/32"]
    return Submission(world.relay(port, **settings), port, smtps_port, cert)


# --- the three messages -------------------------------------------------------------------------

SENDER = "app@sender.test"
UTF8_SENDER = "jörg@sender.test"
RCPT = "u@dest.test"
UTF8_RCPT = "用户@dest.test"
BODY_8BIT = "Grüße aus Köln: 8-bit text, no encoding\n"


@dataclass(frozen=True)
class Kind:
    """What one test message is: its name, envelope and the text that must arrive intact."""

    name: str
    sender: str
    rcpt: str
    subject: str
    body: str

    def message(self, eol: str = "\n") -> bytes:
        lines = [f"From: {self.sender}", f"To: {self.rcpt}", f"Subject: {self.subject}",
                 "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
                 "Content-Transfer-Encoding: 8bit" if self.name != "plain" else
                 "Content-Transfer-Encoding: 7bit", "", *self.body.splitlines()]
        return (eol.join(lines) + eol).encode()


PLAIN = Kind("plain", SENDER, RCPT, "plain interop", "plain ASCII text\n")
EIGHT_BIT = Kind("8bit", SENDER, RCPT, "8-bit interop", BODY_8BIT)
UTF8 = Kind("smtputf8", UTF8_SENDER, UTF8_RCPT, "SMTPUTF8 interop", BODY_8BIT)
KINDS = (PLAIN, EIGHT_BIT, UTF8)


def arrived(got: Transaction, kind: Kind, *, declares_8bit: bool = True) -> None:
    """The sink's transaction is ``kind``'s message: envelope, subject and body byte-exact;
    SMTPUTF8 on for the SMTPUTF8 kind, and BODY=8BITMIME for 8-bit text when the client
    declared it (``declares_8bit``: msmtp, for one, sends 8-bit text undeclared)."""
    assert got.mail_from == kind.sender, got
    assert got.rcpt_to == [kind.rcpt], got
    assert got.data is not None
    head, _, body = got.data.partition(b"\r\n\r\n")
    assert f"Subject: {kind.subject}".encode() in head, got.data
    assert body == kind.body.replace("\n", "\r\n").encode(), got.data
    if kind is UTF8:
        assert "SMTPUTF8" in got.mail_args.upper(), got.mail_args
    if kind is not PLAIN and declares_8bit:
        assert "BODY=8BITMIME" in got.mail_args.upper(), got.mail_args


def by_subject(messages: list[Transaction], kind: Kind) -> Transaction:
    """The one transaction carrying ``kind``'s subject (deliveries may finish in any order)."""
    found = [t for t in messages if t.data and f"Subject: {kind.subject}".encode() in t.data]
    assert len(found) == 1, f"{kind.name}: {len(found)} copies at the sink: {messages}"
    return found[0]


def received_with(got: Transaction) -> str:
    """The protocol word of the relay's Received: header (``with ESMTPSA``, ...)."""
    assert got.data is not None
    found = re.search(rb"^Received: .*?\bwith (\w+)", got.data, re.DOTALL)
    assert found, got.data[:300]
    return found.group(1).decode()


def sendmail_link(tmp: Path) -> Path:
    """A ``sendmail`` that is mxroute, as operators.md installs it as /usr/sbin/sendmail: the
    installed entry point linked under that name, else a two-line wrapper."""
    entry = Path(sys.executable).with_name("mxroute")
    link = tmp / "bin" / "sendmail"
    link.parent.mkdir(exist_ok=True)
    if entry.exists():
        link.symlink_to(entry)  # invoked as "sendmail": sendmail's command line (cli.main)
    else:
        link.write_text(f"#!/bin/sh\nexec {sys.executable} -m mxroute sendmail \"$@\"\n")
        link.chmod(0o755)
    return link

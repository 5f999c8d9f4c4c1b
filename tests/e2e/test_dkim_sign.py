"""DKIM signing in `mxroute serve` (issue 14 §1), end to end: the real relay signs at intake, the
sink receives the message, and dkimpy verifies it against the loopback DNS server (the public keys
published there). RSA, Ed25519 and both; the same signature after a deferral; a signed DSN that
returns a still-verifying original; hostile From: headers; a 10 MB message; a key file that
vanishes; dkim_required; keys refused at start; the metrics.
"""

from __future__ import annotations

import email
import json
import signal
import subprocess
import sys
from email.message import Message
from pathlib import Path
from typing import Any

import dkim
import dns.message
import dns.query
import pytest

from mxroute.identity.dkim import canon
from mxroute.identity.dkim.keys import generate, load_key, write_key
from mxroute.identity.dkim.record import build_txt
from tests.support.dnsserver import DNSServer
from tests.support.relay import ROOT, World, free_port, scrape, service_env, wait_for

pytest.importorskip("nacl", reason="dkimpy verifies Ed25519 with PyNaCl")

MSG = (b"From: Ann <a@sender.test>\r\nTo: u@dest.test\r\nSubject: hello\r\n"
       b"Date: Thu, 03 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
       b"Content-Transfer-Encoding: 8bit\r\n\r\n"
       b"Gr\xc3\xbc\xc3\x9fe,  world \t\r\n.dot line\r\n\r\n")


def make_key(tmp: Path, name: str, algorithm: str) -> tuple[Path, str]:
    """A key file (0600) and its published record's text."""
    path = tmp / f"{name}.pem"
    write_key(generate(algorithm), path)
    return path, build_txt(algorithm, load_key(path).public_b64())


def quoted(text: str) -> str:
    return " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))


def dnsfunc(server: DNSServer) -> Any:
    """dkimpy's TXT lookup, asked of the loopback DNS server over the wire."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), "TXT")
        answer = dns.query.udp(query, server.host, port=server.port, timeout=2)
        for rrset in answer.answer:
            for rr in rrset:
                return b"".join(rr.strings)  # type: ignore[attr-defined, no-any-return]
        return None

    return lookup


def signatures(message: bytes) -> list[dict[str, str]]:
    """The tags of each DKIM-Signature, top to bottom."""
    return [canon.tags(value) for value in canon.split_message(message).values("dkim-signature")]


def verified(message: bytes, server: DNSServer) -> list[bool]:
    checker = dkim.DKIM(message)
    return [bool(checker.verify(idx=i, dnsfunc=dnsfunc(server)))
            for i in range(len(signatures(message)))]


@pytest.fixture
def keys(world: World, tmp_path: Path) -> dict[str, Path]:
    """sender.test: RSA (s-rsa) and Ed25519 (s-ed); rsa.test: RSA only; ed.test: Ed25519 only;
    relay.test (the DSNs' domain): RSA. All published on the loopback DNS server."""
    made = {name: make_key(tmp_path, name, alg) for name, alg in (
        ("s-rsa", "rsa"), ("s-ed", "ed25519"), ("r1", "rsa"), ("e1", "ed25519"),
        ("bounce", "rsa"))}
    world.zone(
        f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
        f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(9)}\n"
        f"s-rsa._domainkey.sender IN TXT {quoted(made['s-rsa'][1])}\n"
        f"s-ed._domainkey.sender IN TXT {quoted(made['s-ed'][1])}\n"
        f"r1._domainkey.rsa IN TXT {quoted(made['r1'][1])}\n"
        f"e1._domainkey.ed IN TXT {quoted(made['e1'][1])}\n"
        f"bounce._domainkey.relay IN TXT {quoted(made['bounce'][1])}\n"
    )
    return {name: path for name, (path, _) in made.items()}


def key_settings(keys: dict[str, Path]) -> list[dict[str, str]]:
    return [
        # configured Ed25519 first: the signer still puts RSA on top (RFC 8463)
        {"domain": "sender.test", "selector": "s-ed", "key_file": str(keys["s-ed"])},
        {"domain": "sender.test", "selector": "s-rsa", "key_file": str(keys["s-rsa"])},
        {"domain": "rsa.test", "selector": "r1", "key_file": str(keys["r1"])},
        {"domain": "ed.test", "selector": "e1", "key_file": str(keys["e1"])},
        {"domain": "relay.test", "selector": "bounce", "key_file": str(keys["bounce"])},
    ]


def send(relay: Any, body: bytes, sender: str = "a@sender.test",
         rcpts: tuple[str, ...] = ("u@dest.test",), **options: Any) -> tuple[int, bytes]:
    with relay.client() as client:
        client.mail(sender, options.get("mail_options", []))
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        return client.data(body)  # type: ignore[no-any-return]


def test_rsa_ed25519_and_dual_signatures_verify(world: World, keys: dict[str, Path]) -> None:
    """Issue 14 §1: From: sender.test → RSA then Ed25519 (dual), rsa.test → RSA, ed.test →
    Ed25519; each verifies with dkimpy against the loopback DNS; the relay's Received: is not
    signed, the oversigned fields are; metrics count each domain/selector."""
    pytest.importorskip("prometheus_client")
    sink = world.sink(1)
    port = free_port()
    relay = world.relay(dkim_keys=key_settings(keys), metrics_listen=f"127.0.0.1:{port}")
    for author in (b"a@sender.test", b"b@rsa.test", b"c@sub.ed.test"):
        assert send(relay, MSG.replace(b"<a@sender.test>", b"<" + author + b">"))[0] == 250
    assert wait_for(lambda: len(sink.messages) == 3)
    got = {m.data.split(b"From: Ann <")[1].split(b">")[0]: m.data for m in sink.messages}
    dual = got[b"a@sender.test"]
    assert dual.startswith(b"Received: ")  # the relay's trace field above the signatures
    tags = signatures(dual)
    assert [(t["a"], t["d"], t["s"]) for t in tags] == [
        ("rsa-sha256", "sender.test", "s-rsa"), ("ed25519-sha256", "sender.test", "s-ed")]
    h = tags[0]["h"].split(":")
    assert h.count("from") == 2 and h.count("subject") == 2 and "received" not in h
    assert h.count("list-unsubscribe") == 1 and "l" not in tags[0]
    assert verified(dual, world.dns) == [True, True]
    assert [(t["a"], t["d"]) for t in signatures(got[b"b@rsa.test"])] == [("rsa-sha256",
                                                                           "rsa.test")]
    assert verified(got[b"b@rsa.test"], world.dns) == [True]
    assert [(t["a"], t["d"]) for t in signatures(got[b"c@sub.ed.test"])] == [("ed25519-sha256",
                                                                              "ed.test")]
    assert verified(got[b"c@sub.ed.test"], world.dns) == [True]
    values = scrape(port)
    assert values['mxroute_dkim_signatures_total{domain="sender.test",selector="s-rsa"}'] == 1
    assert values['mxroute_dkim_signatures_total{domain="ed.test",selector="e1"}'] == 1
    assert values["mxroute_dkim_signing_failures_total"] == 0
    assert relay.terminate() == 0


def test_deferred_then_resent_carries_the_same_signature(world: World,
                                                         keys: dict[str, Path]) -> None:
    """Issue 14 §1: signed once at intake: the retry after a 451 at end of data sends the very
    same DKIM-Signature fields, and they verify."""
    sink = world.sink(1)
    sink.replies["."] = ["451 4.3.0 try again later"]
    relay = world.relay(dkim_keys=key_settings(keys))
    assert send(relay, MSG)[0] == 250
    assert wait_for(lambda: sink.messages, timeout=20)
    attempts = [t for c in sink.connections for t in c.transactions if t.data is not None]
    assert [t.reply[:3] for t in attempts] == ["451", "250"]
    first, second = (canon.split_message(t.data).values("dkim-signature") for t in attempts)
    assert first == second and len(first) == 2
    assert verified(attempts[1].data, world.dns) == [True, True]
    # the message on disk was the signed one: a DKIM-Signature is never added a second time
    assert attempts[1].data.count(b"DKIM-Signature:") == 2


def test_dsn_is_signed_and_the_returned_original_still_verifies(
        world: World, keys: dict[str, Path]) -> None:
    """Issue 14 §1: a bounce (RET=FULL) is signed with the reporting domain's key (From:
    MAILER-DAEMON@relay.test → d=relay.test), and the message/rfc822 part it returns is the
    signed original, whose signatures still verify."""
    sink = world.sink(1)
    home = world.sink(9)
    sink.replies["RCPT"] = {"u@dest.test": "550 5.1.1 no such user"}
    relay = world.relay(dkim_keys=key_settings(keys))
    assert send(relay, MSG, mail_options=["RET=FULL"])[0] == 250
    assert wait_for(lambda: home.messages, timeout=20)
    dsn = home.messages[0].data
    assert [(t["d"], t["s"]) for t in signatures(dsn)] == [("relay.test", "bounce")]
    assert verified(dsn, world.dns) == [True]
    report: Message = email.message_from_bytes(dsn)
    parts = [p for p in report.walk() if p.get_content_type() == "message/rfc822"]
    assert len(parts) == 1
    original = parts[0].get_payload()[0].as_bytes()
    returned = dsn.split(b"Content-Type: message/rfc822\r\n")[1].split(b"\r\n\r\n", 1)[1]
    returned = returned.rsplit(b"\r\n--=_mxroute_", 2)[0] + b"\r\n"
    assert b"DKIM-Signature:" in original
    assert verified(returned, world.dns) == [True, True]


def test_hostile_from_headers(world: World, keys: dict[str, Path]) -> None:
    """Issue 14 hostile cases: comments and encoded words in From: (signed for the addr-spec's
    domain only); a display name that names another domain, or hides a header line in an encoded
    word, never earns that domain's signature; several From: headers, or none, are not signed
    and the log says why."""
    sink = world.sink(1)
    relay = world.relay(dkim_keys=key_settings(keys))
    cases = {
        b"comment": b"From: =?utf-8?q?Caf=C3=A9?= (b@rsa.test) <a@sender.test> (more)\r\n",
        b"display": b'From: "a@sender.test" <x@evil.test>\r\n',
        b"inject": b"From: =?utf-8?q?Bob=0D=0AFrom:_a@sender.test?= <x@evil.test>\r\n",
        b"twice": b"From: a@sender.test\r\nFrom: b@evil.test\r\n",
        b"none": b"Sender: a@sender.test\r\n",
    }
    for label, head in cases.items():
        body = head + b"To: u@dest.test\r\nSubject: " + label + b"\r\n\r\nx\r\n"
        assert send(relay, body)[0] == 250
    assert wait_for(lambda: len(sink.messages) == len(cases))
    got = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0]: m.data for m in sink.messages}
    assert [t["d"] for t in signatures(got[b"comment"])] == ["sender.test", "sender.test"]
    assert verified(got[b"comment"], world.dns) == [True, True]
    for label in (b"display", b"inject", b"twice", b"none"):
        assert b"DKIM-Signature" not in got[label], label
    log = relay.logged("not signed: 2 From: headers", "not signed: no From: header")
    assert "not signed: 2 From: headers" in log and "not signed: no From: header" in log


def test_dkim_required_refuses_what_cannot_be_signed(world: World, keys: dict[str, Path]) -> None:
    """dkim_required: several From: headers → 550 5.7.1 (nothing queued); a client not in a
    key's senders → 550 5.7.1; good mail is signed as ever."""
    sink = world.sink(1)
    settings = key_settings(keys)
    settings[2]["senders"] = ["alice", "192.0.2.0/24"]  # rsa.test: not for 127.0.0.1
    relay = world.relay(dkim_keys=settings, dkim_required=True)
    code, reply = send(relay, b"From: a@sender.test\r\nFrom: b@sender.test\r\n\r\nx\r\n")
    assert (code, reply[:5]) == (550, b"5.7.1") and b"From:" in reply
    code, reply = send(relay, b"From: b@rsa.test\r\nSubject: x\r\n\r\nx\r\n")
    assert (code, reply[:5]) == (550, b"5.7.1") and b"rsa.test" in reply
    assert send(relay, MSG)[0] == 250
    assert wait_for(lambda: sink.messages)
    assert len(sink.messages) == 1 and verified(sink.messages[0].data, world.dns) == [True, True]
    assert wait_for(lambda: relay.queued() == [])


def test_senders_limit_without_dkim_required(world: World, keys: dict[str, Path]) -> None:
    """senders: a client outside them is relayed unsigned (logged); inside them, signed."""
    sink = world.sink(1)
    settings = key_settings(keys)
    settings[2]["senders"] = ["alice"]
    settings[3]["senders"] = ["127.0.0.0/8"]
    relay = world.relay(dkim_keys=settings)
    assert send(relay, b"From: b@rsa.test\r\nSubject: r\r\n\r\nx\r\n")[0] == 250
    assert send(relay, b"From: c@ed.test\r\nSubject: e\r\n\r\nx\r\n")[0] == 250
    assert wait_for(lambda: len(sink.messages) == 2)
    got = {m.data.split(b"Subject: ")[1][:1]: m.data for m in sink.messages}
    assert b"DKIM-Signature" not in got[b"r"]
    assert verified(got[b"e"], world.dns) == [True]
    assert "not signed: client 127.0.0.1 may not send for rsa.test" in relay.logged(
        "may not send for rsa.test")


def test_an_existing_signature_of_the_same_key_is_not_repeated(
        world: World, keys: dict[str, Path]) -> None:
    """A message that already carries d=sender.test s=s-rsa gets only the Ed25519 signature."""
    sink = world.sink(1)
    relay = world.relay(dkim_keys=key_settings(keys))
    pre = b"DKIM-Signature: v=1; a=rsa-sha256; d=Sender.Test; s=S-RSA; h=from; bh=x; b=y\r\n"
    assert send(relay, pre + MSG)[0] == 250
    assert wait_for(lambda: sink.messages)
    assert [(t["s"], t["a"]) for t in signatures(sink.messages[0].data)] == [
        ("s-ed", "ed25519-sha256"), ("S-RSA", "rsa-sha256")]


@pytest.mark.slow
def test_a_10_mb_message_is_signed(world: World, keys: dict[str, Path]) -> None:
    """A 10 MB message is signed (in a worker thread: tests/unit/relay/test_intake_signing.py)
    and verifies; a session open meanwhile is still served."""
    sink = world.sink(1)
    relay = world.relay(dkim_keys=key_settings(keys))
    line = b"0123456789 abcdefghij \t klmnopqrstuvwxyz" * 2 + b"\r\n"
    big = MSG + line * (10_000_000 // len(line))
    with relay.client() as other:  # another session stays served while the big one is signed
        assert send(relay, big)[0] == 250
        assert other.noop()[0] == 250
    assert wait_for(lambda: sink.messages, timeout=60)
    assert verified(sink.messages[0].data, world.dns) == [True, True]


def test_key_file_vanishes_signing_goes_on_and_sighup_is_refused(
        world: World, keys: dict[str, Path]) -> None:
    """Issue 14: the key was read at start; deleted later, mail is still signed; SIGHUP then finds
    it unreadable, refuses the reload in one line naming the key, and the old keys keep signing."""
    sink = world.sink(1)
    relay = world.relay(dkim_keys=key_settings(keys))
    keys["s-rsa"].unlink()
    assert send(relay, MSG)[0] == 250
    assert wait_for(lambda: sink.messages)
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    log = relay.logged("reload failed")
    lines = [line for line in log.splitlines() if "reload failed" in line]
    assert len(lines) == 1 and str(keys["s-rsa"]) in lines[0] and "cannot read" in lines[0], log
    assert send(relay, MSG)[0] == 250
    assert wait_for(lambda: len(sink.messages) == 2)
    assert all(verified(m.data, world.dns) == [True, True] for m in sink.messages)
    assert relay.proc.poll() is None


def test_sighup_reads_a_key_replaced_in_place(world: World, keys: dict[str, Path],
                                              tmp_path: Path) -> None:
    """Keys are read again on every SIGHUP, even when no setting changed: a key file replaced in
    place (and its new record published) signs from the reload on."""
    sink = world.sink(1)
    relay = world.relay(dkim_keys=key_settings(keys)[2:3])  # rsa.test, selector r1
    new, record = make_key(tmp_path, "r1-new", "rsa")
    new.replace(keys["r1"])
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    relay.logged("reload done")
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
               f"r1._domainkey.rsa IN TXT {quoted(record)}\n")
    assert send(relay, b"From: b@rsa.test\r\nSubject: r\r\n\r\nx\r\n")[0] == 250
    assert wait_for(lambda: sink.messages)
    assert verified(sink.messages[0].data, world.dns) == [True]


def serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mxroute", "serve"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_start_refuses_an_unusable_key_in_one_line(tmp_path: Path) -> None:
    """An unreadable or non-PEM key (or RSA under 1024 bits): serve exits 78 with one line naming
    the key, as any configuration error; a weak key (RSA 1024) and a world-readable one start
    with one warning each."""
    garbage = tmp_path / "bad.pem"
    garbage.write_text("not a key\n")
    env = service_env()
    env.update({"MXROUTE_SPOOL_DIR": str(tmp_path / "spool"),
                "MXROUTE_LISTEN": json.dumps([f"127.0.0.1:{free_port()}"]),
                "MXROUTE_DKIM_KEYS": json.dumps([{"domain": "x.test", "selector": "s",
                                                  "key_file": str(garbage)}])})
    done = serve_once(env)
    assert done.returncode == 78, done
    assert done.stderr.strip().splitlines()[-1] == (
        f"mxroute: DKIM key {garbage}: not a PEM private key (PKCS#1 or PKCS#8)")
    env["MXROUTE_DKIM_KEYS"] = json.dumps([{"domain": "x.test", "selector": "s",
                                            "key_file": str(tmp_path / "gone.pem")}])
    done = serve_once(env)
    assert done.returncode == 78 and f"DKIM key {tmp_path / 'gone.pem'}: cannot read" in (
        done.stderr)


def test_weak_and_exposed_keys_warn_once_each(world: World, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = tmp_path / "weak.pem"
    write_key(rsa.generate_private_key(public_exponent=65537, key_size=1024), weak)
    weak.chmod(0o644)
    relay = world.relay(dkim_keys=[{"domain": "x.test", "selector": "s", "key_file": str(weak)}])
    log = relay.logged("RSA 1024 bits is under 2048", "lets others read it")
    assert log.count("RSA 1024 bits is under 2048") == 1
    assert log.count("lets others read it") == 1
    assert relay.terminate() == 0


def test_check_config_refuses_a_short_dkim_expiry(tmp_path: Path) -> None:
    """dkim_expire_seconds must outlive the queue: check-config names both settings."""
    env = service_env()
    env.update({"MXROUTE_QUEUE_LIFETIME_SECONDS": "432000",
                "MXROUTE_DKIM_EXPIRE_SECONDS": "86400"})
    done = subprocess.run([sys.executable, "-m", "mxroute", "check-config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 78
    assert "dkim_expire_seconds (86400) must be at least queue_lifetime_seconds (432000)" in (
        done.stderr)
    env["MXROUTE_DKIM_EXPIRE_SECONDS"] = str(432000 + 86400)
    done = subprocess.run([sys.executable, "-m", "mxroute", "check-config", "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["dkim_expire_seconds"] == 518400


def test_expiry_tag_on_relayed_mail(world: World, keys: dict[str, Path]) -> None:
    sink = world.sink(1)
    relay = world.relay(dkim_keys=key_settings(keys), queue_lifetime_seconds=3600,
                        dkim_expire_seconds=3600 + 86400)
    assert send(relay, MSG)[0] == 250
    assert wait_for(lambda: sink.messages)
    tags = signatures(sink.messages[0].data)[0]
    assert int(tags["x"]) - int(tags["t"]) == 3600 + 86400
    assert verified(sink.messages[0].data, world.dns) == [True, True]



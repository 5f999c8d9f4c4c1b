"""`mxroute dkim keygen` and `mxroute dkim check` through the real CLI against the loopback DNS
server (issue 14 §2, opendkim-testkey parity): every status with its exit code, the JSON shape.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT

SOA = "t. IN SOA ns.t. h.t. 1 3600 600 86400 60\n"
CHECK_KEYS = ("domain", "selector", "dns_name", "status", "algorithm", "bits", "testing")


def mxroute(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    full.update({"PYTHONPATH": str(ROOT), "MXROUTE_DNS_TIMEOUT": "0.5",
                 "MXROUTE_DNS_ATTEMPTS": "1", **env})
    return subprocess.run([sys.executable, "-m", "mxroute", *args], capture_output=True,
                          check=False, text=True, env=full, cwd=ROOT, timeout=60)


def keygen(tmp_path: Path, domain: str, selector: str, *more: str) -> dict[str, str]:
    done = mxroute("dkim", "keygen", domain, selector, "--dir", str(tmp_path), "--json", *more)
    assert done.returncode == 0, done.stderr
    out: dict[str, str] = json.loads(done.stdout)
    assert set(out) == {"key_file", "dns_name", "txt"}
    return out


def check(dns: DNSServer, keys: list[dict[str, str]]) -> tuple[int, list[dict[str, object]]]:
    done = mxroute("dkim", "check", "--json", "--dns", dns.address,
                   MXROUTE_DKIM_KEYS=json.dumps(keys))
    assert done.stderr == "", done.stderr
    results: list[dict[str, object]] = json.loads(done.stdout)
    assert all(tuple(r) == CHECK_KEYS for r in results)
    return done.returncode, results


def quoted(text: str) -> str:
    """``text`` as zone-file strings of 200 characters (a test's own split, not mxroute's)."""
    return " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))


def entry(made: dict[str, str], domain: str, selector: str) -> dict[str, str]:
    return {"domain": domain, "selector": selector, "key_file": made["key_file"]}


def test_keygen_published_record_checks_ok(tmp_path: Path, dns_server: DNSServer) -> None:
    """keygen → publish its printed zone-file line → check says ok (RSA and Ed25519)."""
    rsa = keygen(tmp_path, "T", "s1")
    ed = keygen(tmp_path, "t", "s2", "--algorithm", "ed25519")
    assert Path(rsa["key_file"]).stat().st_mode & 0o777 == 0o600
    text = mxroute("dkim", "keygen", "t", "s3", "--dir", str(tmp_path))
    assert text.returncode == 0
    line = text.stdout.splitlines()[-1]
    assert line.startswith('s3._domainkey.t. IN TXT ( "v=DKIM1; k=rsa; ') and '" "' in line
    dns_server.set_zone("$ORIGIN .\n$TTL 300\n" + SOA + line + "\n"
                        + f's1._domainkey.t. IN TXT "{rsa["txt"][:200]}" "{rsa["txt"][200:]}"\n'
                        + f's2._domainkey.t. IN TXT "{ed["txt"]}; t=y"\n')
    keys = [entry(rsa, "t", "s1"), entry(ed, "t", "s2"),
            {"domain": "t", "selector": "s3", "key_file": str(tmp_path / "t.s3.pem")}]
    code, results = check(dns_server, keys)
    assert code == 0, results
    assert [(r["status"], r["algorithm"], r["bits"], r["testing"]) for r in results] == [
        ("ok", "rsa", 2048, False), ("ok", "ed25519", 256, True), ("ok", "rsa", 2048, False)]
    table = mxroute("dkim", "check", "--dns", dns_server.address,
                    MXROUTE_DKIM_KEYS=json.dumps(keys))
    assert table.returncode == 0 and table.stdout.count(" ok ") == 3, table.stdout


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    made = keygen(tmp_path, "t", "s1")
    before = Path(made["key_file"]).read_bytes()
    again = mxroute("dkim", "keygen", "t", "s1", "--dir", str(tmp_path))
    assert again.returncode == 73 and "not overwritten" in again.stderr
    assert Path(made["key_file"]).read_bytes() == before


def test_keygen_group_writes_0640(tmp_path: Path) -> None:
    """--group G: mode 0640, group G (the documented root:mxroute layout)."""
    group = grp.getgrgid(os.getgid()).gr_name
    made = keygen(tmp_path, "t", "s1", "--group", group, "--algorithm", "ed25519")
    info = Path(made["key_file"]).stat()
    assert info.st_mode & 0o777 == 0o640 and info.st_gid == os.getgid()
    bad = mxroute("dkim", "keygen", "t", "s2", "--dir", str(tmp_path), "--group", "no-such-grp")
    assert bad.returncode == 64 and not (tmp_path / "t.s2.pem").exists()


def test_check_problems_exit_69(tmp_path: Path, dns_server: DNSServer) -> None:
    """mismatch, revoked (empty p=), invalid (garbage), missing (NXDOMAIN and NODATA): exit 69."""
    mine = keygen(tmp_path, "t", "a")
    other = keygen(tmp_path, "t", "b")
    dns_server.set_zone("$ORIGIN .\n$TTL 300\n" + SOA
                        + f'a._domainkey.t. IN TXT {quoted(other["txt"])}\n'
                        + 'r._domainkey.t. IN TXT "v=DKIM1; k=rsa; p="\n'
                        + 'g._domainkey.t. IN TXT "v=DKIM1; k=rsa; p=!!not base64\\007"\n'
                        + 'nodata._domainkey.t. IN A 127.0.0.1\n')
    keys = [entry(mine, "t", sel) for sel in ("a", "r", "g", "gone", "nodata")]
    code, results = check(dns_server, keys)
    assert code == 69
    assert [r["status"] for r in results] == ["mismatch", "revoked", "invalid", "missing",
                                              "missing"]
    table = mxroute("dkim", "check", "--dns", dns_server.address,
                    MXROUTE_DKIM_KEYS=json.dumps(keys))
    assert table.returncode == 69 and "\x07" not in table.stdout


def test_check_dns_trouble_exit_75(tmp_path: Path, dns_server: DNSServer) -> None:
    """SERVFAIL and timeout: temporary-failure, exit 75 when nothing worse was found."""
    made = keygen(tmp_path, "t", "a")
    dns_server.set_zone("$ORIGIN .\n$TTL 300\n" + SOA)
    dns_server.fail("a._domainkey.t")
    dns_server.fail("b._domainkey.t", "TIMEOUT")
    code, results = check(dns_server, [entry(made, "t", "a"), entry(made, "t", "b")])
    assert code == 75
    assert [r["status"] for r in results] == ["temporary-failure", "temporary-failure"]
    code, _ = check(dns_server, [entry(made, "t", "a"), entry(made, "t", "gone")])
    assert code == 69


def test_check_without_keys_and_bad_settings(dns_server: DNSServer) -> None:
    done = mxroute("dkim", "check", "--dns", dns_server.address)
    assert done.returncode == 0 and "no DKIM keys configured" in done.stdout
    bad = mxroute("dkim", "check", MXROUTE_DKIM_KEYS='[{"domain": "t", "selector": "a_b", '
                                                     '"key_file": "/x"}]')
    assert bad.returncode == 78 and len(bad.stderr.splitlines()) == 1
    assert "dkim_keys" in bad.stderr and "a_b" in bad.stderr


def test_opendkim_testkey_agrees(tmp_path: Path) -> None:
    """An independent peer (OpenDKIM's opendkim-testkey, opendkim-tools) agrees with `dkim check`
    on ok, mismatch and missing, for an mxroute key (PKCS#8) and an openssl one (PKCS#1).

    opendkim.conf's ``Nameservers`` takes ``ADDRESS@PORT`` (Debian builds OpenDKIM with
    libunbound, whose forwarders take a port): the loopback server listens on 127.0.54.1 and an
    ephemeral port, no root needed.
    """
    # Debian installs it in /usr/sbin, which a clean environment's PATH leaves out (.ci/run)
    testkey = shutil.which("opendkim-testkey", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if testkey is None or shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("opendkim-testkey (opendkim-tools) or openssl is missing")
        pytest.skip("opendkim-testkey (opendkim-tools) or openssl is missing")
    ours = keygen(tmp_path, "t", "s1")
    foreign = tmp_path / "foreign.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(foreign), "2048"],
                   check=True, capture_output=True, timeout=60)
    foreign.chmod(0o600)
    zone = "$ORIGIN .\n$TTL 300\n" + SOA + f"s1._domainkey.t. IN TXT {quoted(ours['txt'])}\n"
    server = DNSServer(host="127.0.54.1", zone=zone).start()
    try:
        conf = tmp_path / "opendkim.conf"
        conf.write_text(f"Nameservers {server.host}@{server.port}\n")
        cases = [("s1", ours["key_file"], "ok", 0), ("s1", str(foreign), "mismatch", 65),
                 ("gone", ours["key_file"], "missing", 69)]
        for selector, key_file, status, peer_code in cases:
            peer = subprocess.run([testkey, "-x", str(conf), "-d", "t", "-s", selector,
                                   "-k", key_file], capture_output=True, text=True, timeout=60,
                                  check=False)
            assert peer.returncode == peer_code, (selector, key_file, peer.stdout, peer.stderr)
            code, results = check(server, [{"domain": "t", "selector": selector,
                                             "key_file": key_file}])
            assert results[0]["status"] == status and code == (0 if status == "ok" else 69)
    finally:
        server.stop()


def test_check_reports_key_problems(tmp_path: Path, dns_server: DNSServer) -> None:
    """A group/world-readable key: a warning line; an unreadable key: mismatch with the reason;
    a catch-all key: said to have no DNS name of its own."""
    made = keygen(tmp_path, "t", "a")
    dns_server.set_zone("$ORIGIN .\n$TTL 300\n" + SOA
                        + f"a._domainkey.t. IN TXT {quoted(made['txt'])}\n")
    Path(made["key_file"]).chmod(0o644)
    keys = [entry(made, "t", "a"),
            {"domain": "t", "selector": "a", "key_file": str(tmp_path / "x")},
            {"domain": "*", "selector": "a", "key_file": made["key_file"]}]
    done = mxroute("dkim", "check", "--dns", dns_server.address,
                   MXROUTE_DKIM_KEYS=json.dumps(keys))
    assert done.returncode == 69, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and " ok " in lines[0], lines
    assert "mismatch" in lines[1] and "cannot read" in lines[1], lines
    assert "mode 0644 lets others read it" in done.stderr and "catch-all" in done.stderr

"""DKIM key tools, issue 14 §2: records (PURE) and keys made by cryptography and by openssl."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mxroute.identity.dkim.keys import KeyProblem, generate, load_key, write_key
from mxroute.identity.dkim.record import (
    RecordError,
    build_txt,
    dns_name,
    parse_record,
    split_txt,
    zone_line,
)


def test_split_txt_at_255_octets() -> None:
    text = "v=DKIM1; k=rsa; p=" + "A" * 600
    parts = split_txt(text)
    assert [len(p) for p in parts] == [255, 255, len(text) - 510]
    assert "".join(parts) == text
    assert split_txt("short") == ["short"]


def test_zone_line_shape() -> None:
    line = zone_line("s1", "example.com", "v=DKIM1; k=rsa; p=" + "B" * 300)
    assert line.startswith('s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=B')
    assert line.endswith('" )') and line.count('"') == 4
    assert dns_name("s1", "example.com") == "s1._domainkey.example.com"


def test_parse_record_tags() -> None:
    record = parse_record("v=DKIM1; k=ed25519; t=y:s; h=sha256; s=email; p=" +
                          base64.b64encode(b"x" * 32).decode() + " ")
    assert record.key_type == "ed25519" and record.testing and record.public == b"x" * 32
    assert record.hashes == ("sha256",) and record.services == ("email",)
    default = parse_record("p=AAAA")
    assert default.key_type == "rsa" and not default.testing and not default.revoked
    assert parse_record("v=DKIM1; p=").revoked
    # whitespace inside p= (folded in zone files) is ignored, RFC 6376 §3.6.1
    assert parse_record("p=AA AA").public == b"\0\0\0"


@pytest.mark.parametrize("text", ["garbage", "v=DKIM2; p=AAAA", "k=rsa", "p=!!!!",
                                  "p=AAAA; p=AAAA", "=x; p=AAAA"])
def test_parse_record_invalid(text: str) -> None:
    with pytest.raises(RecordError):
        parse_record(text)


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, fmt: str) -> bytes:
    form = (serialization.PrivateFormat.TraditionalOpenSSL if fmt == "pkcs1"
            else serialization.PrivateFormat.PKCS8)
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


@pytest.mark.parametrize(("algorithm", "bits", "fmt"), [
    ("rsa", 1024, "pkcs1"), ("rsa", 2048, "pkcs1"), ("rsa", 2048, "pkcs8"),
    ("ed25519", 256, "pkcs8"),
])
def test_load_cryptography_keys(tmp_path: Path, algorithm: str, bits: int, fmt: str) -> None:
    key = generate(algorithm, bits)
    path = tmp_path / "k.pem"
    path.write_bytes(_pem(key, fmt))
    path.chmod(0o600)
    loaded = load_key(path)
    assert (loaded.algorithm, loaded.bits) == (algorithm, bits)
    assert bool(loaded.warnings) == (bits == 1024)
    public = base64.b64decode(loaded.public_b64())
    if algorithm == "ed25519":
        assert len(public) == 32  # RFC 8463: the raw key
    else:
        assert serialization.load_der_public_key(public).public_numbers() == \
            key.public_key().public_numbers()  # type: ignore[union-attr]
    assert build_txt(loaded.algorithm, loaded.public_b64()).startswith(f"v=DKIM1; k={algorithm}")


OPENSSL = [
    ("genrsa-2048", ["openssl", "genrsa", "-traditional", "-out", "{}", "2048"], "rsa", 2048),
    ("genpkey-rsa", ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                     "rsa_keygen_bits:1024", "-out", "{}"], "rsa", 1024),
    ("genpkey-ed25519", ["openssl", "genpkey", "-algorithm", "ed25519", "-out", "{}"],
     "ed25519", 256),
]


@pytest.mark.parametrize(("name", "command", "algorithm", "bits"), OPENSSL,
                         ids=[o[0] for o in OPENSSL])
def test_load_openssl_keys(tmp_path: Path, name: str, command: list[str], algorithm: str,
                           bits: int) -> None:
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is missing")
        pytest.skip("openssl is missing")
    path = tmp_path / f"{name}.pem"
    subprocess.run([part.format(path) for part in command], check=True, capture_output=True,
                   timeout=60)
    path.chmod(0o600)
    loaded = load_key(path)
    assert (loaded.algorithm, loaded.bits) == (algorithm, bits)
    if name == "genrsa-2048":
        assert b"BEGIN RSA PRIVATE KEY" in path.read_bytes()  # PKCS#1


def test_key_problems_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(KeyProblem, match="cannot read"):
        load_key(missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(KeyProblem, match="not a PEM private key"):
        load_key(junk)
    small = tmp_path / "small.pem"
    small.write_bytes(_small_key())  # cryptography refuses to make one this small
    with pytest.raises(KeyProblem, match="under 1024"):
        load_key(small)


def _small_key() -> bytes:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    done = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                           "rsa_keygen_bits:512"], check=True, capture_output=True, timeout=60)
    return done.stdout


def test_write_key_mode_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    write_key(generate("ed25519"), path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_key(path).warnings == ()
    with pytest.raises(FileExistsError):
        write_key(generate("ed25519"), path)
    path.chmod(0o644)
    assert any("others" in w for w in load_key(path).warnings)
    path.chmod(0o640)
    assert any("group" in w for w in load_key(path).warnings)
    assert load_key(path, allowed_group=path.stat().st_gid).warnings == ()

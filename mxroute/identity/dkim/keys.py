"""DKIM private keys: load PEM (PKCS#1 or PKCS#8; RSA or Ed25519), the public ``p=``, and problems.

Keys made by ``mxroute dkim keygen``, openssl or OpenDKIM load alike. Problems are one line each:
an unreadable or unusable key is an error (``KeyProblem``); a weak or exposed one a warning.
"""

from __future__ import annotations

import base64
import grp
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

MIN_RSA_BITS = 1024  # refused below (RFC 8301 §3.2)
GOOD_RSA_BITS = 2048  # warned below
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyProblem(Exception):
    """A key that cannot be used: one line naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class DkimPrivateKey:
    """A loaded key: ``algorithm`` is ``rsa`` or ``ed25519`` (the record's ``k=``)."""

    path: Path
    key: PrivateKey
    warnings: tuple[str, ...] = field(default=())

    @property
    def algorithm(self) -> str:
        return "rsa" if isinstance(self.key, rsa.RSAPrivateKey) else "ed25519"

    @property
    def bits(self) -> int:
        return self.key.key_size if isinstance(self.key, rsa.RSAPrivateKey) else 256

    def public_der(self) -> bytes:
        """What ``p=`` carries: RSA SubjectPublicKeyInfo DER; Ed25519 raw 32 bytes (RFC 8463)."""
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            return public.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_b64(self) -> str:
        return base64.b64encode(self.public_der()).decode("ascii")


def load_key(path: Path, *, allowed_group: int | None = None) -> DkimPrivateKey:
    """Read and check the key at ``path``; KeyProblem (one line) when it cannot be used.

    Group-readable is fine when the file's group is ``allowed_group`` (root:mxroute 0640, the
    documented layout); otherwise group- or world-readable is a warning.
    """
    try:
        data = path.read_bytes()
        mode = path.stat()
    except OSError as exc:
        raise KeyProblem(f"DKIM key {path}: cannot read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        reason = "encrypted (no passphrase support)" if isinstance(exc, TypeError) else \
            "not a PEM private key (PKCS#1 or PKCS#8)"
        raise KeyProblem(f"DKIM key {path}: {reason}") from None
    except UnsupportedAlgorithm as exc:
        raise KeyProblem(f"DKIM key {path}: cannot load: {exc}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyProblem(f"DKIM key {path}: {type(key).__name__} is not RSA or Ed25519")
    warnings: list[str] = []
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"DKIM key {path}: RSA {key.key_size} bits is under "
                             f"{MIN_RSA_BITS} (refused, RFC 8301)")
        if key.key_size < GOOD_RSA_BITS:
            warnings.append(f"DKIM key {path}: RSA {key.key_size} bits is under {GOOD_RSA_BITS}")
    exposed = mode.st_mode & (stat.S_IRWXO | (0 if mode.st_gid == allowed_group else stat.S_IRWXG))
    if exposed:
        warnings.append(f"DKIM key {path}: mode {stat.S_IMODE(mode.st_mode):04o} lets "
                        f"{'others' if mode.st_mode & stat.S_IRWXO else 'its group'} read it "
                        "(0600, or 0640 root:mxroute)")
    return DkimPrivateKey(path, key, tuple(warnings))


def service_gid() -> int | None:
    """The group ``mxroute`` (the documented key-file group, 0640 root:mxroute), if it exists."""
    try:
        return grp.getgrnam("mxroute").gr_gid
    except KeyError:
        return None


def generate(algorithm: str, bits: int = GOOD_RSA_BITS) -> PrivateKey:
    """A new private key (``rsa`` with ``bits``, or ``ed25519``)."""
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_key(key: PrivateKey, path: Path, *, group: int | None = None) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600 (0640 with ``group``); never over an existing file."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
            os.fchmod(fd, 0o640)
        os.write(fd, pem)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)

"""``DkimSigner``: DKIM-Signature fields for a message (RFC 6376 §5, RFC 8463), keys held in memory.

Canonicalization and header selection are ``canon``'s (relaxed/relaxed, oversigning, no
``l=``); the signature step is ``cryptography``'s (OpenSSL): ``rsa-sha256`` is RSASSA-PKCS1-v1_5
over SHA-256, ``ed25519-sha256`` is PureEdDSA over the SHA-256 of the same data (RFC 8463 §3).
The keys are read once (``load``, at start and on SIGHUP) and never again while signing, so a key
file that goes away later changes nothing until the next reload.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mxroute.identity.dkim import canon
from mxroute.identity.dkim.keys import DkimPrivateKey, KeyProblem, load_key, service_gid
from mxroute.identity.dkim.select import signing_keys
from mxroute.settings import DkimKey, Settings

ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
FOLD_AT = 76  # columns of a DKIM-Signature line before it is folded


@dataclass(frozen=True)
class SigningKey:
    """One configured key with its private key loaded."""

    config: DkimKey
    private: DkimPrivateKey

    def d(self, author_domain: str) -> str:
        """``d=``: the key's domain; a catch-all key signs as the author domain."""
        return author_domain if self.config.domain == "*" else self.config.domain


@dataclass
class SigningStats:
    """What was signed (per ``d=``, ``s=``) and how often signing failed; kept across reloads."""

    signed: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: int = 0
    # large messages are signed in worker threads (the intake's executor)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, pairs: Sequence[tuple[str, str]]) -> None:
        """One signature more for each (d=, s=) of ``pairs``."""
        with self._lock:
            self.signed.update(pairs)

    def failed(self) -> None:
        with self._lock:
            self.failures += 1

    def to_json(self) -> dict[str, Any]:
        return {"signed": [[d, s, n] for (d, s), n in sorted(self.signed.items())],
                "failures": self.failures}


class SigningError(Exception):
    """Signing failed at run time (a key OpenSSL refuses): the message must not go unsigned."""


class DkimSigner:
    """Signs with the configured keys; counts what it signed (per ``d=``/``s=``) and failures."""

    def __init__(
        self, keys: Sequence[SigningKey], *, expire_seconds: int | None = None,
        clock: Callable[[], float] = time.time, stats: SigningStats | None = None,
    ) -> None:
        self.keys = tuple(keys)
        self.expire_seconds = expire_seconds
        self.clock = clock
        self.stats = stats or SigningStats()

    @classmethod
    def load(cls, settings: Settings, *, stats: SigningStats | None = None,
             tolerant: bool = False) -> tuple[DkimSigner, list[str]]:
        """Read every ``dkim_keys`` file: the signer and the warnings (one line each).

        KeyProblem (one line naming the key) when one cannot be used, and nothing is half-loaded;
        ``tolerant``: that key is left out instead, its problem one more warning.
        """
        loaded, warnings = [], []
        group = service_gid()
        for config in settings.dkim_keys:
            try:
                private = load_key(config.key_file, allowed_group=group)
            except KeyProblem as exc:
                if not tolerant:
                    raise
                warnings.append(f"{exc.message}; mail for {config.domain} is not signed with it")
                continue
            warnings += private.warnings
            loaded.append(SigningKey(config, private))
        return cls(loaded, expire_seconds=settings.dkim_expire_seconds, stats=stats), warnings

    def keys_for(self, author_domain: str) -> list[SigningKey]:
        """The keys that sign mail from ``author_domain``: RSA first, then Ed25519 (RFC 8463)."""
        chosen = {id(config) for config in signing_keys([key.config for key in self.keys],
                                                         author_domain)}
        keys = [key for key in self.keys if id(key.config) in chosen]
        return sorted(keys, key=lambda key: key.private.algorithm != "rsa")

    def sign(self, message: bytes, keys: Sequence[SigningKey], author_domain: str) -> bytes:
        """The DKIM-Signature fields (CRLF-terminated) to put on top of ``message``, one per key,
        in ``keys``' order. canon.ParseError for a header that is not header fields; SigningError
        when a signature cannot be made (counted)."""
        return self.sign_parsed(canon.split_message(message), keys, author_domain)

    def sign_parsed(self, parsed: canon.Parsed, keys: Sequence[SigningKey],
                    author_domain: str) -> bytes:
        """As ``sign``, for a message already split by ``canon.split_message``."""
        names = canon.header_list(parsed)
        headers = canon.signed_headers(parsed, names)
        body_hash = base64.b64encode(hashlib.sha256(canon.relaxed_body(parsed.body)).digest())
        now = int(self.clock())
        out = []
        for key in keys:
            domain = key.d(author_domain)
            value = _value(ALGORITHMS[key.private.algorithm], domain, key.config.selector, now,
                           self.expire_seconds, names, body_hash.decode("ascii"))
            data = headers + canon.relaxed_header(b"DKIM-Signature", value)[:-2]
            try:
                signature = _signature(key.private, data)
            except Exception as exc:
                self.stats.failed()
                raise SigningError(f"DKIM key {key.private.path}: cannot sign: {exc}") from exc
            out.append(b"DKIM-Signature:" + value + _fold_b64(signature) + b"\r\n")
        self.stats.count([(key.d(author_domain), key.config.selector) for key in keys])
        return b"".join(out)


def _signature(key: DkimPrivateKey, data: bytes) -> bytes:
    if isinstance(key.key, rsa.RSAPrivateKey):
        return key.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.key.sign(hashlib.sha256(data).digest())  # RFC 8463 §3: Ed25519 of the hash


def _value(algorithm: str, domain: str, selector: str, now: int, expire: int | None,
           names: list[str], body_hash: str) -> bytes:
    """The field's value up to an empty ``b=``, folded (CRLF TAB) before FOLD_AT columns."""
    tags = ["v=1;", f"a={algorithm};", "c=relaxed/relaxed;", f"d={domain};", f"s={selector};",
            f"t={now};"]
    if expire is not None:
        tags.append(f"x={now + expire};")
    tags += [f"h={':'.join(names)};", f"bh={body_hash};", "b="]
    lines, line = [], ""
    for tag in tags:
        pieces = tag.split(":") if tag.startswith("h=") else [tag]
        for n, piece in enumerate(pieces):
            word = piece + (":" if n < len(pieces) - 1 else "")
            sep = "" if n else " "
            if len(line) + len(sep) + len(word) > FOLD_AT and line:
                lines.append(line)
                line, sep = "\t", ""
            line += sep + word
    lines.append(line)
    return "\r\n".join(lines).encode("ascii")


def _fold_b64(signature: bytes) -> bytes:
    """The ``b=`` value, 64 characters a line (its folding is ignored by verifiers, §3.5)."""
    text = base64.b64encode(signature)
    return b"\r\n\t".join(text[i:i + 64] for i in range(0, len(text), 64))


__all__ = ["ALGORITHMS", "DkimSigner", "SigningError", "SigningKey", "SigningStats"]

"""DKIM signing, issue 14 §1: mxroute's canonicalizer agrees with dkimpy's on a corpus and under
hypothesis, and every signature DkimSigner makes (RSA, Ed25519, both) verifies with dkimpy.

dkimpy is the independent verifier here; its DNS lookup is answered with the test key's record
(unit tests; the end-to-end tests use the loopback DNS server).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxroute.identity.dkim import canon
from mxroute.identity.dkim.keys import generate, load_key, write_key
from mxroute.identity.dkim.record import build_txt
from mxroute.identity.dkim.sign import DkimSigner, SigningKey
from mxroute.settings import DkimKey

CORPUS: list[bytes] = [
    b"From: a@example.com\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nbody\r\n",
    b"From: a@example.com\r\n\r\n",  # empty body
    b"From: a@example.com\r\n",  # no body at all
    b"From: a@example.com\r\n\r\nno final newline",
    b"From: a@example.com\r\n\r\nline\r\n\r\n\r\n\r\n",  # trailing blank lines
    b"From: a@example.com\r\n\r\n\r\n\r\n",  # only blank lines
    b"From: a@example.com\r\n\r\n.dot\r\n..two\r\n.\r\n",  # lines starting with a dot
    b"From: a@example.com\r\n\r\n  lead \t\t mid  \t\r\n\t\r\n x \r\n",  # WSP runs
    b"From: a@example.com\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe \xff\r\n",
    b"From: a@example.com\r\nSubject:  folded\r\n\t  over\r\n   three lines  \r\n\r\nx\r\n",
    b"From:a@example.com\r\nSubject:no space after\r\nTO: B@dest.test\r\n\r\nx\r\n",
    b"From: a@example.com\r\nX-Long: " + b"y" * 990 + b"\r\n\r\nx\r\n",
    b"From: a@example.com\r\nReferences: " + b" ".join(b"<%d@x.test>" % i for i in range(300))
    .replace(b" ", b"\r\n ") + b"\r\n\r\nx\r\n",
    (b"From: a@example.com\r\nTo: one@x.test\r\nTo: two@x.test\r\nCc: c@x.test\r\n"
    b"List-Unsubscribe: <https://x.test/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click"
    b"\r\n\r\nx\r\n"),
    b"From: a@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n\r\nbody after empty line\r\n",
    b"From: a@example.com\r\nX-Empty:\r\nX-Spaces:   \r\n\r\nx\r\n",
]


def key_files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for algorithm in ("rsa", "ed25519"):
        path = tmp_path / f"{algorithm}.pem"
        write_key(generate(algorithm), path)
        out[algorithm] = path
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    files = key_files(tmp_path_factory.mktemp("keys"))
    return {alg: SigningKey(DkimKey(domain="example.com", selector=f"s-{alg}", key_file=path),
                            load_key(path)) for alg, path in files.items()}


def dnsfunc(keys: dict[str, SigningKey]) -> Callable[..., bytes]:
    records = {f"s-{alg}._domainkey.example.com.".encode():
               build_txt(alg, key.private.public_b64()).encode() for alg, key in keys.items()}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return lookup


def verify_all(message: bytes, count: int, keys: dict[str, SigningKey]) -> list[bool]:
    checker = dkim.DKIM(message)
    return [checker.verify(idx=i, dnsfunc=dnsfunc(keys)) for i in range(count)]


@pytest.mark.parametrize("message", CORPUS, ids=range(len(CORPUS)))
def test_canonicalization_agrees_with_dkimpy(message: bytes) -> None:
    """Issue 14 §1: relaxed header and body canonicalization as dkimpy's, on the corpus."""
    parsed = canon.split_message(message)
    headers, body = dkim.rfc822_parse(message)
    assert canon.relaxed_body(parsed.body) == Relaxed.canonicalize_body(body)
    ours = [canon.relaxed_header(name, value) for name, value in parsed.fields]
    theirs = [name + b":" + value for name, value in Relaxed.canonicalize_headers(headers)]
    assert ours == theirs


@pytest.mark.parametrize("message", CORPUS, ids=range(len(CORPUS)))
def test_every_signature_verifies_with_dkimpy(message: bytes, keys: dict[str, SigningKey]) -> None:
    """Issue 14 §1: RSA then Ed25519 on top (RFC 8463 dual signing); both verify with dkimpy."""
    signer = DkimSigner(list(keys.values()))
    chosen = signer.keys_for("example.com")
    assert [k.private.algorithm for k in chosen] == ["rsa", "ed25519"]
    signed = signer.sign(message, chosen, "example.com") + message
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert signed.count(b"DKIM-Signature:") == 2 and b"; l=" not in signed
    assert b"a=ed25519-sha256" in signed.split(b"DKIM-Signature:")[2]
    assert verify_all(signed, 2, keys) == [True, True]
    assert all(len(line) <= 998 for line in signed.split(b"\r\n"))


def test_oversigned_headers_cannot_be_added(keys: dict[str, SigningKey]) -> None:
    """Oversigning: a second Subject, or a List-Unsubscribe added later, breaks the signature."""
    message = CORPUS[0]
    signer = DkimSigner([keys["rsa"]])
    signed = signer.sign(message, [keys["rsa"]], "example.com") + message
    head = signed.split(b"\r\n\tbh=")[0]
    h = canon.tags(signed.split(b"DKIM-Signature:")[1].split(b"\r\n\r\n")[0])["h"].split(":")
    assert h.count("subject") == 2 and h.count("from") == 2 and h.count("to") == 2
    assert "list-unsubscribe" in h and "list-unsubscribe-post" in h and "received" not in h
    assert b"h=" in head
    assert verify_all(signed, 1, keys) == [True]
    for added in (b"Subject: other\r\n", b"List-Unsubscribe: <mailto:u@evil.test>\r\n",
                  b"Reply-To: evil@evil.test\r\n"):
        tampered = signed.replace(b"\r\n\r\nbody", b"\r\n" + added + b"\r\nbody")
        assert verify_all(tampered, 1, keys) == [False], added
    # a Received: added on the way does not matter
    assert verify_all(b"Received: from x by y; now\r\n" + signed, 1, keys) == [True]


def test_expiry_tag(keys: dict[str, SigningKey]) -> None:
    """dkim_expire_seconds → x= = t= + the setting."""
    signer = DkimSigner([keys["ed25519"]], expire_seconds=600000, clock=lambda: 1_700_000_000.0)
    value = signer.sign(CORPUS[0], [keys["ed25519"]], "example.com")
    found = canon.tags(value.split(b":", 1)[1])
    assert (found["t"], found["x"]) == ("1700000000", str(1_700_000_000 + 600000))
    assert signer.stats.signed[("example.com", "s-ed25519")] == 1


def test_catch_all_signs_as_the_author_domain(keys: dict[str, SigningKey]) -> None:
    star = SigningKey(DkimKey(domain="*", selector="s-rsa", key_file=Path("x")),
                      keys["rsa"].private)
    signer = DkimSigner([star])
    assert signer.keys_for("Other.Test") == [star]
    value = signer.sign(CORPUS[0], [star], "other.test")
    assert canon.tags(value.split(b":", 1)[1])["d"] == "other.test"


def test_existing_signatures_found(keys: dict[str, SigningKey]) -> None:
    signer = DkimSigner([keys["rsa"]])
    signed = signer.sign(CORPUS[0], [keys["rsa"]], "example.com") + CORPUS[0]
    assert canon.existing_signatures(canon.split_message(signed)) == {("example.com", "s-rsa")}


@pytest.mark.parametrize(("value", "domain"), [
    (b"a@Example.COM", "example.com"),
    (b'"b@evil.test" <a@example.com>', "example.com"),
    (b'"x <b@evil.test>" <a@example.com>', "example.com"),
    (b"=?utf-8?q?b@evil.test?= <a@example.com>", "example.com"),
    (b"Ann (b@evil.test <c@evil.test>) <a@example.com>", "example.com"),
    (b"a@example.com (Ann)", "example.com"),
    (b"a@example.com,\r\n b@example.com", "example.com"),
    (b"<@hop.test:a@example.com>", "example.com"),
    (b"a@b\xc3\xbccher.test", "xn--bcher-kva.test"),
])
def test_author_domain(value: bytes, domain: str) -> None:
    """Issue 14 hostile cases: comments, encoded words, a display name that looks like an address
    never decide the domain; only the addr-spec does."""
    assert canon.author_domain(canon.split_message(b"From: " + value + b"\r\n\r\n")) == domain


@pytest.mark.parametrize(("message", "why"), [
    (b"To: a@example.com\r\n\r\n", "no From:"),
    (b"From: a@example.com\r\nFrom: b@example.com\r\n\r\n", "2 From:"),
    (b"From: a@example.com, b@evil.test\r\n\r\n", "more than one domain"),
    (b"From: Undisclosed:;\r\n\r\n", "no address"),
    (b'From: "open <a@example.com>\r\n\r\n', "unclosed"),
    (b"From: nobody\r\n\r\n", "no domain"),
    (b"From: a@[127.0.0.1]\r\n\r\n", "address literal"),
])
def test_author_domain_refused(message: bytes, why: str) -> None:
    with pytest.raises(canon.AuthorError, match=why):
        canon.author_domain(canon.split_message(message))


_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                     blacklist_characters="\r\n"), max_size=60)
_line = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    names = st.sampled_from(["From", "To", "Subject", "cc", "X-Any", "Date", "MIME-Version",
                             "List-Unsubscribe", "Reply-To", "Message-ID"])
    head = [b"From: a@example.com\r\n"]
    for _ in range(draw(st.integers(0, 8))):
        value = draw(_header_text).encode()
        folds = draw(st.lists(_header_text, max_size=2))
        head.append(draw(names).encode() + draw(st.sampled_from([b":", b":  ", b":\t"]))
                    + value + b"".join(b"\r\n" + draw(st.sampled_from([b" ", b"\t"]))
                                       + f.encode() for f in folds) + b"\r\n")
    body = b"\r\n".join(draw(st.lists(_line, max_size=12)))
    body += draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b" \r\n\t\r\n"]))
    return b"".join(head) + b"\r\n" + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_hypothesis_signatures_verify(keys: dict[str, SigningKey], message: bytes) -> None:
    """Issue 14 §1: whatever the headers and body, both signatures verify with dkimpy, and the
    canonical body is dkimpy's."""
    parsed = canon.split_message(message)
    assert canon.relaxed_body(parsed.body) == Relaxed.canonicalize_body(dkim.rfc822_parse(
        message)[1])
    signer = DkimSigner(list(keys.values()))
    signed = signer.sign(message, signer.keys_for("example.com"), "example.com") + message
    assert verify_all(signed, 2, keys) == [True, True]


def test_space_before_colon_is_relaxed_away() -> None:
    """RFC 6376 §3.4.2: WSP before the colon is deleted (obsolete syntax, RFC 5322 §4.5.3)."""
    parsed = canon.split_message(b"Subject \t: x  y \r\n\r\n")
    assert canon.relaxed_header(*parsed.fields[0]) == b"subject:x y\r\n"


def test_not_header_fields() -> None:
    with pytest.raises(canon.ParseError):
        canon.split_message(b"From: a@example.com\r\nno colon here\r\n\r\nx\r\n")


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.text(alphabet='ab.@<>()",;:\\ \té\x00-[]=?', max_size=60).map(str.encode)))
def test_author_domain_of_any_from_is_a_domain_or_a_reason(value: bytes) -> None:
    """Hostile From: values: a normalised domain or AuthorError, never another exception."""
    try:
        domain = canon.author_domain(canon.split_message(b"From: " + value + b"\r\n\r\n"))
    except canon.AuthorError:
        return
    assert domain == domain.lower() and domain.isascii() and "@" not in domain

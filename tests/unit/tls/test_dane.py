"""TLS-7 (DANE, RFC 7672): the pure decision per MX host, TLSA record usability and certificate
matching."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from mxroute.dns.answer import Answer, Outcome
from mxroute.errors import ConfigError
from mxroute.settings import load_settings
from mxroute.settingsrules import check_level
from mxroute.tls import dane, tlsa
from mxroute.tls.contexts import probe_verdict, satisfied
from mxroute.tls.dane import Need
from mxroute.tls.policy import TlsPolicy, policy_for
from mxroute.tls.tlsa import Tlsa

cryptography = pytest.importorskip("cryptography")
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_cert(name: str = "mx.dest.test", days: int = 1) -> tuple[bytes, bytes]:
    """A self-signed leaf: (DER certificate, DER SubjectPublicKeyInfo as cryptography sees it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_bytes(serialization.Encoding.DER), spki


def rr(text: str) -> object:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, text)


def answer(
    qname: str, qtype: str, outcome: Outcome = Outcome.RECORDS, *rrs: object, secure: bool = True,
) -> Answer:
    return Answer(qname, qtype, outcome, tuple(rrs), 300, secure=secure)


def a_secure(secure: bool = True) -> list[Answer | None]:
    a = dns.rdata.from_text(1, 1, "192.0.2.1")
    return [answer("mx.dest.test", "A", Outcome.RECORDS, a, secure=secure), None]


# --- certificates ------------------------------------------------------------------------------

def test_tls7_spki_is_the_subject_public_key_info_of_the_certificate() -> None:
    der, spki = make_cert()
    assert tlsa.spki(der) == spki


@pytest.mark.parametrize("bad", [
    b"", b"\x30", b"\x30\x05\x02\x01\x01", b"\x04\x03abc", b"\x30\x84\xff\xff\xff\xff",
])
def test_tls7_spki_of_garbage_is_a_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        tlsa.spki(bad)


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_tls7_dane_ee_matches_every_selector_and_matching_type(selector: int, mtype: int) -> None:
    der, spki = make_cert()
    other, _ = make_cert()
    selected = der if selector == 0 else spki
    digests = {1: hashlib.sha256, 2: hashlib.sha512}
    data = selected if mtype == 0 else digests[mtype](selected).digest()
    record = Tlsa(3, selector, mtype, data)
    assert record.problem is None
    assert record.matches(der) and not record.matches(other)
    assert dane.peer_problem([record], der) is None
    assert dane.peer_problem([record], other) == (
        "the certificate matches none of 1 DANE-EE record(s)")


def test_tls7_dane_ee_ignores_name_and_expiry() -> None:
    """RFC 7672 §3.1.1: a DANE-EE match is the whole check: any name, even an expired
    certificate."""
    der, spki = make_cert("not-the-mx.example", days=-1)
    assert dane.peer_problem([Tlsa(3, 1, 1, hashlib.sha256(spki).digest())], der) is None


def test_tls7_any_matching_dane_ee_record_authenticates() -> None:
    der, spki = make_cert()
    records = [Tlsa(3, 1, 1, b"\x00" * 32), Tlsa(3, 1, 1, hashlib.sha256(spki).digest())]
    assert dane.peer_problem(records, der) is None
    assert dane.peer_problem(records[:1], der) is not None
    assert dane.peer_problem(records, None) == "the server sent no certificate"


# --- record usability (RFC 7672 §3.1) -----------------------------------------------------

@pytest.mark.parametrize("record, problem", [
    (Tlsa(0, 0, 1, b"\x01" * 32), "PKIX-TA(0) is not used for SMTP"),
    (Tlsa(1, 1, 1, b"\x01" * 32), "PKIX-EE(1) is not used for SMTP"),
    (Tlsa(4, 1, 1, b"\x01" * 32), "unknown certificate usage 4"),
    (Tlsa(3, 2, 1, b"\x01" * 32), "unknown selector 2"),
    (Tlsa(3, 1, 3, b"\x01" * 32), "unknown matching type 3"),
    (Tlsa(3, 1, 1, b"\x01" * 20), "a matching type 1 digest has 32 bytes, not 20"),
    (Tlsa(3, 1, 2, b"\x01" * 32), "a matching type 2 digest has 64 bytes, not 32"),
    (Tlsa(2, 1, 1, b"\x01" * 32), "DANE-TA other than 2 0 0 needs the peer's certificate chain"),
    (Tlsa(2, 0, 0, b"not a certificate"), "not a DER certificate"),
])
def test_tls7_unusable_records_say_why(record: Tlsa, problem: str) -> None:
    assert record.problem is not None and record.problem.startswith(problem)
    assert record.to_json()["usable"] is False


def test_tls7_usage_names_for_explain() -> None:
    names = [Tlsa(usage, 1, 1, b"").usage_name for usage in (0, 1, 2, 3, 4)]
    assert names == ["PKIX-TA", "PKIX-EE", "DANE-TA", "DANE-EE", "4"]


def test_tls7_dane_ta_full_certificate_is_usable_and_gives_a_trust_anchor_context() -> None:
    der, _ = make_cert("Test CA")
    record = Tlsa(2, 0, 0, der)
    assert record.problem is None
    context = dane.ta_context([record])
    assert context is not None and context.check_hostname
    assert context.cert_store_stats()["x509"] == 1
    # DANE-EE present: one unverified handshake, the EE records decide
    assert dane.ta_context([record, Tlsa(3, 1, 1, b"\x02" * 32)]) is None
    assert dane.peer_problem([record], None) is None  # TA only: the handshake checked it


# --- the decision per host (RFC 7672 §2.2) ------------------------------------------------

TLSA_NAME = "_25._tcp.mx.dest.test"


def test_tls7_tlsa_name_uses_the_port() -> None:
    assert dane.tlsa_name("mx.dest.test", 25) == TLSA_NAME
    assert dane.tlsa_name("mx.dest.test", 2525) == "_2525._tcp.mx.dest.test"


def test_tls7_usable_record_means_authenticated_tls() -> None:
    records = rr("3 1 1 " + "ab" * 32), rr("1 1 1 " + "cd" * 32)
    tlsa = answer(TLSA_NAME, "TLSA", Outcome.RECORDS, *records)
    host = dane.decide_host("mx.dest.test", mx_secure=True, addresses=a_secure(), tlsa=tlsa)
    assert host.need is Need.DANE and [r.text for r in host.usable] == ["3 1 1 " + "ab" * 32]
    body = host.to_json()
    assert body["requirement"] == "dane" and body["tlsa_secure"] is True
    assert len(body["records"]) == 2
    assert [r["usable"] for r in body["records"]] == [True, False]


def test_tls7_only_unusable_records_mean_tls_without_authentication() -> None:
    records = rr("1 1 1 " + "cd" * 32), rr("0 0 1 " + "ef" * 32)
    tlsa = answer(TLSA_NAME, "TLSA", Outcome.RECORDS, *records)
    host = dane.decide_host("mx.dest.test", mx_secure=True, addresses=a_secure(), tlsa=tlsa)
    assert host.need is Need.ENCRYPT and host.usable == ()


@pytest.mark.parametrize("outcome", [Outcome.SERVFAIL, Outcome.TIMEOUT])
def test_tls7_failed_tlsa_lookup_defers_that_host(outcome: Outcome) -> None:
    tlsa = answer(TLSA_NAME, "TLSA", outcome, secure=False)
    host = dane.decide_host("mx.dest.test", mx_secure=True, addresses=a_secure(), tlsa=tlsa)
    assert host.need is Need.DEFER and outcome.value in host.reason


@pytest.mark.parametrize("outcome", [Outcome.NODATA, Outcome.NXDOMAIN])
def test_tls7_no_tlsa_records_is_may(outcome: Outcome) -> None:
    host = dane.decide_host("mx.dest.test", mx_secure=True, addresses=a_secure(),
                            tlsa=answer(TLSA_NAME, "TLSA", outcome))
    assert host.need is Need.MAY and "secure denial" in host.reason


def test_tls7_insecure_tlsa_records_are_ignored() -> None:
    tlsa = answer(TLSA_NAME, "TLSA", Outcome.RECORDS, rr("3 1 1 " + "ab" * 32), secure=False)
    host = dane.decide_host("mx.dest.test", mx_secure=True, addresses=a_secure(), tlsa=tlsa)
    assert host.need is Need.MAY and "not DNSSEC-validated" in host.reason


def test_tls7_insecure_mx_or_addresses_mean_no_dane() -> None:
    tlsa = answer(TLSA_NAME, "TLSA", Outcome.RECORDS, rr("3 1 1 " + "ab" * 32))
    host = dane.decide_host("mx.dest.test", mx_secure=False, addresses=a_secure(), tlsa=tlsa)
    assert host.need is Need.MAY and "§2.2.1" in host.reason
    host = dane.decide_host("mx.dest.test", mx_secure=True, addresses=a_secure(False), tlsa=tlsa)
    assert host.need is Need.MAY and "§2.2.2" in host.reason and not host.addresses_secure


def test_tls7_tlsa_wanted_only_with_secure_mx_and_addresses() -> None:
    mx = answer("dest.test", "MX", Outcome.RECORDS)
    assert dane.wants_tlsa(mx, a_secure())
    assert not dane.wants_tlsa(answer("dest.test", "MX", secure=False), a_secure())
    assert not dane.wants_tlsa(mx, a_secure(False))
    # no address at all
    assert not dane.wants_tlsa(mx, [answer("mx.dest.test", "A", Outcome.NODATA), None])
    # one insecure family spoils the host (§2.2.2)
    mixed = [a_secure()[0], answer("mx.dest.test", "AAAA", Outcome.RECORDS, secure=False)]
    assert not dane.wants_tlsa(mx, mixed)


def test_tls7_posture_implicit_mx_needs_a_secure_denial() -> None:
    mx = answer("dest.test", "MX", Outcome.NODATA)
    posture = dane.posture("dest.test", mx, {"dest.test": a_secure()}, {})
    assert posture.mx_secure and posture.to_json()["hosts"][0]["requirement"] == "may"
    servfail = answer("dest.test", "MX", Outcome.SERVFAIL)
    assert not dane.posture("dest.test", servfail, {}, {}).mx_secure


# --- what the courier does with it --------------------------------------------------------

def posture_of(need_tlsa: Answer | None) -> dane.DanePosture:
    return dane.posture("dest.test", answer("dest.test", "MX"), {"mx.dest.test": a_secure()},
                        {"mx.dest.test": need_tlsa} if need_tlsa else {})


def test_tls7_host_policy_dane_overrides_the_domain_policy() -> None:
    posture = posture_of(answer(TLSA_NAME, "TLSA", Outcome.RECORDS, rr("3 1 1 " + "ab" * 32)))
    # RFC 8461 §2: DANE over MTA-STS
    for domain_policy in (TlsPolicy("dane"), TlsPolicy("verify"), TlsPolicy("may")):
        policy = dane.host_policy(domain_policy, posture, "mx.dest.test")
        assert policy.level == "dane" and policy.required and len(policy.tlsa) == 1
        assert policy.source == "dane" and policy.match == TLSA_NAME
    other = dane.host_policy(TlsPolicy("dane"), posture, "mx2.dest.test")
    assert other == TlsPolicy("dane") and not other.required  # not in the posture: as may
    assert dane.host_policy(TlsPolicy("dane"), None, "mx.dest.test") == TlsPolicy("dane")


def test_tls7_host_policy_unusable_only_is_encrypt_and_failed_lookup_is_a_deferral() -> None:
    posture = posture_of(answer(TLSA_NAME, "TLSA", Outcome.RECORDS, rr("1 1 1 " + "ab" * 32)))
    assert dane.host_policy(TlsPolicy("dane"), posture, "mx.dest.test") == (
        TlsPolicy("encrypt", "dane", TLSA_NAME))
    assert dane.deferral(posture, "mx.dest.test", "mx.dest.test[192.0.2.1]:25") is None
    posture = posture_of(answer(TLSA_NAME, "TLSA", Outcome.SERVFAIL, secure=False))
    assert dane.deferral(posture, "mx.dest.test", "mx.dest.test[192.0.2.1]:25") == (
        f"451 4.7.5 DANE: TLSA lookup {TLSA_NAME} failed (SERVFAIL): "
        "not delivering to mx.dest.test[192.0.2.1]:25")


def test_tls7_pooled_session_must_be_dane_authenticated_for_that_host() -> None:
    policy = TlsPolicy("dane", "dane", TLSA_NAME, tlsa=(Tlsa(3, 1, 1, b"\x01" * 32),))
    assert not satisfied(policy, tls=True, verified_name=None, exchange="mx.dest.test")
    # PKIX only
    assert not satisfied(policy, tls=True, verified_name="mx.dest.test", exchange="mx.dest.test")
    assert satisfied(policy, tls=True, verified_name=None, exchange="mx.dest.test",
                     dane_name="mx.dest.test")
    assert not satisfied(policy, tls=True, verified_name=None, exchange="mx.dest.test",
                         dane_name="mx2.dest.test")
    # and a DANE-matched (perhaps self-signed) session never passes for PKIX verify (TLS-3)
    assert not satisfied(TlsPolicy("verify"), tls=True, verified_name=None, exchange="mx.dest.test",
                         dane_name="mx.dest.test")
    # unresolved: may
    assert satisfied(TlsPolicy("dane"), tls=False, verified_name=None, exchange="mx.dest.test")


def test_tls7_probe_verdict_for_dane_levels() -> None:
    assert probe_verdict(TlsPolicy("dane"), "h", "mx", offered=False)[0] is True
    policy = TlsPolicy("dane", "dane", TLSA_NAME, tlsa=(Tlsa(3, 1, 1, b"\x01" * 32),))
    assert probe_verdict(policy, "h", "mx", offered=False) == (
        False, "451 4.7.5 TLS required (dane) but not offered by h")
    assert probe_verdict(policy, "h", "mx", offered=True) == (
        True, "dane: certificate matched a TLSA record of mx")


# --- settings ---------------------------------------------------------------------------

def test_tls7_dane_is_a_level_and_needs_dns_trust_ad(tmp_path: Path) -> None:
    assert check_level("DANE") == "dane"
    assert policy_for("x.test", "may", {".test": "dane"}).level == "dane"
    with pytest.raises(ConfigError, match="the TLS level dane needs dns_trust_ad = true"):
        load_settings(None, tls_policy="dane")
    with pytest.raises(ConfigError, match="dns_trust_ad"):
        load_settings(None, tls_policy_domains={"bank.test": "dane"})
    settings = load_settings(None, tls_policy="dane", dns_trust_ad=True)
    assert settings.tls_policy == "dane" and settings.dns_trust_ad

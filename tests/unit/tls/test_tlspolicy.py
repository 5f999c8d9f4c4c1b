"""TLS-3: the pure policy lookup, validation and settings (mxroute/tls/policy.py); EXP-3's JSON
shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mxroute.errors import ConfigError
from mxroute.settings import load_settings, normalize_table
from mxroute.tls import policy as tlspolicy
from mxroute.tls.contexts import opportunistic_context, probe_verdict, satisfied, verify_context
from mxroute.tls.policy import TlsPolicy, policy_for
from tests.support.paths import ROOT

TABLE = {"bank.test": "verify", ".bank.test": "encrypt", "legacy.test": "none", ".test": "may"}


@pytest.mark.parametrize(("domain", "level", "source", "match"), [
    ("bank.test", "verify", "tls_policy_domains", "bank.test"),  # exact entry first
    ("BANK.test.", "verify", "tls_policy_domains", "bank.test"),
    # a parent entry covers subdomains
    ("mx.bank.test", "encrypt", "tls_policy_domains", ".bank.test"),
    ("a.b.bank.test", "encrypt", "tls_policy_domains", ".bank.test"),
    ("legacy.test", "none", "tls_policy_domains", "legacy.test"),
    # "legacy.test" alone is not ".legacy.test"
    ("sub.legacy.test", "may", "tls_policy_domains", ".test"),
    ("example.com", "encrypt", "tls_policy", None),  # the default
    ("[192.0.2.1]", "encrypt", "tls_policy", None),
])
def test_tls3_lookup_exact_then_parents_then_default(
    domain: str, level: str, source: str, match: str | None,
) -> None:
    policy = policy_for(domain, "encrypt", TABLE)
    assert (policy.level, policy.source, policy.match) == (level, source, match)


def test_tls3_policy_properties_and_json() -> None:
    assert not TlsPolicy("may").required and not TlsPolicy("none").required
    assert TlsPolicy("encrypt").required and not TlsPolicy("encrypt").verify
    assert TlsPolicy("verify").required and TlsPolicy("verify").verify
    assert TlsPolicy().to_json() == {"policy": "may", "source": "tls_policy"}
    assert TlsPolicy("verify", "tls_policy_domains", "bank.test").to_json() == {
        "policy": "verify", "source": "tls_policy_domains", "match": "bank.test"}
    assert TlsPolicy("verify", "tls_policy_domains", "bank.test").describe() == \
        "verify (from tls_policy_domains: bank.test)"


def test_tls3_satisfied_by_a_session() -> None:
    plain = {"tls": False, "verified_name": None, "exchange": "mx.test"}
    encrypted = {"tls": True, "verified_name": None, "exchange": "mx.test"}
    verified = {"tls": True, "verified_name": "mx.test", "exchange": "MX.test"}
    other = {"tls": True, "verified_name": "mx2.test", "exchange": "mx.test"}
    for level in ("none", "may"):
        assert all(satisfied(TlsPolicy(level), **s) for s in (plain, encrypted, verified))  # type: ignore[arg-type]
    assert (not satisfied(TlsPolicy("encrypt"), **plain)  # type: ignore[arg-type]
            and satisfied(TlsPolicy("encrypt"), **encrypted))  # type: ignore[arg-type]
    assert not satisfied(TlsPolicy("verify"), **encrypted)  # type: ignore[arg-type]
    assert satisfied(TlsPolicy("verify"), **verified)  # type: ignore[arg-type]
    # verified for another MX name
    assert not satisfied(TlsPolicy("verify"), **other)  # type: ignore[arg-type]
    assert not satisfied(TlsPolicy("verify"), tls=True, verified_name="", exchange="")


def test_tls3_table_normalised_and_validated() -> None:
    assert normalize_table({"Bank.TEST.": "VERIFY", ".bücher.test": "encrypt"}) == {
        "bank.test": "verify", ".xn--bcher-kva.test": "encrypt"}
    unknown = r"unknown TLS policy level for bank.test: 'secure' \(one of none, may"
    with pytest.raises(ValueError, match=unknown):
        normalize_table({"bank.test": "secure"})
    with pytest.raises(ValueError, match="is not a domain"):
        normalize_table({"a b.test": "may"})
    with pytest.raises(ValueError, match="is not a domain"):
        normalize_table({".": "may"})
    table = normalize_table({"[127.0.0.1]": "none", "[IPv6:2001:DB8:0::1]": "verify"})
    assert table == {"[127.0.0.1]": "none", "[ipv6:2001:db8::1]": "verify"}
    # as address.py spells the domain
    assert policy_for("[IPv6:2001:db8::1]", "may", table).level == "verify"
    assert policy_for("[127.0.0.1]", "may", table).level == "none"
    with pytest.raises(ValueError, match="is not an address literal"):
        normalize_table({"[300.1.1.1]": "may"})


def test_tls3_failure_replies_are_4_7_5() -> None:
    policy = TlsPolicy("encrypt")
    host = "mx.example[192.0.2.1]:25"
    assert tlspolicy.not_offered(host, policy) == (
        "451 4.7.5 TLS required (encrypt) but not offered by " + host)
    assert tlspolicy.refused(host, policy, "454 4.7.0 no").startswith("451 4.7.5 ")
    failed = tlspolicy.handshake_failed(host, TlsPolicy("verify"), "bad", verification=True)
    assert failed.startswith("451 4.7.5 TLS certificate verification failed for " + host)
    assert tlspolicy.no_name(host).startswith("451 4.7.5 ")


def test_tls3_contexts() -> None:
    import ssl

    loose = opportunistic_context()
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    strict = verify_context()
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname


# --- settings: clear one-line errors, exit 78 ---------------------------------------------------

def test_tls3_settings_defaults_and_values(tmp_path: Path) -> None:
    settings = load_settings(str(_toml(tmp_path, "")))
    tls = (settings.tls_policy, settings.tls_policy_domains, settings.tls_ca_file)
    assert tls == ("may", {}, None)
    text = ('tls_policy = "verify"\n[tls_policy_domains]\n'
            '"Legacy.test" = "none"\n".bank.test" = "Encrypt"\n')
    settings = load_settings(str(_toml(tmp_path, text)))
    assert settings.tls_policy == "verify"
    assert settings.tls_policy_domains == {"legacy.test": "none", ".bank.test": "encrypt"}


@pytest.mark.parametrize(("text", "message"), [
    ('tls_policy = "secure"', "setting tls_policy (from "),
    ('[tls_policy_domains]\n"bank.test" = "strict"', "setting tls_policy_domains (from "),
    ('tls_ca_file = "/nonexistent/ca.pem"', "setting tls_ca_file (from "),
])
def test_tls3_bad_settings_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(str(_toml(tmp_path, text)))
    assert message in info.value.message and "\n" not in info.value.message


def test_tls3_bad_ca_file_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="is not a PEM CA bundle"):
        load_settings(str(_toml(tmp_path, f'tls_ca_file = "{bogus}"')))


def test_tls3_unknown_level_exits_78_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MXROUTE_TLS_POLICY_DOMAINS": '{"bank.test": "verfy"}',
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mxroute", "check-config"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert proc.returncode == 78
    assert proc.stderr.strip() == (
        "mxroute: configuration error: setting tls_policy_domains "
        "(from MXROUTE_TLS_POLICY_DOMAINS): unknown TLS policy level for bank.test: 'verfy' "
        "(one of none, may, encrypt, verify, dane)")


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mxroute.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("level", "exchange", "offered", "error", "verification", "ok", "starts"), [
    ("none", "mx.t", True, None, False, True, "none: delivery never sends STARTTLS"),
    ("may", "mx.t", False, None, False, True, "may: STARTTLS not offered"),
    ("may", "mx.t", True, "boom", False, True,
     "may: TLS failed; delivery retries this host in plain text"),
    ("encrypt", "mx.t", False, None, False, False,
     "451 4.7.5 TLS required (encrypt) but not offered by H"),
    ("encrypt", "mx.t", True, "boom", False, False,
     "451 4.7.5 TLS required (encrypt) but the handshake with H"),
    ("encrypt", "mx.t", True, None, False, True, "encrypt: TLS established"),
    ("verify", "mx.t", True, "self-signed", True, False,
     "451 4.7.5 TLS certificate verification failed for H"),
    ("verify", "mx.t", True, None, False, True, "verify: certificate verified for mx.t"),
    ("verify", "", True, None, False, False, "451 4.7.5 TLS policy verify needs an MX host name"),
])
def test_exp3_probe_verdict(level: str, exchange: str, offered: bool, error: str | None,
                            verification: bool, ok: bool, starts: str) -> None:
    """EXP-3: what --probe says is what delivery would do with the host (TLS-3)."""
    got = probe_verdict(TlsPolicy(level), "H", exchange, offered=offered, error=error,  # type: ignore[arg-type]
                        verification=verification)
    assert got[0] is ok and got[1].startswith(starts), got


def test_issue21_contexts_per_level_and_their_minimum_versions() -> None:
    """Issue 21 (Postfix's split): TLS 1.2 at least where a policy demands TLS (encrypt,
    verify, DANE-EE), any version this OpenSSL speaks for opportunistic ``may``."""
    import ssl

    from mxroute.tls.contexts import Contexts

    contexts = Contexts()
    may = contexts.for_host(TlsPolicy(level="may"), "mx.example", None)
    encrypt = contexts.for_host(TlsPolicy(level="encrypt"), "mx.example", None)
    verify = contexts.for_host(TlsPolicy(level="verify"), "mx.example", None)
    assert may is contexts.opportunistic and encrypt is contexts.mandatory
    assert may.minimum_version == ssl.TLSVersion.MINIMUM_SUPPORTED
    assert encrypt.minimum_version == verify.minimum_version == ssl.TLSVersion.TLSv1_2
    assert encrypt.verify_mode == ssl.CERT_NONE and verify.verify_mode == ssl.CERT_REQUIRED
    # an MTA-STS testing audit of a "may" host verifies, at TLS 1.2
    audited = contexts.for_host(TlsPolicy(level="may"), "mx.example", None, audited=True)
    assert audited.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("value", ["TLSv1.1", "TLSv1", "1.2", "tlsv1.3"])
def test_issue21_tls_min_version_takes_only_12_or_13(tmp_path: Path, value: str) -> None:
    """Issue 21: ``tls_min_version`` is "TLSv1.2" (default) or "TLSv1.3"; anything else is a
    ConfigError naming the setting (exit 78)."""
    assert load_settings(str(_toml(tmp_path, ""))).tls_min_version == "TLSv1.2"
    assert load_settings(str(_toml(tmp_path, 'tls_min_version = "TLSv1.3"'))).tls_min_version \
        == "TLSv1.3"
    with pytest.raises(ConfigError, match="tls_min_version") as caught:
        load_settings(str(_toml(tmp_path, f'tls_min_version = "{value}"')))
    assert caught.value.exit_code == 78

"""issue 16 §1: the pure parts of ``relay.courier.upstream`` — the AUTH mechanism chosen from an
EHLO line, the secret read from ``password_file``, and who a routed session is."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxroute.relay.courier.upstream import (
    SecretProblem,
    Upstream,
    mechanism,
    password_problem,
    read_secret,
    unusable_secrets,
)
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.routing.rules import Chosen
from mxroute.settingsrules import RouteRule


@pytest.mark.parametrize(("offered", "chosen"), [
    ("PLAIN LOGIN", "PLAIN"),
    ("login", "LOGIN"),
    ("LOGIN PLAIN CRAM-MD5", "CRAM-MD5"),
    ("XOAUTH2 PLAIN", "PLAIN"),
    ("GSSAPI XOAUTH2", None),
    ("", None),
])
def test_the_strongest_offered_mechanism_is_chosen(offered: str, chosen: str | None) -> None:
    """issue 16 §1: CRAM-MD5 > PLAIN > LOGIN among those the upstream advertises."""
    assert mechanism(offered) == chosen


@pytest.mark.parametrize(("content", "secret"), [
    (b"pw\n", "pw"),
    (b"pw\r\n", "pw"),
    (b"pw", "pw"),
    (b" spaced pw \n", " spaced pw "),  # spaces are the secret's own
    ("pässword\n".encode(), "pässword"),
])
def test_the_secret_is_the_files_one_line(tmp_path: Path, content: bytes, secret: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    assert read_secret(path) == secret
    assert password_problem(path) is None


@pytest.mark.parametrize(("content", "why"), [
    (None, "cannot read: No such file or directory"),
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"alpha\nbeta\n", "more than one line"),
    (b"\xff\xfe\n", "not UTF-8"),
])
def test_an_unusable_password_file_is_named_never_quoted(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    """issue 16 §1: the problem names the file and what is wrong, never the file's text."""
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretProblem) as problem:
        read_secret(path)
    assert str(problem.value).startswith(f"password_file {path}")
    assert why in str(problem.value)
    assert "alpha" not in str(problem.value).replace(str(path), "")
    assert password_problem(path) == str(problem.value)


def plan_for(rule: dict[str, object], number: int = 2) -> Plan:
    return Plan("dest.test", Verdict.DELIVERABLE, "1 address(es) to try", "2.0.0",
                targets=(Target("", 0, "192.0.2.7", 4, 465),),
                route=Chosen(number, RouteRule.model_validate({"match": "*", **rule})))


def test_upstream_of_a_plan_carries_the_rule_and_hides_the_secret(tmp_path: Path) -> None:
    """issue 16 §1: rule 2's user is who its sessions are (pool and back-off keep them apart);
    the secret is in no repr; an IP next hop is the name TLS verifies (its IP SAN)."""
    path = tmp_path / "secret"
    path.write_text("very-secret\n")
    up = Upstream.of_plan(plan_for({"next_hop": "smtps://192.0.2.7",
                                    "auth": {"username": "u1", "password_file": str(path)}}))
    assert up is not None and up.implicit_tls and up.secret == "very-secret"
    assert up.identity == "rule 2 AUTH u1"
    assert "very-secret" not in repr(up)
    assert up.tls_name(Target("", 0, "192.0.2.7", 4, 465)) == "192.0.2.7"
    assert up.tls_name(Target("hop.test", 0, "192.0.2.7", 4, 465)) == "hop.test"
    anonymous = Upstream.of_plan(plan_for({"next_hop": "[hop.test]:25"}))
    assert anonymous is not None and anonymous.identity is None and not anonymous.implicit_tls
    assert Upstream.of_plan(Plan("dest.test", Verdict.DELIVERABLE, "", "2.0.0")) is None


def test_upstream_of_a_plan_with_an_unreadable_secret_raises(tmp_path: Path) -> None:
    with pytest.raises(SecretProblem, match="cannot read"):
        Upstream.of_plan(plan_for({"next_hop": "[hop.test]:587", "auth": {
            "username": "u1", "password_file": str(tmp_path / "missing")}}))


def test_unusable_secrets_names_each_rule_and_its_file(tmp_path: Path) -> None:
    """issue 16 §1: what ``check-config`` and ``serve``'s start-up warning report."""
    good = tmp_path / "good"
    good.write_text("pw\n")
    rules = [RouteRule.model_validate({"match": match, "next_hop": "[hop.test]:587", "auth": auth})
             for match, auth in [("a.test", {"username": "u", "password_file": str(good)}),
                                 ("b.test", None),
                                 (".c.test", {"username": "u", "password_file": str(tmp_path)})]]
    [(problem, path)] = unusable_secrets(rules)
    assert path == tmp_path
    assert problem.startswith(f"rule 3 (.c.test): password_file {tmp_path}: cannot read")

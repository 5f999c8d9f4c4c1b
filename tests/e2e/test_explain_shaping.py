"""Issue 18 §1: ``mxroute explain`` shows the destination's site, the shaping rule that matches
and the limits in force, text and JSON (``shaping``), as delivery resolves them (kcli
``resolve-egress-path``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.explaincli import run_explain

ZONE = """
$ORIGIN t.
$TTL 300
@           IN SOA ns.t. host.t. 1 3600 600 86400 60
dest        IN MX 20 mx2.mail.t.
dest        IN MX 10 mx1.mail.t.
mx1.mail    IN A 192.0.2.10
mx2.mail    IN A 192.0.2.11
gmail       IN MX 5 gmail-smtp-in.l.google.com.
other       IN MX 10 mx.other.t.
mx.other    IN A 192.0.2.12
"""


@pytest.fixture
def dns(dns_server: DNSServer) -> DNSServer:
    dns_server.set_zone(ZONE)
    return dns_server


def explain(dns: DNSServer, args: list[str], shaping: list[dict[str, Any]]) -> Any:
    return run_explain(["--dns", dns.address, *args],
                       {"MXROUTE_SHAPING": json.dumps(shaping), "MXROUTE_CONNECT_TIMEOUT": "2",
                        "MXROUTE_DESTINATION_CONCURRENCY": "7"})


RULES = [{"match": "mx:*.mail.t", "connection_limit": 3, "max_messages_per_connection": 50,
          "message_rate": 2.5}]


def test_json_names_site_rule_and_limits(dns: DNSServer) -> None:
    """issue 18 §1: ``shaping`` = site (the sorted MX names), the rule, its key and limits."""
    done = explain(dns, ["--json", "u@dest.t"], RULES)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["shaping"] == {
        "site": "mx1.mail.t,mx2.mail.t", "key": "mx:*.mail.t", "rule": "mx:*.mail.t",
        "source": "shaping", "number": 1,
        "limits": {"connection_limit": 3, "max_messages_per_connection": 50,
                   "connection_rate": None, "message_rate": 2.5, "message_burst": None},
        "scope": "local", "shared_state": None}


def test_default_and_shipped_rules(dns: DNSServer) -> None:
    """issue 18 §1: no rule matches → the default (destination_concurrency per site); an MX at
    Google → the shipped rollup, named as such."""
    other = json.loads(explain(dns, ["--json", "u@other.t"], RULES).stdout)["shaping"]
    assert (other["source"], other["key"], other["limits"]["connection_limit"]) == (
        "default", "mx.other.t", 7)
    gmail = json.loads(explain(dns, ["--json", "u@gmail.t"], RULES).stdout)["shaping"]
    assert (gmail["source"], gmail["key"], gmail["site"]) == (
        "shipped", "provider:google", "gmail-smtp-in.l.google.com")


def test_text_shows_the_shaping_line(dns: DNSServer) -> None:
    done = explain(dns, ["u@dest.t"], RULES)
    assert done.returncode == 0, done.stderr
    assert ("site mx1.mail.t,mx2.mail.t: shaping rule 1 (mx:*.mail.t), counted as mx:*.mail.t: "
            "connection_limit 3, max_messages_per_connection 50, message_rate 2.5"
            ) in " ".join(done.stdout.split()), done.stdout


def test_scope_says_whether_the_limits_are_shared(dns: DNSServer) -> None:
    """Issue 19: with ``shared_state`` the limits are the fleet's (``scope`` ``shared``, the URL
    shown without a secret), else this node's (``local``); the text says which. Explain does
    not connect to Redis to say so."""
    env = {"MXROUTE_SHAPING": json.dumps(RULES),
           "MXROUTE_SHARED_STATE": "rediss://relay@127.0.29.3:6390/2"}
    done = run_explain(["--dns", dns.address, "--json", "u@dest.t"], env)
    assert done.returncode == 0, done.stderr
    shaping = json.loads(done.stdout)["shaping"]
    assert (shaping["scope"], shaping["shared_state"]) == (
        "shared", "rediss://relay@127.0.29.3:6390/2")
    text = " ".join(run_explain(["--dns", dns.address, "u@dest.t"], env).stdout.split())
    assert "limits shared by the fleet through rediss://relay@127.0.29.3:6390/2" in text
    alone = " ".join(explain(dns, ["u@dest.t"], RULES).stdout.split())
    assert "limits counted on this node (no shared_state)" in alone

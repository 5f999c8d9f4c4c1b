"""Bulk `mxroute explain --json -` / `--file F` through the real CLI against the loopback DNS
server (issue 16 §4; EXP-1, EXP-5, MX-5, MX-6, MX-10): one JSON object per address line in input
order, the same schema as a single `explain --json`, a JSON error object for a malformed line,
a summary on stderr, and each DNS question asked once for the whole run."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.explaincli import run_explain
from tests.support.relay import World
from tests.support.smtpsink import tls_available

ZONE = """
$ORIGIN t.
$TTL 300
@         IN SOA ns.t. host.t. 1 3600 600 86400 60
slow      IN MX 10 mx.slow.t.
mx.slow   IN A 127.0.1.1
fast      IN MX 10 a.t.
other     IN MX 10 a.t.
other     IN MX 20 b.t.
a         IN A 127.0.1.2
b         IN A 127.0.1.3
implicit  IN A 127.0.1.4
nullmx    IN MX 0 .
halfbad   IN MX 10 sf.t.
"""

DOMAINS = ["slow.t", "fast.t", "other.t", "implicit.t", "nullmx.t", "nx.t"]
STATUS = {"slow.t": "deliverable", "fast.t": "deliverable", "other.t": "deliverable",
          "implicit.t": "deliverable", "nullmx.t": "permanent-failure",
          "nx.t": "permanent-failure", "broken.t": "temporary-failure"}


@pytest.fixture
def dns(dns_server: DNSServer) -> DNSServer:
    dns_server.set_zone(ZONE)
    dns_server.fail("broken.t")
    # the first domain answers last: every later line is done before it, and must still wait
    dns_server.delay["slow.t"] = 0.4
    return dns_server


def bulk(dns: DNSServer, args: list[str], stdin: str | None = None,
         **settings: str) -> tuple[int, list[dict[str, Any]], str]:
    env = {"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true", "MXROUTE_DNS_TIMEOUT": "2",
           "MXROUTE_DNS_ATTEMPTS": "1"}
    env.update({f"MXROUTE_{k.upper()}": v for k, v in settings.items()})
    result = run_explain(["--dns", dns.address, "--json", "--seed", "1", *args], env, stdin)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result.returncode, lines, result.stderr


def test_bulk_keeps_input_order_and_gives_each_line_its_verdict(dns: DNSServer) -> None:
    """Issue 16 §4: a mix of deliverable, null MX (MX-10), NXDOMAIN (MX-5) and SERVFAIL (MX-6)
    domains, a malformed line, a blank line and a comment: one object per address line, in input
    order although the first domain answers last; exit 0 although some are undeliverable."""
    addresses = ["a@slow.t", "b@fast.t", "c@nullmx.t", "not an address", "d@nx.t",
                 "e@broken.t", "f@other.t", "g@implicit.t", "h@FAST.t", "<i@slow.t>"]
    text = "# recipients for the newsletter\n" + "\n".join(addresses[:5]) + "\n\n   \n" \
        + "\n".join(addresses[5:]) + "\n"
    code, lines, stderr = bulk(dns, ["-"], text)
    assert code == 0, stderr
    assert len(lines) == len(addresses)
    expected = ["a@slow.t", "b@fast.t", "c@nullmx.t", "not an address", "d@nx.t", "e@broken.t",
                "f@other.t", "g@implicit.t", "h@fast.t", "i@slow.t"]
    assert [line["address"] for line in lines] == expected
    malformed = lines[3]
    assert malformed["status"] == "error"
    assert malformed["line"] == 5  # the comment is line 1
    assert "local-part@domain" in malformed["error"]
    assert set(malformed) == {"address", "line", "status", "error"}
    for line in lines[:3] + lines[4:]:
        assert line["status"] == STATUS[line["domain"]], line
    assert lines[2]["null_mx"] is True and lines[2]["dsn_status"] == "5.1.10"
    assert lines[4]["dsn_status"] == "5.1.2"
    assert lines[5]["dsn_status"] == "4.4.3"
    assert [p["address"] for p in lines[6]["plan"]] == ["127.0.1.2", "127.0.1.3"]
    assert re.search(r"10 addresses .*1 malformed", stderr), stderr
    assert re.search(r"deliverable 6, permanent 2, temporary 1", stderr), stderr
    assert re.search(r"\b7 domains\b", stderr), stderr


def test_bulk_line_is_the_single_explain_object(dns: DNSServer) -> None:
    """Issue 16 §4: the same schema and the same answer as `explain --json ADDRESS` (one code
    path); only what the cache changes (`cached`, `ms`, `ttl` of later answers) may differ."""
    code, lines, _ = bulk(dns, ["-"], "x@other.t\ny@other.t\n")
    assert code == 0
    single = run_explain(["--dns", dns.address, "--json", "--seed", "1", "x@other.t"],
                         {"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true"})
    assert single.returncode == 0, single.stderr
    alone = json.loads(single.stdout)

    def stable(body: dict[str, Any]) -> dict[str, Any]:
        # answers of concurrent lookups arrive in any order, and RRsets in the server's
        dns_rows = sorted(({**{k: v for k, v in row.items() if k not in ("ms", "ttl", "cached")},
                            "answers": sorted(row["answers"])} for row in body["dns"]),
                          key=lambda row: (row["qname"], row["qtype"]))
        return {**body, "dns": dns_rows}

    assert stable(lines[0]) == stable(alone)
    assert all(row["cached"] is False for row in lines[0]["dns"])
    assert all(row["cached"] is True for row in lines[1]["dns"])
    # the second address's object is the first's with its address (also the intake's RCPT)
    assert stable(lines[1]) == json.loads(json.dumps(stable(alone)).replace("x@other.t",
                                                                            "y@other.t"))


def test_bulk_asks_each_question_once(dns: DNSServer, tmp_path: Path) -> None:
    """Issue 16 §4: 300 addresses over 6 domains, interleaved, 50 at once: the DNS server sees
    each (name, type) question exactly once, though many identical questions were in flight
    together (coalesced), and the summary's query count is what the server received."""
    path = tmp_path / "list.txt"
    path.write_text("".join(f"user{n}@{DOMAINS[n % len(DOMAINS)]}\n" for n in range(300)))
    code, lines, stderr = bulk(dns, ["--file", str(path)], explain_concurrency="50")
    assert code == 0, stderr
    assert [line["address"] for line in lines] == \
        [f"user{n}@{DOMAINS[n % len(DOMAINS)]}" for n in range(300)]
    asked = Counter(dns.queries())
    assert asked and max(asked.values()) == 1, [q for q, n in asked.items() if n > 1]
    assert ("slow.t", "MX") in asked and ("a.t", "A") in asked
    assert re.search(rf"\b{len(asked)} DNS queries\b", stderr), stderr
    assert re.search(r"300 addresses", stderr) and "6 domains" in stderr, stderr


def test_bulk_usage_errors(dns: DNSServer, tmp_path: Path) -> None:
    """Issue 16 §4: only usage and configuration errors end the run: 64 for a missing --file,
    for both --file and an address, and for bulk without --json; 78 for bad settings."""
    result = run_explain(["--dns", dns.address, "--json", "--file", str(tmp_path / "none")])
    assert result.returncode == 64 and "none" in result.stderr and result.stdout == ""
    path = tmp_path / "list.txt"
    path.write_text("u@fast.t\n")
    result = run_explain(["--dns", dns.address, "--json", "--file", str(path), "u@fast.t"])
    assert result.returncode == 64, result.stderr
    result = run_explain(["--dns", dns.address, "-"], stdin="u@fast.t\n")
    assert result.returncode == 64 and "--json" in result.stderr
    result = run_explain(["--dns", dns.address, "--json", "-"],
                         {"MXROUTE_EXPLAIN_CONCURRENCY": "0"}, stdin="u@fast.t\n")
    assert result.returncode == 78 and "explain_concurrency" in result.stderr


def test_bulk_bad_bytes_and_long_lines_are_line_errors(dns: DNSServer, tmp_path: Path) -> None:
    """Issue 16 §4: bad input loses nothing: a line that is not UTF-8 and a line longer than any
    address each get an error object; the lines around them are evaluated; CRLF ends are fine."""
    path = tmp_path / "list.txt"
    path.write_bytes(b"a@fast.t\r\n\xff\xfe@x.t\n" + b"x" * 100_000 + b"@fast.t\nb@fast.t")
    code, lines, stderr = bulk(dns, ["--file", str(path)])
    assert code == 0, stderr
    assert [line["status"] for line in lines] == ["deliverable", "error", "error", "deliverable"]
    assert "UTF-8" in lines[1]["error"] and lines[1]["line"] == 2
    assert "longer" in lines[2]["error"] and lines[2]["line"] == 3
    assert len(lines[2]["address"]) < 1000
    assert lines[3]["address"] == "b@fast.t"


def test_bulk_fetches_an_mta_sts_policy_once(world: World, tmp_path: Path) -> None:
    """Issue 16 §4 with TLS-5/6 and EXP-3: 20 addresses at a domain with an MTA-STS policy, 10
    at once: the policy is fetched once for the run (not once per address), every line
    carries it."""
    if not tls_available():
        pytest.skip("the cryptography package is needed for certificates")
    from tests.support.stsserver import PolicyServer
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ca")
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
               f"mta-sts.dest IN A {world.ip(80)}\n"
               '_mta-sts.dest IN TXT "v=STSv1; id=one"\n')
    policy = "version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmax_age: 86400\n"
    with PolicyServer(world.ip(80), ca.server_context("mta-sts.dest.test"), policy) as web:
        listed = "".join(f"u{n}@dest.test\n" for n in range(20))
        code, lines, stderr = bulk(world.dns, ["-"], listed, mta_sts_port=str(web.port),
                                   tls_ca_file=str(ca.ca_file), spool_dir=str(tmp_path / "spool"),
                                   explain_concurrency="10")
    assert code == 0, stderr
    assert len(web.requests) == 1, web.requests
    # the first line's lookup fetched; lines looking at the same time joined it; later: cache
    sources = [line["mta_sts"]["source"] for line in lines]
    assert sources[0] == "fetched" and sources[-1] == "cache", sources
    assert set(sources) == {"fetched", "cache"}
    assert all(line["mta_sts"]["policy"]["mode"] == "enforce" for line in lines)

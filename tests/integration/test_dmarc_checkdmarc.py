"""mxroute's DMARC record parser against an independent one: checkdmarc (issue 14 §3).

checkdmarc runs in its own process (tests/support/checkdmarcpeer.py) with a dnspython resolver
that knows only the loopback DNS server: it looks up MX and ``_report._dmarc`` authorization
records for the rua= destinations, and an audit hook records every address its sockets reach.
Nothing may leave the machine: every destination must be the loopback server.

checkdmarc 6 follows RFC 9989 (DMARCbis), mxroute RFC 7489; where the two RFCs differ the test
names the difference instead of hiding it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from mxroute.identity.dmarc.record import DmarcRecord, RecordError, parse_record
from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT

if importlib.util.find_spec("checkdmarc") is None:  # in the test extra: CI must have it
    if os.environ.get("CI") == "true":
        raise RuntimeError("checkdmarc (the test extra) is not installed")
    pytest.skip("checkdmarc is not installed", allow_module_level=True)

ZONE = """
$ORIGIN t.
$TTL 300
@                                IN SOA ns.t. host.t. 1 3600 600 86400 60
example                          IN MX 10 mx.example.t.
mx.example                       IN A 127.0.0.9
reports                          IN MX 10 mx.example.t.
example.t._report._dmarc.reports IN TXT "v=DMARC1"
"""

AGREED = [
    "v=DMARC1; p=reject",
    "v=DMARC1; p=quarantine; sp=none; adkim=s; aspf=s; rua=mailto:d@example.t",
    "v=DMARC1; p=none; rua=mailto:agg@reports.t,mailto:x@example.t!10m",
    "v=DMARC1; p=reject; fo=1:d; ruf=mailto:f@example.t",
    "V=DMARC1;P=Reject;SP=Quarantine",
    "v=DMARC1 ; p = none ; aspf = s",
    "v=DMARC1; p=reject; adkim=x",  # a bad value: both fall back to the default r
    "v=DMARC1; p=reject; unknown=1; np=none",  # unknown tags: both ignore them
    "v=DMARC1; p=reject; rua=mailto:nomx@nowhere.t",  # a report address without MX
]
REFUSED = [
    "v=DMARC1; p=block",
    "v=DMARC1; p=reject; sp=bogus",
    "v=DMARC1; p=none; p=reject",  # a tag twice
    "v=spf1 -all",
    "v=dmarc1; p=reject",  # DMARC1 is case-sensitive
    "p=reject; v=DMARC1",  # v= first
]
# RFC 7489 vs RFC 9989, as each implements its own
DIFFERENT = {
    "v=DMARC1": "RFC 9989 makes a missing p= p=none; RFC 7489 §6.6.3 applies no DMARC",
    "v=DMARC1; p=block; rua=mailto:d@example.t":
        "RFC 7489 §6.6.3 step 5: a bad p= with a valid rua= is p=none; checkdmarc refuses it",
    "v=DMARC1; p=reject; junk":
        "RFC 7489 §6.3: syntax errors SHOULD be ignored; checkdmarc's grammar refuses them",
}


def peer(dns: DNSServer, records: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.checkdmarcpeer", dns.host, str(dns.port),
         "example.t"], input="\n".join(records), capture_output=True, text=True, cwd=ROOT,
        timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    return out["results"], out["destinations"]


def ours(record: DmarcRecord) -> dict[str, Any]:
    """Our parse in checkdmarc's terms: sp defaults to p, fo joined, report addresses."""
    def addresses(uris: tuple[str, ...]) -> list[str]:
        return [uri.split(":", 1)[1].split("!")[0] for uri in uris]

    return {"p": record.policy, "sp": record.effective_policy(subdomain=True),
            "adkim": record.adkim, "aspf": record.aspf, "fo": ":".join(record.fo),
            "rua": addresses(record.rua), "ruf": addresses(record.ruf)}


def theirs(tags: dict[str, Any]) -> dict[str, Any]:
    def addresses(name: str) -> list[str]:
        return [uri["address"] for uri in tags.get(name, [])]

    return {"p": tags["p"], "sp": tags["sp"], "adkim": tags["adkim"], "aspf": tags["aspf"],
            "fo": tags["fo"], "rua": addresses("rua"), "ruf": addresses("ruf")}


def test_same_records_same_reading_and_nothing_leaves_the_machine(dns_server: DNSServer
                                                                  ) -> None:
    """issue 14: agreed records parse alike; refused ones are refused by both; the known
    RFC 7489 / RFC 9989 differences are what they are said to be; checkdmarc's DNS went only
    to the loopback server."""
    dns_server.set_zone(ZONE)
    records = AGREED + REFUSED + list(DIFFERENT)
    results, destinations = peer(dns_server, records)
    assert len(results) == len(records)
    answers = dict(zip(records, results))
    for text in AGREED:
        assert "tags" in answers[text], (text, answers[text])
        assert ours(parse_record(text)) == theirs(answers[text]["tags"]), text
    for text in REFUSED:
        assert "error" in answers[text], (text, answers[text])
        with pytest.raises(RecordError):
            parse_record(text)
    assert answers["v=DMARC1"]["tags"]["p"] == "none"
    with pytest.raises(RecordError):
        parse_record("v=DMARC1")
    assert "error" in answers["v=DMARC1; p=block; rua=mailto:d@example.t"]
    assert parse_record("v=DMARC1; p=block; rua=mailto:d@example.t").policy == "none"
    assert "error" in answers["v=DMARC1; p=reject; junk"]
    assert parse_record("v=DMARC1; p=reject; junk").policy == "reject"
    # it did ask DNS (rua= destinations), and only the loopback server
    asked = dns_server.queries()
    assert ("example.t._report._dmarc.reports.t", "TXT") in asked
    assert destinations and all(repr((dns_server.host, dns_server.port)) in line
                                for line in destinations), destinations

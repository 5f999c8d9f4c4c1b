"""The HELO name's default and what is wrong with a name, without DNS (issue 15 C2)."""

from __future__ import annotations

import pytest

from mxroute.address import is_local_name
from mxroute.hostdefaults import pick_host_name
from mxroute.identity.helo import name_findings


def test_host_name_as_postfix_finds_myhostname() -> None:
    assert pick_host_name("mail.example.com", ["other.example.net"]) == "mail.example.com"
    assert pick_host_name("mail", ["mail.example.com"]) == "mail.example.com"
    assert pick_host_name("vm", ["localhost", "vm.localdomain", "vm.example.com."]) == \
        "vm.example.com"
    assert pick_host_name("vm", ["vm"]) == "vm"  # the warning says the rest
    assert pick_host_name("vm", []) == "vm"


@pytest.mark.parametrize(("name", "local"), [
    ("localhost", True), ("LOCALHOST.", True), ("localhost.localdomain", True),
    ("vm.localdomain", True), ("app.localhost", True), ("localhost.example.com", True),
    ("mail.example.com", False), ("mylocalhost.example", False), ("vm", False),
])
def test_local_names(name: str, local: bool) -> None:
    assert is_local_name(name) is local


def test_name_findings() -> None:
    assert [f.code for f in name_findings("vm")] == ["helo-not-fqdn"]
    assert [f.code for f in name_findings("localhost")] == ["helo-localhost"]
    assert name_findings("mail.example.com") == [] and name_findings("[192.0.2.1]") == []

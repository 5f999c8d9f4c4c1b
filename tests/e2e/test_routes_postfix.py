"""Issue 16 §1: a real Postfix (Debian's postfix) as an unauthenticated hub behind a ``routes``
rule ``[host]:port``: ``serve`` relays to it instead of the recipient's MX, over loopback, with
allow_private_destinations left false; Postfix holds what it received (tests/support/postfix.py).

Skipped with a reason when Postfix cannot be started here, except under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.postfix import PostfixInstance, start_postfix, stop_postfix, unavailable
from tests.support.relay import MSG, World, wait_for

pytestmark = pytest.mark.interop

HOST = "127.0.3.4"  # not the other Postfix instances' 127.0.3.1-3


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixInstance]:
    why = unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"interop test cannot run in CI: {why}")
        pytest.skip(why)
    instance = start_postfix(HOST, tls=True, prefix="mxroute-routes-postfix-")
    try:
        yield instance
    finally:
        stop_postfix(instance, instance.root)


def test_postfix_hub_receives_via_bracketed_rule(world: World, postfix: PostfixInstance) -> None:
    """issue 16: routes = [{match="partner.test", next_hop="[127.0.3.4]:PORT"}] → Postfix
    receives the message (envelope intact, STARTTLS at the default level ``may``); the
    recipient domain's MX is never asked for."""
    postfix.clear()
    world.zone(f"partner IN MX 10 mx.partner.test.\nmx.partner IN A {world.ip(1)}\n")
    mx = world.sink(1)
    relay = world.relay(allow_private_destinations=False, routes=[
        {"match": "partner.test", "next_hop": f"[{postfix.host}]:{postfix.port}"}])
    relay.send("a@sender.test", ["u@partner.test", "v@partner.test"], MSG)
    held = postfix.wait_held(1, timeout=20)
    assert len(held) == 1, relay.log()
    envelope = postfix.postcat(held[0], "-e")
    assert "sender: a@sender.test" in envelope
    assert "recipient: u@partner.test" in envelope and "recipient: v@partner.test" in envelope
    assert postfix.body(held[0]).endswith(b"body line\r\n.dot line\r\n")
    assert wait_for(lambda: relay.queued() == [])
    log = relay.logged("status=sent")
    assert f"relay={postfix.host}:{postfix.port}" in log and "tls=TLS" in log, log
    assert mx.messages == []
    assert not any(q.qname.startswith("partner.test") for q in world.dns.log)
    postfix.clear()

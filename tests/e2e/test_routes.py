"""Issue 16 §1: next-hop rules (``routes``) through the real ``serve``, against the loopback DNS
server and SMTP sinks on loopback (Postfix ``relayhost`` / ``transport_maps`` /
``sender_dependent_relayhost_maps``).

A configured next hop is trusted as Postfix trusts relayhost: every relay here runs with
``allow_private_destinations = false``, and mail still reaches the loopback hop; a hop that is
down defers (RTY-1) and is retried, never bounced.
"""

from __future__ import annotations

import json

from tests.support.relay import MSG, Relay, World, free_port, wait_for
from tests.support.smtpsink import Sink


def hub(world: World, n: int, port: int | None = None) -> Sink:
    """A sink at 127.1.N.n on ``port`` (default: a fresh port, not the relay's smtp_port)."""
    host = world.ip(n)
    sink = Sink(host, port or free_port(host))
    sink.start()
    world.sinks.append(sink)
    return sink


def test_star_rule_delivers_to_loopback_hop_without_allow_private(world: World) -> None:
    """issue 16: routes = [{match="*", next_hop="[127.1.N.5]:PORT"}] delivers there, not to the
    MX, with allow_private_destinations=false (SEC-11 still screens MX traffic); the delivery
    log's relay= names the hop."""
    world.zone(f"dest IN MX 10 mx.dest.test.\nmx.dest IN A {world.ip(1)}\n")
    mx = world.sink(1)
    sink = hub(world, 5)
    relay = world.relay(allow_private_destinations=False,
                        routes=[{"match": "*", "next_hop": f"[{sink.host}]:{sink.port}"}])
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    (got,) = sink.messages
    assert got.mail_from == "a@sender.test" and got.rcpt_to == ["u@dest.test"]
    assert got.data.endswith(MSG)
    assert wait_for(lambda: relay.queued() == [])
    log = relay.logged("status=sent")
    assert f"to=<u@dest.test>, relay={sink.host}:{sink.port}" in log, log
    assert mx.messages == []


def test_unrouted_mx_traffic_is_still_screened(world: World) -> None:
    """issue 16 + SEC-11: a rule for one domain does not open private addresses to the others."""
    world.zone(f"other IN MX 10 mx.other.test.\nmx.other IN A {world.ip(1)}\n")
    mx = world.sink(1)
    sink = hub(world, 5)
    relay = world.relay(allow_private_destinations=False,
                        routes=[{"match": "dest.test", "next_hop": f"[{sink.host}]:{sink.port}"}])
    relay.send("a@sender.test", ["u@other.test"], MSG)
    log = relay.logged("to=<u@other.test>", "blocked-address")
    assert "blocked-address" in log or "5.4.4" in log, log
    assert mx.messages == [] and sink.messages == []


def test_host_port_rule_looks_up_the_mx_of_the_hop(world: World) -> None:
    """issue 16: next_hop = "hub.test:PORT" → the MX of hub.test (RFC 5321 order), its address,
    the rule's port."""
    sink = hub(world, 6)
    world.zone(f"hub IN MX 20 mx2.hub.test.\nhub IN MX 10 mx1.hub.test.\n"
               f"mx1.hub IN A {world.ip(6)}\nmx2.hub IN A {world.ip(7)}\n"
               f"dest IN MX 10 mx.dest.test.\nmx.dest IN A {world.ip(1)}\n")
    relay = world.relay(allow_private_destinations=False,
                        routes=[{"match": "dest.test", "next_hop": f"hub.test:{sink.port}"}])
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    log = relay.logged("status=sent")
    assert f"relay=mx1.hub.test[{world.ip(6)}]:{sink.port}" in log, log


def test_suffix_rule_and_sender_rule_route_messages_differently(world: World) -> None:
    """issue 16: ``.corp.test`` covers subdomains only; a ``sender = "@vip.test"`` rule routes the
    same recipient domain elsewhere than other senders do (the plan cache keys on the sender)."""
    corp, vip, rest = hub(world, 7), hub(world, 8), hub(world, 9)
    relay = world.relay(allow_private_destinations=False, routes=[
        {"match": ".corp.test", "next_hop": f"[{corp.host}]:{corp.port}"},
        {"match": "*", "sender": "@vip.test", "next_hop": f"[{vip.host}]:{vip.port}"},
        {"match": "*", "next_hop": f"[{rest.host}]:{rest.port}"},
    ])
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    relay.send("boss@vip.test", ["u@dest.test"], MSG)
    relay.send("a@sender.test", ["u@eu.corp.test", "u@corp.test"], MSG)
    assert wait_for(lambda: len(vip.messages) == 1 and len(corp.messages) == 1
                    and len(rest.messages) == 2)
    assert [m.mail_from for m in vip.messages] == ["boss@vip.test"]
    assert corp.messages[0].rcpt_to == ["u@eu.corp.test"]
    assert sorted(r for m in rest.messages for r in m.rcpt_to) == ["u@corp.test", "u@dest.test"]
    assert wait_for(lambda: relay.queued() == [])


def test_next_hop_down_defers_and_retries_never_bounces(world: World) -> None:
    """issue 16 + RTY-1: nothing listening at the hop → status=deferred, retried; once the hop
    answers the mail goes there; no DSN to the sender (whose MX is reachable)."""
    world.zone(f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(2)}\n")
    sender_mx = world.sink(2)
    port = free_port(world.ip(4))
    relay = world.relay(routes=[{"match": "dest.test", "next_hop": f"[{world.ip(4)}]:{port}"}])
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    log = relay.logged("to=<u@dest.test>", "status=deferred", "retry scheduled")
    assert "status=deferred" in log and "status=bounced" not in log, log
    sink = hub(world, 4, port)
    assert wait_for(lambda: sink.messages, timeout=20)
    assert wait_for(lambda: relay.queued() == [])
    assert sender_mx.messages == []
    assert "status=bounced" not in relay.log()


def test_next_hop_without_address_defers(world: World) -> None:
    """issue 16: a hop whose name does not exist is the operator's mistake: 4.x deferral with the
    reason, the message stays queued (never bounced)."""
    world.zone("dest IN A 127.0.0.1\n")
    relay = world.relay(routes=[{"match": "dest.test", "next_hop": "[gone.hub.test]:2600"}])
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    log = relay.logged("to=<u@dest.test>", "retry scheduled")
    assert "status=deferred" in log and "next hop [gone.hub.test]:2600" in log, log
    assert relay.queued() != []


def test_next_hop_at_this_relays_own_listener_is_a_loop(world: World) -> None:
    """issue 16 + MX-11: a rule sending mail to this relay's own listener is a loop: deferred with
    "loops back to myself", never delivered to itself, never bounced."""
    relay = Relay(world.tmp, world.dns, world.sink_port)
    rules = [{"match": "*", "next_hop": f"[127.0.0.1]:{relay.port}"}]
    relay.env["MXROUTE_ROUTES"] = json.dumps(rules)
    world.relays.append(relay.start())
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    log = relay.logged("to=<u@dest.test>", "retry scheduled")
    assert "loops back to myself" in log and "status=bounced" not in log, log
    assert len(relay.queued()) == 1  # no second copy received from itself

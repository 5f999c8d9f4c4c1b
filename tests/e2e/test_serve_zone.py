"""`mxroute serve --zone FILE`: both processes answer from the zone (issue 13 item 3; MX-1).

The command line reaches the delivery process as it reaches the intake: ``--zone`` sets
``dns_zone_files``, which travels with every other setting.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.relay import MSG, ROOT, Relay, World, free_port, wait_for
from tests.support.smtpsink import Sink


def test_serve_with_zone_delivers_by_the_zone_in_the_delivery_process(world: World) -> None:
    """issue 13: `u.test MX 10 mx.u.test.`, `mx.u.test A 127.0.22.N` only in the zone file (the
    configured DNS server answers NXDOMAIN for u.test): `serve --zone` delivers b@u.test there
    instead of bouncing 5.1.2 (MX-1); the intake's sender check (SPF-13) finds the sender's
    domain in the same zone."""
    host = f"127.0.22.{world.net}"
    port = free_port(host)
    zone = world.tmp / "z.zone"
    zone.write_text(
        "$ORIGIN u.test.\n$TTL 60\n"
        "@ IN SOA ns.u.test. hostmaster.u.test. 1 3600 600 86400 60\n"
        "@ IN MX 10 mx.u.test.\n"
        f"mx IN A {host}\n"
    )
    with Sink(host, port) as sink:
        relay = Relay(world.tmp, world.dns, port)
        with open(relay.log_path, "ab") as log:
            relay.proc = subprocess.Popen(
                [sys.executable, "-m", "mxroute", "serve", "--zone", str(zone)],
                cwd=ROOT, env=relay.env, stdout=log, stderr=subprocess.STDOUT,
            )
        world.relays.append(relay)
        if not wait_for(relay._ready, timeout=20):
            pytest.fail(f"relay did not start:\n{relay.log()}")
        relay.send("a@u.test", ["b@u.test"], MSG)  # the intake's sender check asks the zone
        assert wait_for(lambda: sink.messages, timeout=20), relay.log()
        assert [m.rcpt_to for m in sink.messages] == [["b@u.test"]]
        assert wait_for(lambda: relay.queued() == [])
        assert "NXDOMAIN" not in relay.log()  # neither process asked the DNS server
        assert relay.terminate() == 0

"""``mxroute queue summary --fleet`` (issue 19, docs/fleets.md): every live node's queue, as
each node's heartbeat publishes it to ``shared_state``, and the fleet's total. A node that
stopped (its heartbeat's TTL ran out) is not listed. Without ``shared_state``: exit 78; Redis
not answering: exit 75.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mxroute.errors import EX_CONFIG, EX_OK, EX_TEMPFAIL
from mxroute.settings import Settings

TIMEOUT = 5.0  # seconds for the whole read


def fleet_summary_command(settings: Settings, as_json: bool) -> int:
    """Print the fleet's queue summary (text or ``--json``); the exit code."""
    from redis.exceptions import RedisError

    from mxroute.relay.fleet.connection import SharedStateError, from_settings, shown
    from mxroute.relay.fleet.records import fleet_summary, render_fleet
    from mxroute.relay.fleet.share import fleet_nodes

    if not settings.shared_state:
        print("mxroute: queue summary --fleet needs shared_state (the fleet's Redis, "
              "docs/fleets.md); this node shares nothing", file=sys.stderr)
        return EX_CONFIG
    try:
        redis = from_settings(settings)
    except SharedStateError as exc:
        print(f"mxroute: shared_state: {exc}", file=sys.stderr)
        return EX_CONFIG
    assert redis is not None

    async def read() -> dict[str, object]:
        try:
            nodes = await asyncio.wait_for(fleet_nodes(redis), TIMEOUT)
        finally:
            await redis.aclose()
        return fleet_summary(nodes, time.time())

    try:
        summary = asyncio.run(read())
    except (RedisError, OSError, TimeoutError) as exc:
        print(f"mxroute: shared_state {shown(settings)}: no answer ({exc})", file=sys.stderr)
        return EX_TEMPFAIL
    if as_json:
        print(json.dumps({"shared_state": shown(settings), **summary}))
        return EX_OK
    for line in render_fleet(summary):
        print(line)
    print(f"(live nodes of {shown(settings)}: each publishes its queue every few seconds; "
          "one silent for its heartbeat's TTL is dropped)")
    return EX_OK


__all__ = ["fleet_summary_command"]

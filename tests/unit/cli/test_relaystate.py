"""The relay state explain reads from a spool (issue 16 §2, RTY-4): no serve, and one ask per
spool for many addresses."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mxroute.cli import relaystate
from mxroute.routing.plan import Plan, Target
from mxroute.routing.plan import Verdict as Status
from mxroute.settings import Settings


def test_no_spool_none_stopped_serve_says_so_and_one_answer_serves_many(tmp_path: Path) -> None:
    """No spool directory: None. A spool without a running serve: ``not running`` and why; the
    snapshot is shared by the addresses of one run (bulk explain asks once)."""
    assert asyncio.run(relaystate.snapshot(Settings(spool_dir=tmp_path / "none"))) is None

    async def twice() -> tuple[relaystate.RelaySnapshot | None, ...]:
        settings = Settings(spool_dir=tmp_path)
        return tuple(await asyncio.gather(*(relaystate.snapshot(settings) for _ in range(20))))

    found = asyncio.run(twice())
    first = found[0]
    assert first is not None and first.serve == "not running"
    assert first.note is not None and "remembered by a running serve only" in first.note
    assert all(item is first for item in found)


def test_for_plan_keeps_only_this_plans_hosts() -> None:
    """RTY-4: of the hosts the relay skips, the JSON shows those the plan would try."""
    target = Target("mx.d.test", 10, "127.0.0.7", 4, 25)
    plan = Plan("d.test", Status.DELIVERABLE, "1 address", "2.0.0", targets=(target,))
    hosts = [{"host": "mx.d.test[127.0.0.7]:25", "address": "127.0.0.7", "port": 25},
             {"host": "mx.o.test[127.0.0.8]:25", "address": "127.0.0.8", "port": 25},
             {"host": "mx.d.test[127.0.0.7]:26", "address": "127.0.0.7", "port": 26}]
    known = relaystate.RelaySnapshot(Path("/s"), "running", hosts=hosts)
    body = known.for_plan(plan, None)
    assert [h["host"] for h in body["skipped_hosts"]] == ["mx.d.test[127.0.0.7]:25"]
    assert (body["spool"], body["serve"], body["mta_sts_cached"]) == ("/s", "running", None)

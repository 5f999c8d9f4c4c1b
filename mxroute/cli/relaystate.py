"""What a relay on this spool knows about a route, for ``explain`` (issue 16 §2), read-only.

When the configured ``spool_dir`` exists (a ``serve`` running on it, or stopped), ``explain``
shows the hosts of its plan that delivery skips until their retry time (RTY-4) and the
destination's MTA-STS policy as the relay has cached it (TLS-5).

The skipped hosts live in the running relay's memory only (``relay.courier.hosts.Hosts``, as
``mxroute queue hosts`` shows them): they are asked of it over its control socket, the same
read-only ``hosts`` request, bounded by ``ASK_TIMEOUT``; nothing takes the spool lock. The
MTA-STS policy is read from the store the delivery process writes (``tls.mtasts.store``), by
that store's own loader, never written.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxroute.dns.resolver import Resolver
from mxroute.errors import MxrouteError
from mxroute.routing.plan import Plan
from mxroute.routing.shaping import site_of
from mxroute.settings import Settings

if TYPE_CHECKING:
    from mxroute.tls.mtasts.store import MtaSts

ASK_TIMEOUT = 2.0  # seconds for the running serve's answer
NOT_RUNNING = "no serve running on this spool: the hosts skipped until their retry time " \
              "are remembered by a running serve only"


@dataclass
class RelaySnapshot:
    """What the relay on ``spool`` knows, once per ``explain`` run: ``serve`` is ``running``,
    ``not running`` or ``unreachable`` (``note`` says why); ``hosts`` as ``queue hosts --json``
    has them."""

    spool: Path
    serve: str
    note: str | None = None
    hosts: list[dict[str, Any]] = field(default_factory=list)
    # issue 18 §2: site -> its throttle, suspension and family preference in force
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_plan(self, plan: Plan, mta_sts: dict[str, Any] | None) -> dict[str, Any]:
        """The ``relay`` object of ``explain --json``: this plan's skipped hosts only, its
        site's health (issue 18 §2) and the order delivery tries the addresses in now."""
        targets = {(t.address, t.port) for t in plan.targets}
        skipped = [h for h in self.hosts if (h.get("address"), h.get("port")) in targets]
        site = site_of(plan)
        health = self.sites.get(site)
        order = plan.targets
        prefer = (health or {}).get("prefer")
        if prefer:
            from mxroute.relay.courier.health import reorder

            order = reorder(plan, int(prefer["family"])).targets
        return {"spool": str(self.spool), "serve": self.serve, "note": self.note,
                "skipped_hosts": skipped, "mta_sts_cached": mta_sts, "site": site,
                "site_health": health, "delivery_order": [t.to_json() for t in order]}


# spool -> (good until, the snapshot or the ask in flight): one ask per SNAPSHOT_TTL however many
# addresses one process explains (bulk explain)
_snapshots: dict[Path, tuple[float, RelaySnapshot | asyncio.Task[RelaySnapshot]]] = {}
SNAPSHOT_TTL = 5.0


async def snapshot(settings: Settings) -> RelaySnapshot | None:
    """The relay's state on ``spool_dir``, or None when there is no spool directory."""
    root = Path(settings.spool_dir)
    if not root.is_dir():
        return None
    now = time.monotonic()
    known = _snapshots.get(root)
    if known is not None and known[0] > now:
        held = known[1]
        if isinstance(held, RelaySnapshot):
            return held
        if held.get_loop() is asyncio.get_running_loop():
            return await asyncio.shield(held)
    task = asyncio.ensure_future(_ask(root))
    _snapshots[root] = (now + SNAPSHOT_TTL, task)
    found = await task
    _snapshots[root] = (time.monotonic() + SNAPSHOT_TTL, found)
    return found


async def _ask(root: Path) -> RelaySnapshot:
    """Ask the serve running on ``root`` for the hosts it skips."""
    from mxroute.cli.queueops import ask
    from mxroute.service.control import SOCKET_NAME

    request = {"op": "hosts", "forget": None}
    try:
        reply = await asyncio.to_thread(ask, root / SOCKET_NAME, request, ASK_TIMEOUT)
    except MxrouteError as exc:
        return RelaySnapshot(root, "unreachable", exc.message)
    except OSError as exc:  # no answer within ASK_TIMEOUT
        return RelaySnapshot(root, "unreachable", f"serve's control socket: {exc}")
    if reply is None or not reply.get("live"):
        return RelaySnapshot(root, "not running", NOT_RUNNING)
    hosts, sites = reply.get("hosts"), reply.get("sites")
    return RelaySnapshot(root, "running", None, hosts if isinstance(hosts, list) else [],
                         sites if isinstance(sites, dict) else {})


_stores: dict[Path, tuple[int, MtaSts]] = {}  # store file -> (mtime, its MtaSts, read-only)


def cached_policy(settings: Settings, resolver: Resolver, domain: str) -> dict[str, Any] | None:
    """The MTA-STS policy the delivery process has stored for ``domain`` (fresh entries only,
    as delivery loads them), or None."""
    from mxroute.tls.mtasts.store import STORE_NAME, MtaSts

    path = Path(settings.spool_dir) / STORE_NAME
    if domain.startswith("[") or not path.is_file():
        return None
    from mxroute.routing.route import mta_sts_reach

    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    store = _stores.get(path)
    if store is None or store[0] != stamp:  # read once per version of the file
        _stores.clear()
        store = _stores[path] = (stamp, MtaSts(mta_sts_reach(settings), resolver, store=path,
                                               persist=False))
    entry = store[1].cached(domain)
    if entry is None:
        return None
    policy = entry.policy
    return {"id": entry.id, "mode": policy.mode, "mx": list(policy.mx), "max_age": policy.max_age,
            "fetched": round(entry.fetched, 3), "expires": round(entry.expires, 3)}


def render(relay: dict[str, Any]) -> list[str]:
    """The text form's lines for the ``relay`` object."""
    out = [f"  spool {relay['spool']}: serve {relay['serve']}"]
    if relay["note"]:
        out.append(f"  {relay['note']}")
    for host in relay["skipped_hosts"]:
        out.append(f"  {host['host']}  skipped until {_when(host['until'])} "
                   f"(failing since {_when(host['since'])}): {host['reply']}")
    if relay.get("site_health"):
        from mxroute.cli.queueops import site_lines

        out += [f"  site {relay['site']}: {line}" for line in site_lines(relay["site_health"])]
    sts = relay["mta_sts_cached"]
    if sts:
        out.append(f"  MTA-STS policy cached: id {sts['id']}, mode {sts['mode']}, "
                   f"mx {', '.join(sts['mx']) or '-'}, until {_when(sts['expires'])}")
    return out


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


__all__ = ["RelaySnapshot", "cached_policy", "render", "snapshot"]

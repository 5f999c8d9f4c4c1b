"""What a fleet's nodes tell each other through ``shared_state`` (issue 19, docs/fleets.md): the
key names, the records of shared holds and host health, the nodes' queue summaries and their
merge into the fleet's. PURE: text and numbers, no connection.

Every key starts ``mxr:`` and carries a Redis Cluster hash tag (``{...}``): a site's or a
domain's keys are tagged by its name, a host's by its address and port, a node's by its name,
so a fleet past one Redis shards by site. Every key has a TTL: a hold's is its remaining time,
a node's is its heartbeat's (``NODE_TTL``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "mxroute"  # as the limiter's keys (``scripts``)
CHANNEL = f"{PREFIX}:news"  # pub/sub: every hold, host and lift as it is published
HOLD_KINDS = ("suspension", "throttle", "operator")  # a pattern's or dead site's, a throttle,
# ``mxroute queue suspend``'s
HEARTBEAT = 5.0  # seconds between a node's summaries
NODE_TTL = 3 * HEARTBEAT  # a node that stopped publishing drops out of the view after this
LONGEST = 30 * 86400.0  # an open-ended hold (suspended until resumed) is kept at most this long
FORMAT = 1  # the records' version: a node ignores a record of another


def tag(name: str) -> str:
    """``name`` as a hash tag (as ``scripts``' keys: a brace in it would end the tag early)."""
    return "{" + name.replace("{", "(").replace("}", ")") + "}"


def hold_key(name: str, kind: str) -> str:
    """The key of site (or domain) ``name``'s hold of ``kind``, hash-tagged by ``name``."""
    return f"{PREFIX}:hold:{tag(name)}:{kind}"


def host_key(address: str, port: int) -> str:
    """The key of an unreachable host, hash-tagged by its address and port."""
    return f"{PREFIX}:host:{tag(f'{address}:{port}')}"


def node_key(node: str) -> str:
    """The key of a node's queue summary, hash-tagged by the node's name."""
    return f"{PREFIX}:view:{tag(node)}"


HOLD_PATTERN = f"{PREFIX}:hold:*"
HOST_PATTERN = f"{PREFIX}:host:*"
NODE_PATTERN = f"{PREFIX}:view:*"


def node_name(host: str, spool: str) -> str:
    """A node's name: its host name and spool (two serve on one host have two spools)."""
    return f"{host}:{spool}"


def ttl_ms(seconds: float) -> int:
    """A key's TTL in milliseconds for a hold of ``seconds`` left (inf: ``LONGEST``), >= 1."""
    return max(1, int(min(seconds, LONGEST) * 1000))


@dataclass(frozen=True, slots=True)
class SharedHold:
    """A site's or domain's hold learnt by ``node``: ``kind`` is ``suspension`` (a reply
    pattern's, ``cause`` ``reply``, or a dead site's, ``dead-site``), ``throttle`` (``rate``
    messages per second) or ``operator`` (``mxroute queue suspend``); ``ttl`` seconds left."""

    name: str
    kind: str
    reason: str
    ttl: float
    node: str
    rate: float | None = None
    cause: str = "reply"

    @property
    def key(self) -> str:
        return hold_key(self.name, self.kind)


@dataclass(frozen=True, slots=True)
class SharedHost:
    """A host that gave no session at connect, greeting or EHLO, skipped ``ttl`` seconds more;
    ``label`` as the log names it (``mx.example[192.0.2.1]:25``)."""

    address: str
    port: int
    status: str
    reply: str
    ttl: float
    node: str
    label: str = ""

    @property
    def key(self) -> str:
        return host_key(self.address, self.port)


@dataclass(frozen=True, slots=True)
class Lift:
    """A hold lifted early (``mxroute queue resume``) by ``node``."""

    name: str
    kind: str
    node: str

    @property
    def key(self) -> str:
        return hold_key(self.name, self.kind)


News = SharedHold | SharedHost | Lift
_WHAT: dict[type, str] = {SharedHold: "hold", SharedHost: "host", Lift: "lift"}


def encode(item: News) -> str:
    """``item`` as the JSON text stored under its key and published on ``CHANNEL``."""
    return json.dumps({"v": FORMAT, "what": _WHAT[type(item)], **asdict(item)},
                      separators=(",", ":"), ensure_ascii=False)


def decode(text: str | bytes, ttl: float | None = None) -> News:
    """The record in ``text`` (``ttl``: the key's own TTL, read from the server, replaces the
    one written); ValueError when it is not one of this version."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("v", None) != FORMAT:
            raise ValueError("not a record of this version")
        what = data.pop("what")
        if ttl is not None and what != "lift":
            data["ttl"] = ttl
        if what == "hold":
            hold = SharedHold(**data)
            if hold.kind not in HOLD_KINDS:
                raise ValueError(f"unknown hold kind {hold.kind!r}")
            item: News = hold
        elif what == "host":
            item = SharedHost(**data)
        elif what == "lift":
            item = Lift(**data)
        else:
            raise ValueError(f"unknown record {what!r}")
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a record: {exc}") from None
    if not isinstance(item, Lift) and not (isinstance(item.ttl, int | float)
                                           and math.isfinite(item.ttl) and item.ttl > 0):
        raise ValueError("a record without a positive TTL")
    return item


# --- the fleet queue view ---------------------------------------------------------------------

COUNTS = ("active", "due", "deferred", "held")


@dataclass(slots=True)
class NodeSummary:
    """One node's queue as its heartbeat publishes it: messages by state (``QueueManager.sizes``)
    at Unix time ``at``."""

    node: str
    host: str
    spool: str
    pid: int
    at: float
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return sum(self.counts.get(name, 0) for name in COUNTS)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "host": self.host, "spool": self.spool, "pid": self.pid,
                "at": round(self.at, 3), "messages": self.messages,
                **{name: self.counts.get(name, 0) for name in COUNTS}}

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeSummary:
        """ValueError when ``text`` is not a node summary."""
        try:
            data = json.loads(text)
            return cls(str(data["node"]), str(data["host"]), str(data["spool"]),
                       int(data["pid"]), float(data["at"]),
                       {name: int(data.get(name, 0)) for name in COUNTS})
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a node summary: {exc!r}") from None


def fleet_summary(nodes: list[NodeSummary], now: float) -> dict[str, Any]:
    """The fleet's queue: each live node (by name) with the seconds since its summary, and
    the total (``queue summary --fleet --json``)."""
    ranked = sorted(nodes, key=lambda n: n.node)
    total = {name: sum(n.counts.get(name, 0) for n in ranked) for name in COUNTS}
    return {"nodes": [{**n.to_json(), "age": round(max(0.0, now - n.at), 1)} for n in ranked],
            "total": {"nodes": len(ranked), "messages": sum(total.values()), **total}}


def render_fleet(summary: dict[str, Any]) -> list[str]:
    """``fleet_summary``'s answer as the lines of a table, the total first."""
    head = ["NODE", "MSGS", *(name.upper() for name in COUNTS), "SEEN"]
    total = summary["total"]
    table = [head, [f"TOTAL ({total['nodes']} node{'s' if total['nodes'] != 1 else ''})",
                    str(total["messages"]), *(str(total[name]) for name in COUNTS), ""]]
    table += [[n["node"], str(n["messages"]), *(str(n[name]) for name in COUNTS),
               f"{n['age']:.0f}s ago"] for n in summary["nodes"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                     zip(row[1:], widths[1:])]).rstrip()
            for row in table]


__all__ = [
    "CHANNEL",
    "COUNTS",
    "FORMAT",
    "HEARTBEAT",
    "HOLD_KINDS",
    "HOLD_PATTERN",
    "HOST_PATTERN",
    "LONGEST",
    "NODE_PATTERN",
    "NODE_TTL",
    "PREFIX",
    "Lift",
    "News",
    "NodeSummary",
    "SharedHold",
    "SharedHost",
    "decode",
    "encode",
    "fleet_summary",
    "hold_key",
    "host_key",
    "node_key",
    "node_name",
    "render_fleet",
    "tag",
    "ttl_ms",
]

"""checkdmarc (a test-only peer) parsing DMARC records, run as its own process, asking ONLY the
given loopback DNS server, with every network destination it tries recorded.

Run as ``python -m tests.support.checkdmarcpeer HOST PORT DOMAIN`` with one record per stdin
line; prints one JSON object: ``{"results": [...], "destinations": [...]}``. Each result is
``{"tags": {tag: value}, "warnings": [...]}`` or ``{"error": "ExceptionClass: message"}``.
An audit hook (installed before checkdmarc is imported) records the address of every
``socket.connect``, ``socket.sendto`` and ``socket.getaddrinfo``: the test asserts that all
of them are the loopback server.
"""

from __future__ import annotations

import json
import sys
from typing import Any

destinations: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.sendto"):
        destinations.append(f"{event} {args[1]!r}")
    elif event == "socket.getaddrinfo":
        destinations.append(f"{event} {args[0]!r}")


def main() -> int:
    host, port, domain = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sys.addaudithook(_audit)
    import dns.resolver
    from checkdmarc.dmarc import parse_dmarc_record

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.timeout = resolver.lifetime = 2.0
    results: list[dict[str, Any]] = []
    for line in sys.stdin.read().splitlines():
        try:
            parsed = parse_dmarc_record(line, domain, resolver=resolver, timeout=2.0, retries=0)
        except Exception as exc:  # noqa: BLE001  (every refusal is an answer to compare)
            results.append({"error": f"{type(exc).__name__}: {exc}"})
            continue
        tags = {name: tag["value"] for name, tag in parsed["tags"].items()}
        results.append({"tags": tags, "warnings": parsed["warnings"]})
    print(json.dumps({"results": results, "destinations": destinations}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

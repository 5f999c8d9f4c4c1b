"""The read-only queue tools' command lines: ``mxroute queue list | summary | show | cat``
(issue 15 B; docs/operators.md). Parsing here; the work in ``queuelist`` and ``queueshow``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mxroute.errors import EX_USAGE
from mxroute.relay.spool.listing import MESSAGE_STATES, parse_duration
from mxroute.settings import Settings

VIEWS = ("list", "summary", "show", "cat")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _top(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def add_view_parsers(actions: Any, common: argparse.ArgumentParser) -> None:
    """Add list, summary, show and cat to the ``queue`` subcommands ``actions``."""
    p = actions.add_parser("list", parents=[common],
                           help="each message and its recipients' states (postqueue -p, mailq)")
    p.add_argument("--domain", metavar="D", help="only messages still waiting for domain D")
    p.add_argument("--state", choices=list(MESSAGE_STATES),
                   help="active: a recipient is due now or was never tried; deferred: every "
                        "recipient waits for its retry time")
    p.add_argument("--older-than", metavar="DURATION", type=_duration,
                   help="only messages that arrived at least this long ago (30m, 2h, 1d)")
    p.add_argument("--json", action="store_true", help="one JSON object per message and line")
    p = actions.add_parser("summary", parents=[common],
                           help="pending mail by recipient domain and age (qshape, exiqsumm)")
    p.add_argument("--top", metavar="N", type=_top, help="only the N domains with most messages")
    p.add_argument("--by", choices=("domain", "site"), default="domain",
                   help="group by recipient domain (the default) or by destination site (its MX "
                        "host names, looked up in DNS; docs/shaping.md)")
    p.add_argument("--fleet", action="store_true",
                   help="every live node of the fleet sharing shared_state, and the total "
                        "(docs/fleets.md)")
    p.add_argument("--json", action="store_true")
    p = actions.add_parser("show", parents=[common],
                           help="one message: envelope, recipients, headers (ID or prefix)")
    p.add_argument("queue_id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p = actions.add_parser("cat", parents=[common],
                           help="one message's bytes as spooled, printable (postcat -q)")
    p.add_argument("queue_id", metavar="ID")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--headers", action="store_const", dest="part", const="headers",
                      default="message", help="the header section only")
    part.add_argument("--body", action="store_const", dest="part", const="body",
                      help="the body only")
    p.add_argument("--json", action="store_true")


def view_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``queue list | summary | show | cat`` as parsed by ``add_view_parsers``."""
    from mxroute.cli.queue import run_on_spool

    if args.action in ("list", "summary"):
        from mxroute.cli import queuelist

        if args.action == "summary":
            if args.fleet:
                from mxroute.cli.queuefleet import fleet_summary_command

                if args.by != "domain" or args.top is not None:
                    print("mxroute: queue summary --fleet counts messages per node: no --by or "
                          "--top", file=sys.stderr)
                    return EX_USAGE
                return fleet_summary_command(settings, args.json)
            sites = None
            if args.by == "site":
                from mxroute.cli.queuesites import sites_of

                sites = sites_of(settings)
            return run_on_spool(settings, lambda spool: queuelist.summary(spool, args.top,
                                                                          args.json, sites))
        from mxroute.relay.spool.listing import Filter

        wanted = Filter(domain=args.domain, state=args.state, older_than=args.older_than)
        return run_on_spool(settings, lambda spool: queuelist.listing(spool, wanted, args.json))
    from mxroute.cli import queueshow

    if args.action == "show":
        return run_on_spool(settings, lambda spool: queueshow.show(spool, args.queue_id,
                                                                   args.json))
    return run_on_spool(settings, lambda spool: queueshow.cat(spool, args.queue_id, args.part,
                                                              args.json))


def mailq(settings: Settings) -> int:
    """``mailq`` and ``sendmail -bp``: exactly ``mxroute queue list``."""
    return view_command(settings, argparse.Namespace(action="list", domain=None, state=None,
                                                     older_than=None, json=False))

"""The `mxroute` command: parse arguments, call, render. No logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mxroute.errors import EX_CONFIG, EX_OK, EX_USAGE, AddressError, ConfigError, MxrouteError

PROG = "mxroute"


class _Parser(argparse.ArgumentParser):
    """argparse that exits 64 (EX_USAGE) on bad arguments, as mail tools do."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EX_USAGE)


def _ip_argument(text: str) -> str:
    """An IP address argument (argparse turns the ValueError into a usage error: exit 64)."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="TOML settings file (default: $MXROUTE_CONFIG, "
                             "else /etc/mxroute/mxroute.toml)")
    common.add_argument("--dns", metavar="SERVER[:PORT]", action="append", default=[],
                        type=_dns_server,
                        help="DNS server to ask (repeatable; overrides dns_servers)")
    common.add_argument("--zone", metavar="FILE", action="append", default=[],
                        help="answer DNS from this RFC 1035 zone file instead (repeatable)")
    return common


def _dns_server(text: str) -> str:
    """``--dns`` checked as an argument (exit 64) by the parser of the ``dns_servers`` setting."""
    from mxroute.dns.resolver import Server

    try:
        Server.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _version() -> str:
    """This package's version, from its installed metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PROG)
    except PackageNotFoundError:
        return "(version unknown: not installed)"


class _Version(argparse.Action):
    """``--version``: the installed metadata is read only when it is asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 help: str | None = "show the version and exit") -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{PROG} {_version()}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the ``command`` argv names, the subcommands of the other
    commands (queue's, dkim's: the spool code) are left out, so ``explain`` and ``spf`` start
    without them (issue 16, part 5)."""
    common = _common()
    parser = _Parser(prog=PROG, description="Mail routing resolver and SMTP smarthost relay.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("explain", parents=[common], help="show how mail to ADDRESS would be routed")
    p.add_argument("address", nargs="?",
                   help="the address; - reads one address per line from stdin (with --json)")
    p.add_argument("--file", metavar="FILE",
                   help="read one address per line from FILE (with --json; docs/explain.md)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--from", dest="author", metavar="AUTHOR",
                   help="the From: header address: adds the DKIM and DMARC verdict for its domain")
    p.add_argument("--sender",
                   help="envelope sender for the SPF check (default: the --from address, "
                        "else postmaster@sender_domain)")
    p.add_argument("--egress-ip", action="append", default=[], metavar="IP", type=_ip_argument,
                   help="the relay's sending address (repeatable; default: egress_ips)")
    p.add_argument("--helo", help="HELO name to check (default: helo_name)")
    p.add_argument("--probe", action="store_true",
                   help="connect to the first address: banner, EHLO, STARTTLS")
    p.add_argument("--record", metavar="FILE",
                   help="write every DNS answer seen as a zone file that --zone replays")
    p.add_argument("--seed", type=int,
                   help="seed the shuffle of equal preferences (deterministic output)")

    p = sub.add_parser("spf", parents=[common], help="RFC 7208 check_host() with a trace")
    p.add_argument("ip")
    p.add_argument("sender")
    p.add_argument("--helo")
    p.add_argument("--json", action="store_true")

    sub.add_parser("serve", parents=[common], help="run the smarthost relay")

    p = sub.add_parser("queue", help="inspect and act on the spool (docs/operators.md)")
    queue = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    if command in (None, "queue"):
        from mxroute.cli.queueops import add_op_parsers
        from mxroute.cli.queueview import add_view_parsers

        add_view_parsers(queue, common)  # list, summary, show, cat
        add_op_parsers(queue, common)  # flush, hold, release, requeue, bounce, delete, hosts

    sub.add_parser("sendmail", help="sendmail-compatible submission to the local relay: "
                                    "mxroute sendmail [-t] [-i] [-f SENDER] [RCPT...]")

    p = sub.add_parser("dkim", help="DKIM keys: keygen, check (docs/dkim.md)")
    dkim = p.add_subparsers(dest="dkim_action", required=True, parser_class=_Parser)
    if command in (None, "dkim"):
        _add_dkim_parsers(dkim, common)

    p = sub.add_parser("check-config", parents=[common],
                       help="validate the settings and print the effective values")
    p.add_argument("--json", action="store_true")
    p.add_argument("--non-default", action="store_true",
                   help="only the settings set somewhere: file, environment, command line "
                        "(postconf -n)")
    return parser


def _add_dkim_parsers(dkim: Any, common: argparse.ArgumentParser) -> None:
    p = dkim.add_parser("keygen", parents=[common],
                        help="write a new private key and print its DNS record")
    p.add_argument("domain")
    p.add_argument("selector")
    p.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    p.add_argument("--dir", default=".", help="where to write DOMAIN.SELECTOR.pem (default .)")
    p.add_argument("--group", help="write mode 0640 with this group (e.g. mxroute)")
    p.add_argument("--json", action="store_true")
    p = dkim.add_parser("check", parents=[common],
                        help="compare every configured key with the one published in DNS")
    p.add_argument("--json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    invoked_as = os.path.basename(sys.argv[0]) if sys.argv else ""
    # sendmail's names (symlinks to mxroute, docs/operators.md): mailq = sendmail -bp,
    # newaliases = sendmail -bi, as Postfix's and Exim's
    mode = {"mailq": ["-bp"], "newaliases": ["-bi"]}.get(invoked_as)
    if mode is not None:
        return _guarded(lambda: _sendmail([*mode, *argv]), stdout=True)
    if invoked_as == "sendmail" or (argv and argv[0] == "sendmail"):
        # sendmail's own flags (-f, -t, -i, ...) are not ours to parse: hand them over whole.
        return _guarded(lambda: _sendmail(argv[1:] if argv and argv[0] == "sendmail" else argv),
                        stdout=True)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return _guarded(lambda: _dispatch(args), stdout=True)


EX_SIGPIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE (`yes | head -1`)


def _guarded(run: Callable[[], int], *, stdout: bool = False) -> int:
    """Every command's errors become one readable line and a sysexits code, never a traceback.

    With ``stdout``, a reader that went away (``mxroute check-config | head -1``)
    ends the command quietly, as standard Unix tools do: no traceback, no
    "Exception ignored" at exit, status 141.
    """
    try:
        code = run()
        if stdout:
            sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at exit
        return code
    except BrokenPipeError:
        if not stdout:
            raise
        _silence_stdout()
        return EX_SIGPIPE
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    except AddressError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return EX_USAGE
    except MxrouteError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _sendmail(argv: list[str]) -> int:
    from mxroute.cli.sendmail import NO_ALIASES, Usage, parse_args, sendmail, split_common
    from mxroute.settings import load_settings

    try:
        config, argv = split_common(argv)
        command = parse_args(argv)
    except Usage as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    if command.mode == "newaliases":
        print(NO_ALIASES)
        return EX_OK
    settings = load_settings(config)
    if command.mode == "mailq":
        from mxroute.cli.queueview import mailq

        return mailq(settings)
    if command.mode == "flush":  # sendmail -q: mxroute queue flush
        return _dispatch(build_parser().parse_args(
            ["queue", "flush", *([] if config is None else ["--config", config])]))
    return sendmail(settings, command, sys.stdin.buffer)


def _usage(message: str) -> MxrouteError:
    """A bad argument the parser could not see (a missing zone file): one line, exit 64."""
    error = MxrouteError(message)
    error.exit_code = EX_USAGE
    return error


def _settings(args: argparse.Namespace) -> Any:
    from mxroute.settings import load_settings

    for zone in args.zone:  # a bad argument: 64, before the settings (78)
        if not os.path.isfile(zone):
            raise _usage(f"zone file {zone} does not exist")
    # the command line's settings: part of Settings, so they reach every process of serve
    overrides: dict[str, Any] = {}
    if args.dns:
        overrides["dns_servers"] = args.dns
    if args.zone:
        overrides["dns_zone_files"] = args.zone
    return load_settings(args.config, **overrides)


def _resolver(args: argparse.Namespace, settings: Any, trace: bool) -> Any:
    from mxroute.dns.configured import resolver_from_settings

    try:
        return resolver_from_settings(settings, trace_size=None if trace else 0)
    except ConfigError as exc:
        if args.zone:  # an unparseable --zone is a bad argument (64)
            raise _usage(exc.message) from None
        raise


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "explain":
        return _explain(args)
    if args.command == "spf":
        return _spf(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "serve":
        from mxroute.service.daemon import serve

        # SIGHUP: the same --config, --dns, --zone
        return serve(_settings(args), reload=lambda: _settings(args))
    if args.command == "queue":
        from mxroute.cli.queueops import queue_ops
        from mxroute.cli.queueview import VIEWS, view_command

        if args.action in VIEWS:
            return view_command(_settings(args), args)
        return queue_ops(args, _settings)
    if args.command == "dkim":
        return _dkim(args)
    raise AssertionError(args.command)


def _dkim(args: argparse.Namespace) -> int:
    from mxroute.cli import dkim

    if args.dkim_action == "keygen":
        return dkim.keygen(args.domain, args.selector, args.algorithm, args.bits, args.dir,
                           args.group, args.json)
    settings = _settings(args)
    return dkim.check(settings, _resolver(args, settings, trace=False), args.json)


def _explain(args: argparse.Namespace) -> int:
    from mxroute.address import parse_address
    from mxroute.cli.explain import run_explain

    bulk = args.address == "-" or args.file is not None  # issue 16 §4: one address per line
    if args.address is None and not bulk:
        raise _usage("explain needs ADDRESS, - (stdin) or --file FILE")
    address = None if bulk else parse_address(args.address)
    if args.sender and args.sender not in ("<>", ""):
        # malformed: exit 64, before any DNS
        parse_address(args.sender.removeprefix("<").removesuffix(">"))
    author = parse_address(args.author) if args.author is not None else None
    if author is not None and author.literal is not None:
        raise _usage(f"--from {args.author}: DMARC needs a domain, not an address literal")
    settings = _settings(args)
    if address is None:
        from mxroute.cli.explainbulk import bulk_command

        args.author, args.address = author, None if args.address == "-" else args.address
        return bulk_command(args, settings, _resolver(args, settings, trace=False), _usage)
    resolver = _resolver(args, settings, trace=True)
    recorder = None
    if args.record:
        from mxroute.dns.zonefile import Recorder

        recorder = Recorder()
        resolver.observers.append(recorder)
    report = asyncio.run(run_explain(address, settings, resolver, seed=args.seed,
                                     egress_ips=args.egress_ip, sender=args.sender,
                                     helo=args.helo, probe=args.probe, author=author))
    if recorder is not None:
        try:
            with open(args.record, "w", encoding="utf-8") as handle:
                handle.write(recorder.zone_text(f"explain {report.address}"))
        except OSError as exc:
            print(f"{PROG}: cannot write {args.record}: {exc.strerror or exc}", file=sys.stderr)
            return EX_USAGE
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        from mxroute.cli.render import Style, render_explain

        sys.stdout.write(render_explain(report, Style(sys.stdout.isatty())))
    return report.exit_code


def _spf(args: argparse.Namespace) -> int:
    from mxroute.cli.spf import spf_command

    settings = _settings(args)
    resolver = _resolver(args, settings, trace=True)
    return asyncio.run(spf_command(resolver, args.ip, args.sender, args.helo, args.json))


def _check_config(args: argparse.Namespace) -> int:
    """The effective settings and where each came from (issue 15 D; ``--non-default``: only
    those set somewhere), what would stop ``serve`` (issue 15 C3), the HELO name's check (issue
    15 C2), the ``dkim check`` status of every DKIM key (issue 14), then the PTR/HELO self-check
    of each egress IP (SPF-11, SPF-12).

    Key and identity warnings are advice, not configuration errors: the exit code stays 0.
    In text form they follow the ``name = value`` lines as ``#`` comments: the text is a TOML
    file that loads back to the same settings.
    """
    from mxroute.cli.config import check_startup, settings_json, settings_lines
    from mxroute.cli.sharedcheck import check_shared_state
    from mxroute.identity import helo
    from mxroute.identity.findings import check_ptr

    settings = _settings(args)
    check_startup(settings)
    shared = check_shared_state(settings)  # issue 19
    values = settings_json(settings, args.non_default)
    resolver = _resolver(args, settings, trace=False)
    keys: list[Any] = []
    if settings.dkim_keys:
        from mxroute.cli.dkim import check_configured

        keys = check_configured(settings, resolver)

    async def checks() -> tuple[Any, Any]:
        found = await helo.check_helo(resolver, settings.helo_name, settings.egress_ips)
        if not settings.egress_ips:
            return found, None
        return found, await check_ptr(resolver, egress_ips=settings.egress_ips,
                                      helo=settings.helo_name)

    helo_found, reports = asyncio.run(checks())
    from mxroute.tls.files import file_warnings

    tls_files = file_warnings(settings.tls_cert_file, settings.tls_key_file)  # issue 21
    if args.json:
        values["file_permissions"] = tls_files
        values["helo_check"] = [finding.to_json() for finding in helo_found]
        values["dkim_check"] = [key.to_json() for key in keys]
        values["identity_check"] = ([report.to_json() for report in reports]
                                    if reports is not None else None)
        values["shared_state_check"] = shared
        print(json.dumps(values, indent=2))
        return EX_OK
    for line in settings_lines(settings, args.non_default):
        print(line)
    print()
    for warning in tls_files:
        print(f"# warning: {warning}")
    for finding in helo_found:  # issue 15 C2
        print(f"# {helo.line(settings, finding)}")
    if not helo_found:
        print(f"# helo_name {settings.helo_name}: ok")
    if shared is not None:
        from mxroute.cli.sharedcheck import line as shared_line

        print(f"# {shared_line(shared)}")
    if keys:
        from mxroute.cli.dkim import check_line

        print("# DKIM keys (mxroute dkim check)")
        for key in keys:
            print(f"# {check_line(key)}")
    if reports is None:
        print("# sending identity: not checked (egress_ips is empty)")
    else:
        from mxroute.cli.identity import render_ptr

        print("# sending identity: PTR (iprev, RFC 8601 §3) and HELO name of each egress IP")
        sys.stdout.write(render_ptr(reports, prefix="# "))
    return EX_OK

"""`mxroute sendmail`: the /usr/sbin/sendmail interface, submitting to the local relay over SMTP.

Reads a message on stdin and hands it to the first ``listen`` address of the
running ``mxroute serve`` that is not ``smtps://``, declaring ``BODY=8BITMIME`` and
``SMTPUTF8`` when the message needs them. Exit codes are sendmail's (sysexits): 0 accepted,
64 usage, 65 bad message or address, 75 the relay cannot take it now (the
caller keeps the message and retries), 69 refused for good. Once the relay has
queued the message for any recipient the code is 0, so a retrying caller sends
no duplicate; the refused recipients are named on stderr, one line each (as
Postfix's sendmail queues and reports them by DSN). As a submission agent it
adds Date, Message-ID and From when missing (RFC 6409 §8), the From: with the
sender's full name (``-F``, else ``$NAME``) as Postfix's does. ``-bp`` (the
``mailq`` name) lists the queue; ``-q`` is ``mxroute queue flush`` (``-q30m``, a
queue-runner daemon, is a usage error: ``serve`` runs the queue); ``-bi``/``-I`` (the
``newaliases`` name) has no aliases database to build and says so, exit 0 (Exim's ``-bi`` without
``bi_command`` does nothing).
"""

from __future__ import annotations

import getpass
import os
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import BinaryIO, Literal

from mxroute.address import Listener, parse_address
from mxroute.errors import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, AddressError
from mxroute.settings import Settings

# Flags sendmail accepts that change nothing here (queueing, delivery mode, error mode).
_IGNORED = {"-odb", "-odi", "-odq", "-oem", "-oep", "-oeq", "-bm", "-U", "-v", "-oee", "-oew",
            "-om", "-m", "-Am", "-Ac"}


class Usage(Exception):
    pass


def split_common(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take mxroute's common options out of a sendmail command line: (config file, the rest).

    ``--config FILE`` (or sendmail's own ``-C FILE``) names the configuration, so the
    right relay is found; ``--dns`` and ``--zone`` are accepted, as by every command,
    and mean nothing here (submission asks no DNS).
    """
    config: str | None = None
    rest: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            rest += [arg, *args]
            break
        name, eq, value = arg.partition("=")
        if (name in ("--config", "--dns", "--zone") or arg == "-C"
                or (arg.startswith("-C") and len(arg) > 2)):
            if arg.startswith("-C") and len(arg) > 2:
                value = arg[2:]
            elif not eq:
                if not args:
                    raise Usage(f"{arg} needs a value")
                value = args.pop(0)
            if name in ("--config", "-C") or arg.startswith("-C"):
                config = value
            continue
        rest.append(arg)
    return config, rest


@dataclass(slots=True)
class Command:
    """A sendmail command line: the mode and, to send, its options and recipients."""

    mode: Literal["send", "mailq", "newaliases", "flush"] = "send"
    extract: bool = False  # -t
    dot_ok: bool = False  # -i, -oi
    sender: str | None = None  # -f, -r
    full_name: str | None = None  # -F
    recipients: list[str] = field(default_factory=list)


# The modes of sendmail(8) and Postfix's: -bp = mailq, -bi (and Postfix's -I) = newaliases.
_MODES: dict[str, Literal["mailq", "newaliases"]] = {
    "-bp": "mailq", "-bi": "newaliases", "-I": "newaliases"}
NO_ALIASES = ("mxroute: no aliases database: mxroute relays mail to other hosts and delivers "
              "none here, so there is nothing to rebuild (aliases belong to the MTA that "
              "delivers the mail)")


def parse_args(argv: Sequence[str]) -> Command:
    """The command from sendmail's command line (``Usage`` for what it cannot take)."""
    command = Command()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            command.recipients.extend(args)
            break
        if arg == "-t":
            command.extract = True
        elif arg in ("-i", "-oi"):
            command.dot_ok = True
        elif arg in _MODES:
            command.mode = _MODES[arg]
        elif arg == "-q":  # process the queue now (-q30m, a queue-runner daemon: unsupported)
            command.mode = "flush"
        elif arg.startswith(("-f", "-r", "-F")):
            value = arg[2:] or (args.pop(0) if args else None)
            if value is None:
                raise Usage(f"{arg} needs {'a name' if arg == '-F' else 'an address'}")
            if arg.startswith("-F"):
                command.full_name = value
            else:
                command.sender = value
        elif arg.startswith(("-B", "-N", "-R", "-V", "-X")):
            if len(arg) == 2 and args:
                args.pop(0)
        elif arg in _IGNORED or arg.startswith("-o"):
            continue
        elif arg.startswith("-"):
            raise Usage(f"unsupported option {arg}")
        else:
            command.recipients.extend(r.strip() for r in arg.split(",") if r.strip())
    if command.mode == "flush" and command.recipients:
        raise Usage("-q flushes the queue and takes no recipients")
    return command


def full_name(given: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The sender's full name: ``-F``, else ``$NAME`` (Postfix's sendmail), on one line."""
    name = given if given is not None else environ.get("NAME")
    name = " ".join((name or "").split())  # no CR/LF: a name never adds a header field
    return name or None


def read_message(stream: BinaryIO, dot_ok: bool) -> bytes:
    """The message on stdin; without -i a line holding only "." ends it (sendmail(8))."""
    lines = []
    for line in stream:
        if not dot_ok and line.rstrip(b"\r\n") == b".":
            break
        lines.append(line.rstrip(b"\r\n"))
    return b"\r\n".join(lines) + b"\r\n"


def complete_headers(
    message: bytes, sender: str, extract: bool, name: str | None = None,
) -> tuple[bytes, list[str]]:
    """Add missing Date/Message-ID/From (``name`` its display name, RFC 2047-encoded when not
    ASCII); with -t, take To/Cc/Bcc recipients and drop Bcc."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        head, body = message.rstrip(b"\r\n"), b""
    # UTF-8 header fields (RFC 6532: what mail(1) and PHP write for a UTF-8 address) read as
    # text; BytesHeaderParser would read them as ASCII with escapes (issue 17)
    headers = HeaderParser().parsestr(head.decode("utf-8", "surrogateescape") + "\r\n\r\n")
    recipients: list[str] = []
    if extract:
        fields = headers.get_all("To", []) + headers.get_all("Cc", []) + headers.get_all("Bcc", [])
        recipients = [addr for _, addr in getaddresses([str(f) for f in fields]) if addr]
    lines = head.split(b"\r\n") if head else []
    if extract:
        kept, skipping = [], False
        for line in lines:
            if line[:1] in (b" ", b"\t"):
                if not skipping:
                    kept.append(line)
                continue
            skipping = line.lower().startswith(b"bcc:")
            if not skipping:
                kept.append(line)
        lines = kept
    domain = sender.rpartition("@")[2] or socket.getfqdn()
    extra = []
    if headers.get("Date") is None:
        extra.append(f"Date: {formatdate(time.time(), localtime=True)}".encode())
    if headers.get("Message-ID") is None:
        extra.append(f"Message-ID: {make_msgid(domain=domain)}".encode())
    if headers.get("From") is None:
        author = f"{_display(name)} <{sender}>" if name and sender not in ("", "<>") else sender
        extra.append(f"From: {author}".encode())
    return b"\r\n".join(lines + extra) + b"\r\n\r\n" + body, recipients


def _display(name: str) -> str:
    """``name`` as a display name: quoted when it holds specials, RFC 2047 when not ASCII.

    formataddr() does exactly that, but refuses a non-ASCII address (SMTPUTF8 senders), so it
    formats the name with a stand-in address, which is cut off.
    """
    return formataddr((name, "@"), charset="utf-8").removesuffix(" <@>")


def sendmail(settings: Settings, command: Command, stdin: BinaryIO) -> int:
    """Submit one message to the local relay; return sendmail's exit code."""
    sender = command.sender
    if sender is None:
        sender = f"{getpass.getuser()}@{settings.helo_name}"
    message = read_message(stdin, command.dot_ok)
    message, found = complete_headers(message, sender, command.extract,
                                      full_name(command.full_name))
    recipients = command.recipients + found
    if not recipients:
        print("sendmail: no recipients given (name them, or use -t)", file=sys.stderr)
        return EX_USAGE
    try:
        for address in [*recipients, *([sender] if sender not in ("", "<>") else [])]:
            parse_address(address)
    except AddressError as exc:
        print(f"sendmail: {exc.message}", file=sys.stderr)
        return EX_DATAERR
    host, port, implicit_tls = _relay_address(settings)
    try:
        with _connect(host, port, implicit_tls, settings.helo_name) as client:
            refused = client.sendmail("" if sender == "<>" else sender, recipients, message,
                                      mail_options(sender, recipients, message))
    except smtplib.SMTPRecipientsRefused as exc:
        return _refused({r: v for r, v in exc.recipients.items()})
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        print(f"sendmail: the relay at {host}:{port} answered {exc.smtp_code} {text}",
              file=sys.stderr)
        return EX_TEMPFAIL if exc.smtp_code < 500 else EX_UNAVAILABLE
    except (OSError, smtplib.SMTPException) as exc:
        print(f"sendmail: cannot reach the relay at {host}:{port}: {exc}; try again later",
              file=sys.stderr)
        return EX_TEMPFAIL
    _report(refused)  # queued for the others: retrying would duplicate their copies
    return EX_OK


def _relay_address(settings: Settings) -> tuple[str, int, bool]:
    """The first ``listen`` address that is not ``smtps://``, else the first (a wildcard as
    loopback): (host, port, implicit TLS)."""
    listeners = settings.listeners() or [Listener("127.0.0.1", 2525)]
    relay = next((item for item in listeners if not item.implicit_tls), listeners[0])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(relay.host, relay.host)
    return host, relay.port, relay.implicit_tls


def _connect(host: str, port: int, implicit_tls: bool, helo: str) -> smtplib.SMTP:
    """An SMTP session with the local relay; over implicit TLS when it listens only on
    ``smtps://`` (its certificate not checked: this machine's own configuration names it)."""
    if not implicit_tls:
        return smtplib.SMTP(host, port, local_hostname=helo, timeout=60)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return smtplib.SMTP_SSL(host, port, local_hostname=helo, timeout=60, context=context)


def mail_options(sender: str, recipients: Sequence[str], message: bytes) -> list[str]:
    """MAIL parameters the message needs: BODY=8BITMIME for 8-bit text (RFC 6152), SMTPUTF8
    for a non-ASCII address (RFC 6531 §3.4); smtplib refuses the latter without it."""
    options = ["BODY=8BITMIME"] if not message.isascii() else []
    if not all(address.isascii() for address in (sender, *recipients)):
        options.append("SMTPUTF8")
    return options


def _refused(refused: dict[str, tuple[int, bytes]]) -> int:
    """Nothing was queued: 75 if any refusal was temporary, else 69."""
    _report(refused)
    temporary = any(code < 500 for code, _ in refused.values())
    return EX_TEMPFAIL if temporary else EX_UNAVAILABLE


def _report(refused: dict[str, tuple[int, bytes]]) -> None:
    """One stderr line per refused recipient, with the relay's reply."""
    for rcpt, (code, text) in refused.items():
        reply = " ".join(text.decode("utf-8", "replace").split())
        print(f"sendmail: <{rcpt}> refused: {code} {reply}", file=sys.stderr)

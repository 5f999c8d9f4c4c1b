"""Issue 17: ``listen`` items, plain and ``smtps://`` (implicit TLS, RFC 8314 §3.3), as parsed and
as the settings check them; where ``mxroute sendmail`` submits and what it declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mxroute.address import Listener, parse_listener
from mxroute.cli.sendmail import _relay_address, mail_options
from mxroute.settings import Settings


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:2525", Listener("127.0.0.1", 2525)),
    ("0.0.0.0", Listener("0.0.0.0", 2525)),
    ("[::1]:25", Listener("::1", 25)),
    ("smtps://0.0.0.0:465", Listener("0.0.0.0", 465, implicit_tls=True)),
    ("SMTPS://127.0.0.1", Listener("127.0.0.1", 465, implicit_tls=True)),
    (" smtps://[::]:4650 ", Listener("::", 4650, implicit_tls=True)),
])
def test_parse_listener(text: str, want: Listener) -> None:
    assert parse_listener(text) == want


@pytest.mark.parametrize("text", ["smtp://127.0.0.1:25", "127.0.0.1:x", "smtps://127.0.0.1:y",
                                  "smtps:/127.0.0.1:465", "smtps://"])
def test_parse_listener_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listener(text)


def test_listener_shows_as_written() -> None:
    assert str(parse_listener("smtps://[::1]:465")) == "smtps://[::1]:465"
    assert str(parse_listener("127.0.0.1:25")) == "127.0.0.1:25"


def test_smtps_listener_needs_a_certificate(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"smtps://127.0.0.1:465 \(implicit TLS\) needs "
                                              "tls_cert_file"):
        Settings(listen=["127.0.0.1:2525", "smtps://127.0.0.1:465"])
    with pytest.raises(ValidationError, match="only smtps:// is a scheme"):
        Settings(listen=["lmtp://127.0.0.1:24"])
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    settings = Settings(listen=["smtps://0.0.0.0", "127.0.0.1:25"], tls_cert_file=cert,
                        tls_key_file=key)
    assert settings.listen_addresses() == [("0.0.0.0", 465), ("127.0.0.1", 25)]
    assert [item.implicit_tls for item in settings.listeners()] == [True, False]


def test_sendmail_submits_to_the_first_plain_listener(tmp_path: Path) -> None:
    tls = {"tls_cert_file": tmp_path / "c.pem", "tls_key_file": tmp_path / "k.pem"}
    both = Settings(listen=["smtps://0.0.0.0:465", "0.0.0.0:25"], **tls)
    assert _relay_address(both) == ("127.0.0.1", 25, False)
    only = Settings(listen=["smtps://[::]:465"], **tls)
    assert _relay_address(only) == ("::1", 465, True)


def test_sendmail_declares_8bit_and_smtputf8() -> None:
    """RFC 6152 BODY=8BITMIME for 8-bit text; RFC 6531 SMTPUTF8 for a non-ASCII address."""
    assert mail_options("a@b.test", ["c@d.test"], b"Subject: x\r\n\r\nplain\r\n") == []
    assert mail_options("a@b.test", ["c@d.test"], "\r\n\r\nGrüße\r\n".encode()) == \
        ["BODY=8BITMIME"]
    assert mail_options("a@b.test", ["用户@d.test"], "To: 用户@d.test\r\n\r\nx\r\n".encode()) == \
        ["BODY=8BITMIME", "SMTPUTF8"]
    assert mail_options("jörg@b.test", ["c@d.test"], b"\r\n\r\nx\r\n") == ["SMTPUTF8"]

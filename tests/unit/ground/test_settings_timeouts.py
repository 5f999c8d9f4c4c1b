"""The intake's server-side timeouts (SEC-10, RFC 5321 §4.5.3.2.7; issue 13 item 6).

A server waiting for the client (a command, or the lines of DATA) uses the 5-minute timeout of
§4.5.3.2.7, as Postfix's ``smtpd_timeout`` (300 s). §4.5.3.2.6's 10 minutes is the CLIENT's wait
for the reply to the final ".", not the server's for data: a client stalling inside DATA holds
its slot at most 5 minutes. config/mxroute.toml documents the same default.
"""

from __future__ import annotations

import re

from mxroute.settings import Settings
from tests.support.paths import ROOT


def test_sec10_data_timeout_defaults_to_the_5_minute_server_timeout() -> None:
    fields = Settings.model_fields
    assert fields["data_timeout"].default == 300.0
    assert fields["command_timeout"].default == 300.0


def test_sec10_config_file_documents_the_defaults() -> None:
    text = (ROOT / "config" / "mxroute.toml").read_text()
    for name in ("data_timeout", "command_timeout"):
        found = re.findall(rf"^# {name} = (\S+)$", text, re.MULTILINE)
        assert found == ["300.0"], (name, found)

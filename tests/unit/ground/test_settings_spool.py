"""The default spool and where a setting came from (issue 15 C1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mxroute.hostdefaults import SYSTEM_SPOOL, default_spool
from mxroute.settings import load_settings
from tests.support.paths import ROOT


def test_default_spool_is_systemds_then_the_units_then_a_checkouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "var-lib-mxroute"
    state = {"STATE_DIRECTORY": f"{tmp_path}/state:{tmp_path}/other"}
    assert default_spool(state, system)[0] == tmp_path / "state"  # the first of several
    monkeypatch.chdir(tmp_path)
    path, why = default_spool({}, system)
    assert path == tmp_path / "spool" and path.is_absolute() and str(system) in why
    system.mkdir()
    why = f"{system}, systemd's StateDirectory= of mxroute.service"
    assert default_spool({}, system) == (system, why)


def test_the_system_spool_is_the_units_state_directory() -> None:
    unit = (ROOT / "systemd" / "mxroute.service").read_text()
    (name,) = re.findall(r"(?m)^StateDirectory=(\S+)$", unit)
    assert SYSTEM_SPOOL == Path("/var/lib") / name


def test_origin_names_the_command_line_the_variable_the_file_or_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "m.toml"
    config.write_text('spool_dir = "/x"\nsmtp_port = 2526\n')
    for name in ("MXROUTE_CONFIG", "MXROUTE_SPOOL_DIR", "MXROUTE_SMTP_PORT", "MXROUTE_LISTEN",
                 "MXROUTE_DNS_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MXROUTE_SMTP_PORT", "2527")
    settings = load_settings(str(config), dns_servers=["127.0.0.1"])
    assert settings.origin("spool_dir") == str(config)
    assert settings.origin("smtp_port") == "MXROUTE_SMTP_PORT"
    assert settings.origin("dns_servers") == "the command line"
    assert settings.origin("listen") == "default"

"""Issue 19: the ``shared_state`` URL: its forms, the clear refusals, and no password shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxroute.errors import ConfigError
from mxroute.settings import Settings, load_settings
from mxroute.sharedstate import SharedStateUrl, parse_shared_state, redact


@pytest.mark.parametrize(("text", "expected"), [
    ("redis://127.0.19.1:6400/2", SharedStateUrl(False, "127.0.19.1", 6400, 2, None)),
    ("redis://redis.example", SharedStateUrl(False, "redis.example", 6379, 0, None)),
    ("rediss://mxroute@redis.example:6380/0",
     SharedStateUrl(True, "redis.example", 6380, 0, "mxroute")),
    ("redis://[::1]:7000/", SharedStateUrl(False, "::1", 7000, 0, None)),
])
def test_issue19_shared_state_forms(text: str, expected: SharedStateUrl) -> None:
    """issue 19: redis:// and rediss:// (TLS), an ACL user, the port and database defaults."""
    assert parse_shared_state(text) == expected


def test_issue19_shown_form_is_complete_and_loads_back() -> None:
    """issue 19: what logs and check-config show is the whole address, and it parses back."""
    for text in ("redis://[::1]:7000", "rediss://u@h:1/3"):
        url = parse_shared_state(text)
        assert parse_shared_state(url.shown()) == url
    assert parse_shared_state("rediss://u@h:1/3").shown() == "rediss://u@h:1/3"


@pytest.mark.parametrize(("text", "says"), [
    ("http://h:6379/0", "redis://host:port/db"),
    ("redis://user:hunter2@h:6379/0", "shared_state_password_file"),
    ("redis://:hunter2@h:6379/0", "shared_state_password_file"),
    ("redis:///0", "no host"),
    ("redis://h:6379/zero", "database number"),
    ("redis://h:99999/0", "not a URL"),
    ("redis://h:0/0", "port 0"),
    ("redis://h:6379/0?password=hunter2", "no ?query"),
])
def test_issue19_bad_urls_refused_clearly_without_the_secret(text: str, says: str) -> None:
    """issue 19: a bad URL is refused with what is wrong, and a password never shows."""
    with pytest.raises(ValueError) as caught:
        parse_shared_state(text)
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value).replace("?password=hunter2", "")


def test_issue19_redact_blanks_every_password() -> None:
    """issue 19: any text carrying a URL with a password is shown with it blanked."""
    text = "cannot reach redis://u:hunter2@h:1/0 or rediss://:pw@x/1 (redis://plain:6379)"
    assert redact(text) == ("cannot reach redis://u:***@h:1/0 or rediss://:***@x/1 "
                            "(redis://plain:6379)")


def test_issue19_setting_refuses_password_in_url_without_echoing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 19: the setting's error names the setting and the file to use, never the secret."""
    monkeypatch.setenv("MXROUTE_SHARED_STATE", "redis://fleet:hunter2@127.0.19.1:6379/0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = caught.value.message
    assert "shared_state" in message and "shared_state_password_file" in message
    assert "hunter2" not in message and "fleet:***@" in message


def test_issue19_password_file_needs_shared_state_and_must_be_readable(tmp_path: Path) -> None:
    """issue 19: a password file with no shared_state, or one that is not there, is a mistake
    said at start."""
    secret = tmp_path / "redis.secret"
    with pytest.raises(ValueError, match="is not a readable file"):
        Settings(shared_state="redis://h/0", shared_state_password_file=secret)
    secret.write_text("pw\n")
    with pytest.raises(ValueError, match="shared_state is not"):
        Settings(shared_state_password_file=secret)
    assert Settings(shared_state="redis://h/0",
                    shared_state_password_file=secret).shared_state_password_file == secret
    assert Settings(shared_state=" redis://h/1 ").shared_state == "redis://h/1"
    assert Settings(shared_state="").shared_state is None

"""The suspended-domains file and its decisions (issue 15 B, ``mxroute queue suspend``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mxroute.relay.queue.suspensions import FILE_NAME, Suspensions, domain_name, to_json


def test_domain_names_are_normalised_and_checked() -> None:
    """issue 15 B: a domain is lower-cased without its trailing dot; an address, a space or an
    empty label is refused with its text named."""
    assert domain_name(" Example.COM. ") == "example.com"
    assert domain_name("bücher.example") == "bücher.example"
    for bad in ("u@example.com", "not a domain", "a..b", "", "-a.example", "x" * 64 + ".com"):
        with pytest.raises(ValueError, match="not a domain"):
            domain_name(bad)


def test_suspend_save_load_and_resume(tmp_path: Path) -> None:
    """issue 15 B: suspensions survive a reload of the file; resume lifts them and removes
    the file when none is left; a second suspend keeps the first ``since``."""
    s = Suspensions.load(tmp_path)
    assert s.current(100.0) == []
    s.suspend(["a.example", "b.example"], "MX down", 100.0, None)
    s.suspend(["a.example"], "still down", 150.0, 60.0)
    s.save()
    assert not list(tmp_path.glob(f".{FILE_NAME}.*"))  # the temporary name is gone
    again = Suspensions.load(tmp_path)
    [a, b] = again.current(160.0)
    assert to_json(a) == {"domain": "a.example", "reason": "still down", "since": 100.0,
                          "until": 210.0}
    assert (b.domain, b.until) == ("b.example", None)
    assert again.until("a.example", 160.0) == 210.0
    assert again.until("b.example", 160.0) == math.inf
    assert again.until("c.example", 160.0) is None
    assert again.resume(["c.example", "b.example"], 160.0) == ["b.example"]
    assert again.resume(None, 300.0) == []  # a.example ended at 210 by itself
    again.save()
    assert not (tmp_path / FILE_NAME).exists()


def test_a_suspension_ends_by_itself(tmp_path: Path) -> None:
    """issue 15 B: ``--for``: no longer in force, nor listed, from its end on."""
    s = Suspensions(tmp_path / FILE_NAME)
    s.suspend(["a.example"], None, 10.0, 2.0)
    assert s.until("a.example", 11.9) == 12.0
    assert s.until("a.example", 12.0) is None
    assert s.current(12.0) == []


def test_a_damaged_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """issue 15 B: a damaged suspensions file is never read as "nothing suspended"."""
    (tmp_path / FILE_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=FILE_NAME):
        Suspensions.load(tmp_path)
    (tmp_path / FILE_NAME).write_text(json.dumps({"suspensions": [{"domain": "a"}]}))
    with pytest.raises(ValueError, match=FILE_NAME):
        Suspensions.load(tmp_path)

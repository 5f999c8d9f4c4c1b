"""mxroute/settingsenv.py and the TOML writer of mxroute/settingsdoc.py, directly (issue 15 C3):
lists as typed, the unknown-variable hint, and TOML that reads back to the same value."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxroute.settings import Settings
from mxroute.settingsdoc import toml_line, toml_value, type_text
from mxroute.settingsenv import split_list, unknown_variables


@pytest.mark.parametrize(("typed", "values"), [
    ("127.0.0.1:2525", ["127.0.0.1:2525"]),
    (" 10.0.0.0/8, ::1/128 ,", ["10.0.0.0/8", "::1/128"]),
    ('["a", "b"]', ["a", "b"]),
    ("", []),
    ("[]", []),
])
def test_split_list_takes_json_or_commas(typed: str, values: list[str]) -> None:
    assert split_list(typed) == values


def test_split_list_names_a_broken_json_list_and_leaves_other_values_alone() -> None:
    with pytest.raises(ValueError, match="not a JSON list"):
        split_list('["a"')
    assert split_list(["x"]) == ["x"]


def test_unknown_variables_name_the_closest_setting_and_skip_the_tools_own() -> None:
    environ = {"MXROUTE_LISTN": "x", "MXROUTE_LISTEN": "y", "mxroute_helo_name": "z",
               "MXROUTE_CONFIG": "/f", "MXROUTE_BENCH_RATE": "1", "MXROUTE_SPF_SUITE": "/s",
               "MXROUTE_ZZZZZZZZ": "1", "PATH": "/bin"}
    assert unknown_variables(environ, Settings.model_fields) == [
        "MXROUTE_LISTN is not a setting (did you mean MXROUTE_LISTEN?); ignored",
        "MXROUTE_ZZZZZZZZ is not a setting (no setting is called so); ignored",
    ]


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1),
                     st.floats(allow_nan=False), _TEXT)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=12)


@given(_VALUES)
def test_toml_value_reads_back_the_same(value: Any) -> None:
    assert tomllib.loads(f"x = {toml_value(value)}\n")["x"] == value


def test_an_unset_value_is_a_comment_and_types_read_as_words() -> None:
    assert toml_line("tls_cert_file", None) == "# tls_cert_file: unset"
    assert tomllib.loads(toml_line("tls_cert_file", None)) == {}
    fields = Settings.model_fields
    assert type_text(fields["listen"].annotation) == "list of strings"
    assert type_text(fields["tls_ca_file"].annotation) == "path, or unset"
    assert type_text(fields["bare_newline"].annotation) == 'one of `"normalize"`, `"reject"`'

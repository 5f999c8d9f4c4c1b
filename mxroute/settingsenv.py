"""Settings from what a person types: ``MXROUTE_*`` variables and TOML strings (issue 15 C3).

A list of plain values (``listen``, ``relay_networks``, ``dns_servers``, ``egress_ips``) is JSON
(``["a", "b"]``) or comma-separated (``a, b``), in a variable and in the file. Any other list or
table in a variable is JSON, and JSON that does not parse is one line naming the setting and
its variable (a ``ConfigError``), not pydantic's source text. A ``MXROUTE_*`` variable that is
no setting is reported with the closest setting's name: ``unknown_variables``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

from mxroute.errors import ConfigError

PREFIX = "MXROUTE_"
# settings whose values are plain strings: JSON or comma-separated
PLAIN_LISTS = frozenset({"listen", "relay_networks", "dns_servers", "egress_ips"})
# MXROUTE_* variables that are not settings, read by mxroute itself or its tools and tests: the
# one list of them (the unknown-variable warning leaves them alone)
NOT_SETTINGS = frozenset({
    "MXROUTE_CONFIG",  # the TOML file (mxroute/settings.py config_path)
    "MXROUTE_SPF_SUITE",  # tests/conformance: where the OpenSPF suites are
})
NOT_SETTINGS_PREFIXES = ("MXROUTE_BENCH_",)  # the benchmark harness's own knobs


def env_name(name: str) -> str:
    """The environment variable of setting ``name``."""
    return f"{PREFIX}{name.upper()}"


def split_list(value: object) -> object:
    """A plain list as typed: a JSON list, or values separated by commas (blanks dropped).

    Anything but a string is returned as it is, for the model to judge.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not a JSON list ({exc}); or give the values separated by "
                             "commas") from None
    return [part.strip() for part in text.split(",") if part.strip()]


class TypedEnv(EnvSettingsSource):
    """``MXROUTE_*`` variables: plain lists as typed (``split_list`` decides), other lists and
    tables as JSON, a JSON mistake one line naming the variable."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if field_name in PLAIN_LISTS:
            return value
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"setting {field_name} (from {env_name(field_name)}): not valid "
                              f"JSON ({exc}): lists and tables in the environment are JSON, "
                              "e.g. '{\"example.com\": \"verify\"}'") from None


def unknown_variables(environ: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """One line for each ``MXROUTE_*`` variable in ``environ`` that names no setting among
    ``names`` (and is not in ``NOT_SETTINGS``), with the closest setting's variable."""
    known = [env_name(name) for name in names]
    lines = []
    for key in sorted(environ):
        upper = key.upper()
        if (not upper.startswith(PREFIX) or upper in known or upper in NOT_SETTINGS
                or upper.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        import difflib  # only to name a close match for a misspelt variable

        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "no setting is called so"
        lines.append(f"{key} is not a setting ({hint}); ignored")
    return lines

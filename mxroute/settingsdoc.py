"""The settings written out: as TOML (``check-config``'s text, a file that loads back to the same
settings) and as the settings reference, generated from the model (issue 15 D).

``python -m mxroute.settingsdoc [FILE]`` prints the reference, or writes it to FILE
(docs/settings-reference.md; tests/checks/test_settings_reference.py fails when it is stale).
"""

from __future__ import annotations

import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mxroute.settings import RESTART_ONLY, Settings
from mxroute.settingsenv import PLAIN_LISTS, env_name

REFERENCE = Path("docs/settings-reference.md")
COMMAND = f"python -m mxroute.settingsdoc {REFERENCE}"


# --- TOML ---------------------------------------------------------------------------------------

def toml_value(value: object) -> str:
    """``value`` (JSON-like data, paths) as a TOML value; ``None`` inside a table is left out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str | PurePath):
        # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = [f"{toml_value(str(key))} = {toml_value(item)}"
                 for key, item in value.items() if item is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_line(name: str, value: object) -> str:
    """``name = value``, or a comment when it is unset (TOML has no null)."""
    return f"# {name}: unset" if value is None else f"{name} = {toml_value(value)}"


# --- the reference ------------------------------------------------------------------------------

_NAMES: dict[object, str] = {bool: "boolean", int: "integer", float: "number", str: "string",
                             Path: "path"}
_UNSET = ", or unset"
_BOUNDS = ((annotated_types.Ge, "≥", "ge"), (annotated_types.Gt, ">", "gt"),
           (annotated_types.Le, "≤", "le"), (annotated_types.Lt, "<", "lt"))


def type_text(annotation: Any) -> str:
    """A type annotation in words: ``list of strings``, ``one of "a", "b"``, ``path, or unset``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{json.dumps(arg)}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [type_text(arg) for arg in args if arg is not type(None)]
        return " or ".join(kinds) + (_UNSET if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_plural(type_text(args[0]))}"
    if origin is dict:
        return f"table of {_plural(type_text(args[1]))}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        keys = ", ".join(f"`{key}`" for key in annotation.model_fields)
        return f"table ({keys})"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(text: str) -> str:
    return text.replace("table (", "tables (", 1) if text.startswith("table (") else text + "s"


def bounds_text(field: FieldInfo) -> str:
    """The numeric bounds of ``field``: `` ≥ 1``, `` ≥ 1, ≤ 65535``."""
    found = [f"{sign} {getattr(item, attr)}" for item in field.metadata
             for kind, sign, attr in _BOUNDS if isinstance(item, kind)]
    return f" {', '.join(found)}" if found else ""


def default_text(field: FieldInfo) -> str:
    """The default as TOML, ``unset``, or what a computed default is (its factory's docstring)."""
    if field.default_factory is not None:
        doc = (field.default_factory.__doc__ or "computed at start").strip()
        first = " ".join(doc.split("\n\n")[0].split()).split(". ")[0]  # its first sentence
        return first.rstrip(".").replace("``", "`")
    if field.default is None:
        return "unset"
    return f"`{toml_value(_plain(field.default))}`"


def _plain(value: object) -> object:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def environment_text(name: str, field: FieldInfo) -> str:
    """The variable, and how a list or table is written in it."""
    text = f"`{env_name(name)}`"
    if name in PLAIN_LISTS:
        return f"{text} (JSON list or comma-separated)"
    if typing.get_origin(field.annotation) in (list, dict):
        return f"{text} (JSON)"
    return text


def reference(model: type[BaseModel] = Settings,
              restart_only: tuple[str, ...] = RESTART_ONLY) -> str:
    """The settings reference: one row per setting of ``model``, in its order."""
    lines = [
        "# Settings reference",
        "",
        ("<!-- generated from mxroute/settings.py by "
        f"`{COMMAND}`; do not edit -->"),
        "",
        ("Every setting with its type, default, environment variable, and whether a reload "
        "(`systemctl reload mxroute`, SIGHUP) applies it (`live`) or it keeps its running value "
        "until a restart (`restart`). What each one means is in [settings.md](settings.md); "
        "`mxroute check-config` prints the effective values and where each came from."),
        "",
        "| setting | type | default | environment | on reload |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, field in model.model_fields.items():
        kind = type_text(field.annotation)
        unset = kind.endswith(_UNSET)
        kind = kind.removesuffix(_UNSET) + bounds_text(field) + (_UNSET if unset else "")
        reload = "restart" if name in restart_only else "live"
        lines.append(f"| `{name}` | {kind} | {default_text(field)} | "
                     f"{environment_text(name, field)} | {reload} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Print the reference, or write it to ``argv[0]``."""
    text = reference()
    if not argv:
        sys.stdout.write(text)
        return 0
    Path(argv[0]).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

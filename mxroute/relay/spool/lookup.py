"""A queue ID from what an operator typed: the ID, or a unique prefix of one. PURE (no I/O).

Every ``mxroute queue`` command that takes an ID resolves it here (``Spool.resolve`` feeds it
the spool's IDs): case does not matter, an exact ID wins over a longer one it prefixes, a
prefix matching several IDs is an error naming them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mxroute.errors import EX_NOINPUT, EX_USAGE, MxrouteError

_PREFIX = re.compile(r"[0-9A-Za-z]{1,64}\Z")
SHOWN = 10  # matches named in an ambiguity error


class QueueIdError(MxrouteError):
    """An ID that names no message (exit 66), or is not an ID or names several (exit 64)."""

    exit_code = EX_USAGE


class NoSuchMessage(QueueIdError):
    exit_code = EX_NOINPUT


def resolve_id(typed: str, ids: Iterable[str]) -> str:
    """The one queue ID among ``ids`` that ``typed`` is or begins (any case).

    Raises ``QueueIdError`` for text that cannot be an ID or a prefix matching several IDs
    (the message names up to ``SHOWN`` of them), ``NoSuchMessage`` when none matches.
    """
    if not _PREFIX.match(typed):
        raise QueueIdError(f"{typed!r} is not a queue ID")
    wanted = typed.upper()
    matches: list[str] = []
    for queue_id in ids:
        upper = queue_id.upper()
        if upper == wanted:
            return queue_id
        if upper.startswith(wanted):
            matches.append(queue_id)
    if not matches:
        raise NoSuchMessage(f"{typed}: no such message in the queue")
    if len(matches) > 1:
        matches.sort()
        more = f" and {len(matches) - SHOWN} more" if len(matches) > SHOWN else ""
        raise QueueIdError(f"{typed}: ambiguous queue ID prefix, matching "
                           f"{', '.join(matches[:SHOWN])}{more}")
    return matches[0]

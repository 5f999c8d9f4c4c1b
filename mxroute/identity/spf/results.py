"""What check_host() returns: one of the seven §2.6 results, with its trace.

``PermError`` and ``TempError`` end an evaluation early with permerror or
temperror (internal control flow: check_host() turns them into an ``SPFResult``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxroute.dns.answer import Answer

NONE, NEUTRAL, PASS, FAIL, SOFTFAIL, TEMPERROR, PERMERROR = (
    "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror",
)
RESULTS = (NONE, NEUTRAL, PASS, FAIL, SOFTFAIL, TEMPERROR, PERMERROR)


class SPFError(Exception):
    """Ends an evaluation with ``result`` (internal control flow, never escapes check_host)."""

    result = PERMERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PermError(SPFError):
    result = PERMERROR


class TempError(SPFError):
    result = TEMPERROR


def _show(answer: Answer) -> str:
    shown = ", ".join(answer.texts[:12]) if answer.rrs else answer.outcome.value
    if answer.detail and answer.outcome.temporary:
        shown += f" ({answer.detail})"
    return f"{answer.qtype} {answer.qname} -> {shown}"


@dataclass(slots=True)
class TraceEntry:
    """One step of an evaluation: a record fetch, a term, or a limit hit."""

    depth: int  # 0 for the checked domain, +1 per include/redirect
    domain: str
    term: str
    result: str = ""  # "match", "no match", a §2.6 result, or a note
    steps: list[Answer | str] = field(default_factory=list)  # lookups made, and notes
    dns_terms: int = 0  # DNS-querying terms counted so far (§4.6.4)
    void_lookups: int = 0
    target: str | None = None  # the expanded domain the term looked at

    @property
    def lookups(self) -> list[str]:
        """Each lookup as text, ``"A mail.example.com -> 192.0.2.1"`` (rendered only when shown)."""
        return [step if isinstance(step, str) else _show(step) for step in self.steps]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "depth": self.depth,
            "domain": self.domain,
            "term": self.term,
            "result": self.result,
            "lookups": list(self.lookups),
            "dns_terms": self.dns_terms,
            "void_lookups": self.void_lookups,
        }
        if self.target is not None:
            body["target"] = self.target
        return body


@dataclass(slots=True)
class SPFResult:
    """The outcome of check_host(): the §2.6 result, its explanation (fail only), and the trace."""

    result: str
    sender: str
    ip: str
    domain: str
    helo: str = ""
    explanation: str | None = None
    reason: str = ""  # why, for humans: the matching term, or what went wrong
    trace: list[TraceEntry] = field(default_factory=list)
    dns_terms: int = 0
    void_lookups: int = 0
    elapsed_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The contract's ``spf`` object, with additions."""
        return {
            "result": self.result,
            "sender": self.sender,
            "ip": self.ip,
            "domain": self.domain,
            "helo": self.helo,
            "explanation": self.explanation,
            "reason": self.reason,
            "dns_terms": self.dns_terms,
            "void_lookups": self.void_lookups,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "trace": [entry.to_json() for entry in self.trace],
        }

"""Reply patterns: what a receiver's reply asks of a sender's pace (issue 18 §2). PURE.

As KumoMTA's ``[[automation]]`` blocks in ``shaping.toml``: a reply matching a pattern
throttles its site to ``message_rate`` messages per second, or suspends it, for ``duration``
seconds. The shipped patterns cover the big receivers' "slow down" replies; the
``reply_patterns`` setting adds more, tried before the shipped ones (the first match wins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # PURE: the settings module (socket, ssl) is not imported at run time
    from mxroute.settingsrules import ReplyPatternRule

Action = Literal["throttle", "suspend"]


@dataclass(frozen=True, slots=True)
class ReplyPattern:
    """A reply (code, enhanced status, text, as one line) matching ``regex`` ``action``s its
    site for ``duration`` seconds: throttled to ``message_rate`` per second, or suspended."""

    name: str
    regex: re.Pattern[str]
    action: Action
    duration: float
    message_rate: float | None = None

    def describe(self) -> str:
        """``throttle to 0.1/s for 600s`` or ``suspend for 600s``."""
        if self.action == "throttle":
            return f"throttle to {self.message_rate:g}/s for {self.duration:g}s"
        return f"suspend for {self.duration:g}s"


def _shipped(name: str, regex: str, action: Action, duration: float,
             rate: float | None = None) -> ReplyPattern:
    return ReplyPattern(name, re.compile(regex, re.IGNORECASE), action, duration, rate)


# The receivers' documented "too fast" replies (docs/shaping.md lists them).
SHIPPED: tuple[ReplyPattern, ...] = (
    # Gmail: "421-4.7.28 ... unusual rate of unsolicited mail" / "... rate limited"
    _shipped("gmail-rate", r"^4\d\d[ -]4\.7\.28\b", "throttle", 3600, 0.1),
    # Yahoo: "421 4.7.0 [TSS04] Messages from ... temporarily deferred"
    _shipped("yahoo-tss04", r"^4\d\d[ -]4\.7\.0 \[TSS04\]", "throttle", 3600, 0.1),
    # Yahoo: "421 4.7.0 [TSS09] All messages from ... permanently deferred"
    _shipped("yahoo-tss09", r"^4\d\d[ -]4\.7\.0 \[TSS09\]", "suspend", 3600),
    # Outlook: "451 4.7.650 The mail server [IP] has been temporarily rate limited"
    _shipped("outlook-rate", r"^4\d\d[ -]4\.7\.650\b", "throttle", 3600, 0.1),
    # Outlook: "451 4.7.500 Server busy. Please try again later"
    _shipped("outlook-busy", r"^4\d\d[ -]4\.7\.500\b", "throttle", 900, 0.5),
    # iCloud / Apple: "421 4.7.0 ... rate limited" style deferrals naming a rate limit
    _shipped("icloud-rate", r"^4\d\d[ -]4\.7\.\d+ .*\brate[ -]limit", "throttle", 900, 0.5),
)


def configured(rules: list[ReplyPatternRule]) -> tuple[ReplyPattern, ...]:
    """The ``reply_patterns`` setting's patterns, then the shipped ones."""
    own = tuple(ReplyPattern(rule.name or f"reply_patterns[{index}]",
                             re.compile(rule.regex, re.IGNORECASE), rule.action,
                             float(rule.duration), rule.message_rate)
                for index, rule in enumerate(rules))
    return own + SHIPPED


def match(patterns: tuple[ReplyPattern, ...], reply: str) -> ReplyPattern | None:
    """The first of ``patterns`` that ``reply`` (one line: ``421 4.7.28 text``) matches."""
    line = " ".join(reply.split())
    for pattern in patterns:
        if pattern.regex.search(line):
            return pattern
    return None


__all__ = ["SHIPPED", "Action", "ReplyPattern", "configured", "match"]

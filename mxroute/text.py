"""Text made safe to carry: one-line peer text (SEC-6), RFC 3461 xtext, terminal-safe values.

Pure functions of the ground: every wing may use them, none of them knows a wing.
"""

from __future__ import annotations

import re

LISTING = 400  # the bound of a log line's or a queue listing's field
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe_text(text: str, limit: int = 500) -> str:
    """Peer-supplied text as one safe line: controls become "?", bounded length (SEC-6)."""
    # the common case, " " to "~" only: nothing to replace
    if text.isascii() and text.isprintable():
        return text if len(text) <= limit else text[: limit - 3] + "..."
    out = "".join(
        ch if (" " <= ch <= "~" or ch > "\x9f") and not ("\ud800" <= ch <= "\udfff") else "?"
        for ch in text
    )
    return out if len(out) <= limit else out[: limit - 3] + "..."


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext: "+", "=", controls, space and non-ASCII become ``+HH``."""
    out = []
    for byte in value.encode("utf-8"):
        out.append(chr(byte) if 33 <= byte <= 126 and byte not in (0x2B, 0x3D) else f"+{byte:02X}")
    return "".join(out)


def terminal_safe(value: object) -> str:
    """A peer-supplied value made safe for one terminal line: controls as ``\\xNN`` (SEC-6)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


_CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable_lines(data: bytes) -> list[str]:
    """Message bytes as terminal-safe lines (``mxroute queue cat``): split at LF (a CR before it
    dropped), tabs kept, other controls and invalid UTF-8 shown as ``\\xNN`` (SEC-6)."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line
    return [_CONTROL_BUT_TAB.sub(lambda m: f"\\x{ord(m.group()):02x}",
                                 line.removesuffix(b"\r").decode("utf-8", "backslashreplace"))
            for line in lines]

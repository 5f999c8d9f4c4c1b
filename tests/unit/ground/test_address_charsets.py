"""The address character classes are written as "everything but" (cheap to compile);
they must accept exactly the RFC 5322 atext / RFC 5321 qtextSMTP sets plus UTF-8 (RFC 6531).
"""

from __future__ import annotations

import re

from mxroute import address

ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff]")
QTEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]")
POINTS = [*range(0x800), 0xD7FF, 0xD800, 0xDFFF, 0xE000, 0xFEFF, 0xFFFD, 0xFFFF, 0x10000, 0x1F600,
          0x10FFFF]


def test_atext_and_qtext_sets_unchanged() -> None:
    atext = re.compile(address._ATEXT)
    qtext = re.compile(address._QUOTED.pattern[4:].split("|")[0])  # the class after '"(?:'
    for point in POINTS:
        char = chr(point)
        assert bool(atext.fullmatch(char)) == bool(ATEXT.fullmatch(char)), hex(point)
        assert bool(qtext.fullmatch(char)) == bool(QTEXT.fullmatch(char)), hex(point)

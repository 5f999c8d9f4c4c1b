"""Python's cyclic garbage collector in the delivery process (issue 23).

Each delivery allocates a few hundred container objects (coroutines' futures, tasks, records of
its recipients, dataclasses) that reference counting frees; with the default thresholds
(700, 10, 10) the collector ran every message or two and a full collection walked every
long-lived object too (the settings, the modules, the recovered queue): about 8 % of the
process's CPU (perf, bench/results/delivery-profile.md). ``tune`` makes the young generation
larger, so a collection runs every ten-odd messages (not larger: a cycle that holds a message's
bytes waits for it, issue 22); ``freeze`` moves what exists once the process has started (and
recovered the queue) out of the collector's sight. Reference counting still frees those objects;
only cycles among them would stay, and they are made once, at start.
"""

from __future__ import annotations

import gc

YOUNG = 5_000  # allocations between collections of the young generation (CPython: 700)
OLDER = (20, 20)  # collections of one generation per collection of the next (CPython: 10, 10)


def tune() -> None:
    """Fewer collections of short-lived objects (see the module docstring)."""
    gc.set_threshold(YOUNG, *OLDER)


def freeze() -> None:
    """Leave everything allocated so far out of every later collection."""
    gc.collect()
    gc.freeze()


__all__ = ["freeze", "tune"]

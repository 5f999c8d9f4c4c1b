"""glibc's malloc for a relay of large messages (issue 22): large buffers always from mmap.

glibc raises its mmap threshold each time a large mmap'd block is freed (up to 32 MiB): after
the first 20 MB message, the next ones come from the heaps, one per thread, where a freed
block is kept for that thread's arena and the process grows by a message per spool thread
(measured: the delivery process at 1.85 bytes of RAM per byte held, 1.0 with the threshold
fixed). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_``
would) keeps every block over it in its own mapping, returned to the kernel when freed.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 128 << 10  # glibc's own starting value, no longer raised


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold; False where the C library has no ``mallopt`` (musl)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: the mmap threshold is left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))

"""Issue 22: glibc's mmap threshold fixed, so that a freed large message goes back to the kernel."""

from __future__ import annotations

import os
import platform

import pytest

from mxroute.service.malloc import fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" and not os.environ.get("CI"),
                    reason="glibc only (CI is Debian: glibc)")
def test_mallopt_accepts_the_threshold() -> None:
    """Issue 22: on glibc, mallopt(M_MMAP_THRESHOLD) is called and accepted."""
    assert fix_mmap_threshold() is True

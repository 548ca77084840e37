"""The C allocator of a process that runs the model: keep freed memory for the next batch.

A batch's arrays (hundreds of thousands of rows: the encoded inputs, the network's activations,
the outputs) are allocated and freed once per batch. With glibc's defaults, blocks that large
are mapped from the kernel and unmapped when freed, so every batch faults its memory in page by
page again (on the letter benchmark at 10^6 rows: ~800,000 page faults, a sixth of the impute
step's time). ``keep_freed_memory`` raises glibc's thresholds once per process: blocks under
256 MiB come from the heap, and up to 1 GiB of freed heap is kept for reuse instead of returned
to the kernel (the peak memory stays that of the largest batch). Other C libraries are left
as they are. ``LAKEFILL_MALLOC=default`` in a worker's environment turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory"]

# mallopt's parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True if they are in force (glibc, not switched off)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("LAKEFILL_MALLOC", "").lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
    except (OSError, AttributeError):
        return False

"""The allocator setting of a process that runs the model (lakefill._memory)."""

import os
import platform
import subprocess
import sys

import pytest

# glibc's own account (mallinfo2): a 64 MiB array (a batch's) mapped from the kernel or taken from
# the heap, and after it is freed, whether the heap keeps the memory for the next batch
PROBE = """
import ctypes, numpy as np
from lakefill._memory import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                             "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = keep_freed_memory()
a = np.empty(64 << 20, np.uint8); a.fill(1)
mapped = libc.mallinfo2().hblkhd
del a
print(applied, mapped, libc.mallinfo2().fordblks)
"""


def _probe(**env) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_batch_array_comes_from_the_heap_and_its_memory_is_kept_for_the_next_batch():
    size = 64 << 20
    applied, mapped, kept_free = _probe(LAKEFILL_MALLOC="")
    assert applied and mapped < size and kept_free >= size
    applied, mapped, kept_free = _probe(LAKEFILL_MALLOC="default")  # off: mapped, and returned when freed
    assert not applied and mapped >= size and kept_free < size

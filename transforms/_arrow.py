"""Small Arrow helpers shared by the stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["flags_to_lists"]


def flags_to_lists(flags: np.ndarray, names: np.ndarray) -> pa.Array:
    """A list<string> column: for each row of ``flags`` (n, k), the ``names`` whose flag is set."""
    rows, cols = np.nonzero(flags)
    offsets = np.zeros(flags.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=flags.shape[0]), out=offsets[1:])
    values = pa.array(names[cols].tolist() if len(cols) else [], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)

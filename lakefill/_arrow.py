"""Small Arrow helpers shared by the stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["flags_to_lists", "lists_to_flags", "list_value_counts", "normalize_array"]


def normalize_array(values):
    """``lakefill._values.normalize_text`` on an Arrow string array (nulls stay null): each
    distinct value is normalised once. (pyarrow 25's ``utf8_normalize`` gives NFD whatever form
    it is asked for, so Python's ``unicodedata`` does the NFC step.)"""
    import unicodedata

    trimmed = pc.utf8_trim_whitespace(values)
    if isinstance(trimmed, pa.ChunkedArray):
        trimmed = trimmed.combine_chunks()
    if len(trimmed) == 0 or pc.all(pc.string_is_ascii(trimmed)).as_py() in (True, None):
        return trimmed
    encoded = pc.dictionary_encode(trimmed)
    words = pa.array([unicodedata.normalize("NFC", w) for w in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(words, encoded.indices)


def flags_to_lists(flags: np.ndarray, names: np.ndarray) -> pa.Array:
    """A list<string> column: for each row of ``flags`` (n, k), the ``names`` whose flag is set."""
    rows, cols = np.nonzero(flags)
    offsets = np.zeros(flags.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=flags.shape[0]), out=offsets[1:])
    values = pa.array(names[cols].tolist() if len(cols) else [], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def list_value_counts(col) -> dict[str, int]:
    """How often each name appears in a list<string> column (``_lf_imputed``, ``_lf_disguised`` ...)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return {v["values"]: int(v["counts"]) for v in pc.value_counts(pc.list_flatten(col)).to_pylist()}


def lists_to_flags(col, names: list[str]) -> np.ndarray:
    """(rows, len(names)) bool: which of ``names`` each row's list<string> cell holds (the
    inverse of ``flags_to_lists``; names a row lists that are not in ``names`` are ignored)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = pc.list_flatten(col)
    parents = np.asarray(pc.list_parent_indices(col))
    index = np.asarray(pc.index_in(flat, value_set=pa.array(names, pa.string())).fill_null(-1))
    mask = np.zeros((len(col), len(names)), dtype=bool)
    ok = index >= 0
    mask[parents[ok], index[ok]] = True
    return mask


def is_typed_number(t: pa.DataType) -> bool:
    """A raw column the reader keeps as numbers (a Parquet integer or float64 column): detection
    and parsing treat it as the text Arrow writes for it (``as_text``) without making that text
    unless a rule needs it. (A float32's text is its shortest decimal, which as a float64 is not
    its value: float32 columns are read as text, as before.)"""
    return pa.types.is_integer(t) or pa.types.is_float64(t)


def as_text(table: pa.Table) -> pa.Table:
    """The raw table with its typed number columns as the text Arrow casts them to (what every
    rule of detection and schema inference is written for); the field metadata is kept. The
    ``_lf_`` columns (the row id) stay as they are."""
    typed = [not f.name.startswith("_lf_") and is_typed_number(f.type) for f in table.schema]
    if not any(typed):
        return table
    fields = [pa.field(f.name, pa.string(), metadata=f.metadata) if t else f for f, t in zip(table.schema, typed)]
    return pa.Table.from_arrays([table.column(f.name).cast(pa.string()) if t else table.column(f.name)
                                 for f, t in zip(table.schema, typed)], schema=pa.schema(fields))

"""Typing: raw string columns (after null detection) become the schema's Arrow types.

A cell that does not parse as its column's type is not coerced to null: its row goes to
quarantine with the column, the value and the expected type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill._arrow import as_text, is_typed_number, normalize_array
from lakefill._values import _THOUSANDS, parse_bool, parse_datetime_array, parse_number
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.io import ROW_ID, Quarantined, RawRead
from lakefill.schema import ARROW_TYPES, TableSchema, arrow_type

__all__ = ["ARROW_TYPES", "parse_table", "arrow_schema", "Typed", "detect_and_parse"]



def arrow_schema(schema: TableSchema) -> pa.Schema:
    """The typed columns' Arrow types (passthrough columns, whose type comes from the file, left out)."""
    return pa.schema([(c.name, arrow_type(c)) for c in schema.columns if c.type != "passthrough"])


def parse_table(table: pa.Table, schema: TableSchema) -> tuple[pa.Table, list[Quarantined]]:
    """Cast the schema's columns; returns the typed table (other columns kept) and the bad rows."""
    schema.check_columns(table.column_names, source="parse_table")
    bad_rows: dict[int, str] = {}
    arrays = {}
    for name in table.column_names:
        col = table.column(name)
        if name not in schema.names:
            arrays[name] = col
            continue
        spec = schema.column(name)
        if spec.type == "passthrough":
            arrays[name] = col
            continue
        if is_typed_number(col.type) and spec.type not in ("numeric", "integer"):
            col = col.cast(pa.string())  # a number read as another type is parsed from its text
        typed, bad = _cast(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col, spec)
        for i in bad:
            bad_rows.setdefault(int(i), f"type: column {name!r}: value {col[int(i)].as_py()!r} is not {_a(spec.type)}")
        if spec.normalize and pa.types.is_string(typed.type):
            typed = normalize_array(typed)
        arrays[name] = typed
    typed = pa.table(arrays)
    if not bad_rows:
        return typed, []
    idx = np.array(sorted(bad_rows), dtype=np.int64)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[idx] = False
    row_ids = table.column(ROW_ID).to_numpy() if ROW_ID in table.column_names else np.arange(table.num_rows)
    originals = as_text(table.take(pa.array(idx)).select([n for n in table.column_names if not n.startswith("_lf_")])).to_pylist()
    quarantined = [Quarantined(int(row_ids[i]), bad_rows[int(i)], "parse", json.dumps(rec, default=str))
                   for i, rec in zip(idx, originals)]
    return typed.filter(pa.array(keep)), quarantined


@dataclass
class Typed:
    table: pa.Table  # typed rows, disguised nulls replaced
    policy: NullPolicy  # the policy fitted on the sample
    disguised: dict[str, int]  # replacements per column
    quarantined: list[Quarantined]  # unreadable (read) and mistyped (parse) rows


def detect_and_parse(raw: RawRead, schema: TableSchema, *, sample_rows: int = 200_000) -> Typed:
    """Fit the null policy on a sample of ``raw``, replace disguised nulls, cast to the schema."""
    schema.check_columns(raw.table.column_names, source=raw.path)
    policy = NullPolicy(schema=schema, sample_rows=sample_rows).fit(raw.table)
    detected, counts = policy.apply(raw.table)
    typed, bad = parse_table(detected, schema)
    return Typed(typed, policy, counts, raw.quarantined + bad)


def _a(type_: str) -> str:
    return {"numeric": "a number", "integer": "an integer", "decimal": "an exact decimal of the column's scale",
            "boolean": "a boolean (true/false, yes/no, 1/0)",
            "datetime": "a date/time"}.get(type_, f"a {type_}")


def _cast(col: pa.Array, spec) -> tuple[pa.Array, np.ndarray]:
    """Returns the typed array (null where the input is null or bad) and the bad positions."""
    type_ = spec.type
    target = arrow_type(spec)
    if pa.types.is_string(target):
        return col.cast(pa.string()), np.empty(0, dtype=np.int64)
    trimmed = col if is_typed_number(col.type) else pc.utf8_trim_whitespace(col)
    if type_ == "decimal":
        return _cast_decimal(col, trimmed, target)
    if type_ in ("numeric", "integer"):
        if is_typed_number(col.type):  # read as numbers: the values its text would parse to (unsafe: no
            floats, bad = pc.cast(col, pa.float64(), safe=False), np.empty(0, dtype=np.int64)  # check on > 2^53)
        else:
            try:  # fast path: plain numbers
                floats = pc.cast(trimmed, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                floats = pa.array([None if v is None else parse_number(v) for v in trimmed.to_pylist()], pa.float64())
            bad = _bad_positions(col, floats)
        if type_ == "integer":
            values = floats.to_numpy(zero_copy_only=False)
            frac = np.zeros(len(values), dtype=bool)
            ok = ~np.isnan(values)
            frac[ok] = values[ok] != np.round(values[ok])
            if frac.any():
                bad = np.union1d(bad, np.nonzero(frac)[0])
                floats = pc.if_else(pa.array(frac), pa.scalar(None, pa.float64()), floats)
            return pc.cast(floats, pa.int64()), bad
        return floats, bad
    if type_ == "boolean":
        out = pa.array([None if v is None else parse_bool(v) if v not in ("0", "1") else v == "1"
                        for v in trimmed.to_pylist()], pa.bool_())
        return out, _bad_positions(col, out)
    if type_ == "datetime":
        values = trimmed.to_pylist()
        present = [v for v in values if v is not None]
        secs, _ = parse_datetime_array(present) if present else ([], 0)
        if len(secs) != len(present):
            secs = [float("nan")] * len(present)
        it = iter(secs)
        micros = [None if v is None else (None if np.isnan(s := next(it)) else int(round(s * 1e6))) for v in values]
        out = pa.array(micros, pa.int64()).cast(target)
        return out, _bad_positions(col, out)
    raise ValueError(f"unknown column type {type_!r}")


def _cast_decimal(col: pa.Array, trimmed: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Exact: a value with more decimals than the scale, or more digits than the precision, is bad."""
    try:
        out = pc.cast(trimmed, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        from decimal import Decimal, InvalidOperation

        step = Decimal(1).scaleb(-target.scale)
        values = []
        for v in trimmed.to_pylist():
            if v is None:
                values.append(None)
                continue
            try:
                d = Decimal(v.replace(",", "") if _THOUSANDS.match(v) else v)
                exact = d.quantize(step) == d and d.is_finite() and len(d.quantize(step).as_tuple().digits) <= target.precision
                values.append(d.quantize(step) if exact else None)
            except (InvalidOperation, ValueError):
                values.append(None)
        out = pa.array(values, target)
    return out, _bad_positions(col, out)


def _bad_positions(original: pa.Array, typed: pa.Array) -> np.ndarray:
    """Positions where the input had a value but the typed array has none."""
    lost = pc.and_(pc.is_valid(original), pc.is_null(typed))
    return np.nonzero(np.asarray(lost))[0]

"""Read planning: what an engine splits an input into (``ReadUnit``), and reading one unit.

A ``ReadUnit`` is one task's share of the input: consecutive Parquet row groups
(``UnitKind.ROW_GROUPS``), a byte range of a CSV or JSON Lines file that starts and ends on
record boundaries (``UnitKind.BYTE_RANGE``), or a whole text file (``UnitKind.WHOLE_FILE``: small,
or not safely splittable). ``plan_reads`` plans them on the driver (or a Beam worker) from the
files' footers and bytes; ``read_unit`` reads one on any worker; both engines pass the units as
they are (Spark as a DataFrame of ``ReadUnit.spark_ddl()``, Beam as elements). Row ids and line
numbers are the ones a reader of the whole input gives, whatever the split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Iterator

from lakefill.transforms.io import (DEFAULT_MAX_CELL_CHARS, FILE_ROWS, CsvOptions, RawRead, _columns, _delimiter,
                                    _iter_csv, _iter_file, _iter_jsonl, _open_parquet, _same_columns, _shifted,
                                    input_files, read_parquet_row_group)
from lakefill.transforms.storage import Location, as_location
from lakefill.transforms.textsplit import TextSplit, text_splits

__all__ = ["UnitKind", "ReadUnit", "plan_reads", "read_unit", "parquet_read_units", "parquet_row_groups", "SPLIT_BYTES",
           "MIN_SPLIT_BYTES"]

SPLIT_BYTES = 128 << 20  # a text file is split into ranges of about this size (as Spark's maxPartitionBytes)
MIN_SPLIT_BYTES = 1 << 20  # and never into ranges smaller than this (a small file is read by one task)


class UnitKind(str, Enum):
    ROW_GROUPS = "row_groups"  # a Parquet file's consecutive row groups
    WHOLE_FILE = "whole_file"  # a text file read from its start to its end
    BYTE_RANGE = "byte_range"  # a text file's byte range on record boundaries


@dataclass(frozen=True)
class ReadUnit:
    """One task's share of the input. ``first_row``: the row id of its first row (the file's
    place in the input, ``FILE_ROWS`` apart, plus the row's record number in the file).
    ``row_group``/``row_groups``: a Parquet unit's first row group and their number.
    ``start``/``end``/``first_line``: a byte range's bytes and the line number it starts on."""

    path: str
    kind: UnitKind
    first_row: int
    row_group: int = 0
    row_groups: int = 0
    start: int = 0
    end: int = 0
    first_line: int = 0

    def __post_init__(self):
        object.__setattr__(self, "kind", UnitKind(self.kind))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "kind": self.kind.value}

    @classmethod
    def from_dict(cls, data: dict) -> "ReadUnit":
        return cls(**data)

    @classmethod
    def spark_ddl(cls) -> str:
        """The Spark DDL of a DataFrame of units (one column per field: str -> string, int -> long)."""
        types = {"str": "string", "int": "long", "UnitKind": "string"}
        return ", ".join(f"{f.name} {types[f.type]}" for f in dataclasses.fields(cls))


def parquet_read_units(path: "str | Location", batch_rows: int,
                       options: dict | None = None) -> list[tuple[int, int, int]]:
    """Read units of about ``batch_rows`` rows: (first row group, number of row groups, row id of
    the first row). Consecutive small row groups are read together, so that every later step
    (validation, inference, reverse training) gets full batches; a row group larger than
    ``batch_rows`` is a unit of its own (the reader slices it)."""
    f = _open_parquet(as_location(path, options))
    units: list[tuple[int, int, int]] = []
    start = count = rows = first = 0
    for i in range(f.num_row_groups):
        n = f.metadata.row_group(i).num_rows
        if count and rows + n > batch_rows:
            units.append((start, count, first))
            first += rows
            start, count, rows = i, 0, 0
        count += 1
        rows += n
    if count:
        units.append((start, count, first))
    return units


def parquet_row_groups(path: "str | Location", options: dict | None = None) -> list[tuple[int, int]]:
    """(row group index, row id of its first row) for each row group."""
    return [(index, first) for index, _, first in parquet_read_units(path, 1, options)]


def plan_reads(path: "str | list[str]", batch_rows: int, *, min_units: int = 1, options: dict | None = None,
               csv_options: CsvOptions | None = None, split_bytes: int = SPLIT_BYTES) -> list[ReadUnit]:
    """What an engine splits an input into, per file (``input_files``):

    - Parquet: consecutive row groups of about ``batch_rows`` rows; a file with fewer units than
      ``min_units`` is split into smaller ones (down to one row group each), so that an engine
      with that many task slots keeps them all busy.
    - CSV and JSON Lines: byte ranges of about ``split_bytes`` (at least ``min_units`` of them,
      none under ``MIN_SPLIT_BYTES``) that start and end on record boundaries, quoted newlines
      included (``lakefill.transforms.textsplit``). A file that is small, or cannot be split
      safely, is one whole-file unit.

    Every file's columns are checked against the first's here (a text file's header line or
    first object; a Parquet file's footer)."""
    out: list[ReadUnit] = []
    files = input_files(path, options)
    expected = None
    for i, f in enumerate(files):
        names = _columns(f, csv_options)
        if names is None:  # an empty file: nothing to read
            continue
        expected = _same_columns(f, names, files[0], expected)
        offset = i * FILE_ROWS
        if f.suffix in (".parquet", ".pq"):
            units = parquet_read_units(f, batch_rows)
            if len(units) < min_units:
                rows = _open_parquet(f).metadata.num_rows
                units = parquet_read_units(f, max(1, -(-rows // min_units)))
            out += [ReadUnit(str(f), UnitKind.ROW_GROUPS, offset + first, row_group=index, row_groups=count)
                    for index, count, first in units]
            continue
        size = f.size()
        n = min(max(min_units, -(-size // max(split_bytes, 1))), max(1, size // max(MIN_SPLIT_BYTES, 1)))
        splits = _text_splits(f, n, csv_options)
        if splits is None:
            out.append(ReadUnit(str(f), UnitKind.WHOLE_FILE, offset))
        else:
            out += [ReadUnit(str(f), UnitKind.BYTE_RANGE, offset + s.first_record, start=s.start, end=s.end,
                             first_line=s.first_line) for s in splits]
    return out


def _text_splits(f: Location, n: int, csv_options: CsvOptions | None) -> "list[TextSplit] | None":
    if n < 2:
        return None
    jsonl = f.suffix in (".jsonl", ".ndjson", ".json")
    opts = csv_options or CsvOptions()
    with f.open_input() as fh:
        return text_splits(fh, f.size(), n=n, quotechar=None if jsonl else opts.quotechar,
                           delimiter=None if jsonl else _delimiter(f, opts), encoding="utf-8" if jsonl else opts.encoding,
                           header=not jsonl)


def read_unit(unit: ReadUnit, batch_rows: int, *, csv_options: CsvOptions | None = None,
              options: dict | None = None) -> Iterator[RawRead]:
    """The batches of one unit from ``plan_reads``."""
    if not isinstance(unit, ReadUnit):
        raise TypeError(f"read_unit takes a ReadUnit from plan_reads, got {type(unit).__name__}")
    if unit.kind is UnitKind.ROW_GROUPS:
        yield read_parquet_row_group(unit.path, unit.row_group, unit.first_row, unit.row_groups, options)
        return
    loc = as_location(unit.path, options)
    if unit.kind is UnitKind.WHOLE_FILE:
        for chunk in _iter_file(loc, batch_rows=batch_rows, csv_options=csv_options, strict=False):
            yield _shifted(chunk, unit.first_row)
        return
    names = _columns(loc, csv_options)
    offset = unit.first_row // FILE_ROWS * FILE_ROWS  # the file's place in its input
    span = (TextSplit(unit.start, unit.end, unit.first_row - offset, unit.first_line), names)
    if loc.suffix in (".jsonl", ".ndjson", ".json"):
        chunks = _iter_jsonl(loc, DEFAULT_MAX_CELL_CHARS, None, batch_rows, span)
    else:
        chunks = _iter_csv(loc, DEFAULT_MAX_CELL_CHARS, None, batch_rows, csv_options or CsvOptions(), span)
    for chunk in chunks:
        yield _shifted(chunk, offset)

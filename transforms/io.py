"""Reading raw tables (CSV, Parquet, JSON Lines) into all-string Arrow tables.

Every column comes back as strings, except the nested and binary columns of a Parquet file
(lists, structs, maps, binary), which come back as they are and pass through the stage untouched
(schema type ``passthrough``). Every data row gets a stable ``_lf_row_id`` (its 0-based record
number in the source). Rows that cannot be read as a row of the table (ragged, undecodable
bytes, oversized cells) are not dropped: they come back as quarantine records with the reason
and the raw text.

A path may be a local path or a URI on an object store (``s3://``, ``gs://``, ``abfss://``):
every function that takes one also takes ``options`` (the job's storage options) and reads
through ``lakefill.transforms.storage``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakefill._arrow import is_typed_number
from lakefill.errors import InputError
from lakefill.transforms.storage import Location, as_location
from lakefill.transforms.textsplit import TextSplit

__all__ = ["ROW_ID", "FILE_ROWS", "input_files", "RawRead", "Quarantined", "CsvOptions", "is_passthrough_type",
           "read_raw", "iter_raw", "read_parquet_row_group", "quarantine_table", "QUARANTINE_SCHEMA"]

ROW_ID = "_lf_row_id"
DEFAULT_MAX_CELL_CHARS = 1_000_000
QUARANTINE_SCHEMA = pa.schema([
    (ROW_ID, pa.int64()),
    ("reason", pa.string()),
    ("stage", pa.string()),
    ("record", pa.string()),
])


@dataclass(frozen=True)
class Quarantined:
    row_id: int
    reason: str
    stage: str
    record: str  # the row as read, JSON (object of column -> raw string, or the raw text)


@dataclass(frozen=True)
class CsvOptions:
    """How a delimited text file is read. ``delimiter`` None: sniffed from the file's first 64 KiB
    (one of , ; tab | ); a .tsv file is tab-separated. Python's csv reader reads the records (it
    keeps each record's line number exact for quarantine reasons, quoted newlines included)."""

    delimiter: str | None = None
    quotechar: str = '"'
    encoding: str = "utf-8-sig"

    def __post_init__(self):
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"csv delimiter must be one character, got {self.delimiter!r}")
        if len(self.quotechar) != 1:
            raise ValueError(f"csv quotechar must be one character, got {self.quotechar!r}")
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError as err:
            raise ValueError(f"unknown csv encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)") from err


@dataclass
class RawRead:
    path: str
    table: pa.Table  # all-string columns + ROW_ID
    quarantined: list[Quarantined] = field(default_factory=list)
    dialect: dict | None = None  # for a text file: the delimiter, quote character and encoding used

    @property
    def rows_in(self) -> int:
        return self.table.num_rows + len(self.quarantined)


def quarantine_table(rows: list[Quarantined]) -> pa.Table:
    return pa.table({
        ROW_ID: pa.array([q.row_id for q in rows], pa.int64()),
        "reason": pa.array([q.reason for q in rows], pa.string()),
        "stage": pa.array([q.stage for q in rows], pa.string()),
        "record": pa.array([q.record for q in rows], pa.string()),
    }, schema=QUARANTINE_SCHEMA)


def _check_path(path: "str | Path | Location", options: dict | None = None) -> Location:
    loc = as_location(path, options)
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input file not found: {loc}")
    if info.type != pafs.FileType.File:
        raise InputError(f"input {loc} is a directory; pass a file (.csv, .parquet or .jsonl)")
    if info.size == 0:
        raise InputError(f"input file {loc} is empty (0 bytes): expected a header row and data rows")
    return loc


def _text(loc: Location, encoding: str, span: "TextSplit | None" = None):
    """A text stream over the file's bytes (read in large blocks: one request each on an object
    store); ``span``: only that byte range (a split from ``plan_reads``)."""
    if span is None:
        binary = open(loc.path, "rb") if loc.is_local else io.BufferedReader(loc.open_input(), 1 << 22)
    else:
        binary = io.BufferedReader(_Range(loc.open_input(), span.start, span.end), 1 << 22)
        if encoding == "utf-8-sig" and span.start > 0:
            encoding = "utf-8"  # the byte-order mark is at the file's start only
    return io.TextIOWrapper(binary, encoding=encoding, errors="surrogateescape", newline="")


class _Range(io.RawIOBase):
    """Bytes ``start`` .. ``end`` of a seekable file (pyarrow's ``open_input_file``)."""

    def __init__(self, f, start: int, end: int):
        self.f, self.left = f, end - start
        f.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left)
        if n <= 0:
            return 0
        data = self.f.read(n)
        buf[:len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def iter_raw(path: "str | Path | Location", *, batch_rows: int = 50_000, max_cell_chars: int = DEFAULT_MAX_CELL_CHARS,
             limit: int | None = None, csv_options: CsvOptions | None = None,
             options: dict | None = None) -> Iterator[RawRead]:
    """Read ``path`` as strings in chunks of about ``batch_rows`` records (row ids run on across chunks).

    ``path``: a file (the format follows the suffix: .csv/.tsv/.txt, .parquet, .jsonl/.json), a
    folder, or a glob (``s3://b/raw/*.csv``): its files in URI order, every one with the first
    file's columns; file ``i``'s record ``r`` gets the row id ``i * FILE_ROWS + r``.
    """
    files = input_files(path, options)
    single = not isinstance(path, (list, tuple)) and len(files) == 1 and files[0].uri == as_location(path, options).uri
    expected = None
    seen = 0
    for i, f in enumerate(files):
        for chunk in _iter_file(f, batch_rows=batch_rows, max_cell_chars=max_cell_chars, strict=single,
                                limit=None if limit is None else limit - seen, csv_options=csv_options):
            expected = _same_columns(f, [n for n in chunk.table.column_names if n != ROW_ID], files[0], expected)
            seen += chunk.rows_in
            yield _shifted(chunk, i * FILE_ROWS)
        if limit is not None and seen >= limit:
            return
    if seen == 0 and not single:
        name = files[0].parent if isinstance(path, (list, tuple)) else as_location(path, options)
        raise InputError(f"input {name}: its {len(files)} files hold no data rows")


def _same_columns(f: Location, names: list[str], first: Location, expected: list[str] | None) -> list[str]:
    """The first file's columns; any other file must have them (an error naming both otherwise)."""
    if expected is not None and names != expected:
        raise InputError(f"{f}: its columns {names} are not the first input file's ({first}: {expected}); "
                         f"every file of one input must have the same columns")
    return names


def _shifted(chunk: RawRead, offset: int) -> RawRead:
    """A chunk's row ids (and its quarantined rows') moved by ``offset``: the file's place in its input."""
    if not offset:
        return chunk
    ids = chunk.table.column(ROW_ID)
    table = chunk.table.set_column(chunk.table.column_names.index(ROW_ID), ROW_ID,
                                   pc.add(ids, pa.scalar(offset, pa.int64())))
    bad = [Quarantined(q.row_id + offset, q.reason, q.stage, q.record) for q in chunk.quarantined]
    return RawRead(chunk.path, table, bad, chunk.dialect)


FILE_ROWS = 1 << 40  # row ids per input file: file i's record r is row i * FILE_ROWS + r
_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")


def input_files(path: "str | Path | Location", options: dict | None = None) -> list[Location]:
    """The files an input names: itself; a folder's data files (hidden and ``_`` files, such as
    ``_SUCCESS``, skipped); a glob's matches. In URI order. An input with none is an error that
    names it."""
    if isinstance(path, (list, tuple)):  # the files themselves (an incremental run's new files), in that order
        if not path:
            raise InputError("the input names no file")
        return [as_location(p, options) for p in path]
    loc = as_location(path, options)
    if any(c in loc.uri for c in "*?["):
        files = [f for f in loc.glob() if is_data_file(f)]
        if not files:
            raise InputError(f"input {loc} matches no CSV, JSON Lines or Parquet file")
        return files
    kind = loc.info().type
    if kind == pafs.FileType.NotFound:
        raise InputError(f"input file not found: {loc}")
    if kind == pafs.FileType.File:
        return [loc]
    files = [f for f in loc.walk() if is_data_file(f)]
    if not files:
        raise InputError(f"input folder {loc} holds no CSV, JSON Lines or Parquet file")
    return files


def is_data_file(f: Location) -> bool:
    return f.suffix in _SUFFIXES and not f.name.startswith((".", "_"))


def _iter_file(path: "str | Path | Location", *, batch_rows: int = 50_000, max_cell_chars: int = DEFAULT_MAX_CELL_CHARS,
               limit: int | None = None, csv_options: CsvOptions | None = None,
               options: dict | None = None, strict: bool = True) -> Iterator[RawRead]:
    """One file as strings in chunks of about ``batch_rows`` records (row ids run on across chunks).

    The format follows the suffix: .csv/.tsv/.txt, .parquet, .jsonl/.json. ``strict``: an empty
    file, or one with a header and no rows, is an error (a file given alone); else it gives
    nothing, or its empty chunk (one file of a folder, such as an empty part).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    path = _check_path(path, options) if strict else as_location(path, options)
    if not strict and path.size() == 0:
        return
    suffix = path.suffix
    if suffix in (".parquet", ".pq"):
        chunks = _iter_parquet(path, batch_rows, limit)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        chunks = _iter_jsonl(path, max_cell_chars, limit, batch_rows)
    else:
        chunks = _iter_csv(path, max_cell_chars, limit, batch_rows, csv_options or CsvOptions())
    rows, width = 0, 0
    for chunk in chunks:
        rows += chunk.rows_in
        width = chunk.table.num_columns - 1
        yield chunk
    if rows == 0 and strict:
        raise InputError(f"input file {path} has a header ({width} columns) but no data rows")


def read_raw(path: "str | Path | Location", *, max_cell_chars: int = DEFAULT_MAX_CELL_CHARS, limit: int | None = None,
             csv_options: CsvOptions | None = None, options: dict | None = None) -> RawRead:
    """Read all of ``path`` (or its first ``limit`` records) as strings; see ``iter_raw``."""
    chunks = list(iter_raw(path, batch_rows=1 << 62, max_cell_chars=max_cell_chars, limit=limit,
                           csv_options=csv_options, options=options))
    if len(chunks) == 1:
        return chunks[0]
    return RawRead(chunks[0].path, pa.concat_tables([c.table for c in chunks]), [q for c in chunks for q in c.quarantined],
                   chunks[0].dialect)


def _check_header(path, names: list[str]) -> list[str]:
    names = [n if n is not None else "" for n in names]
    if not names or all(not n.strip() for n in names):
        raise InputError(f"{path}: the first line has no column names")
    seen: dict[str, int] = {}
    for n in names:
        seen[n.strip()] = seen.get(n.strip(), 0) + 1
    dupes = sorted(n for n, k in seen.items() if k > 1)
    if dupes:
        raise InputError(f"{path}: duplicate column names {dupes} in the header; every column needs its own name")
    blank = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise InputError(f"{path}: column(s) at position {blank} of the header have no name")
    reserved = [n for n in names if n.startswith("_lf_")]
    if reserved:
        raise InputError(f"{path}: column names {reserved} use the prefix '_lf_' that lakefill reserves for provenance")
    return names


def _sniff_delimiter(path: Location, sample: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:  # one column, or nothing to tell by: the commonest candidate on the header line
        header = sample.splitlines()[0] if sample else ""
        counts = {d: header.count(d) for d in ",;\t|"}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def _delimiter(path: Location, options: CsvOptions) -> str:
    """The job's delimiter, or the one sniffed from the file's first 64 KiB."""
    if options.delimiter:
        return options.delimiter
    with _text(path, options.encoding) as fh:
        return _sniff_delimiter(path, fh.read(65536))


def _iter_csv(path: Location, max_cell_chars: int, limit: int | None, batch_rows: int,
              options: CsvOptions, span: "tuple[TextSplit, list[str]] | None" = None) -> Iterator[RawRead]:
    """``span``: read only that byte range of the file (``plan_reads``), whose records have those columns."""
    csv.field_size_limit(sys.maxsize)
    delimiter = _delimiter(path, options)
    dialect = {"delimiter": delimiter, "quotechar": options.quotechar, "encoding": options.encoding,
               "sniffed": options.delimiter is None}
    with _text(path, options.encoding, span[0] if span else None) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quotechar=options.quotechar)
        if span is not None:
            names, record, line0 = span[1], span[0].first_record, span[0].first_line
        else:
            try:
                header = next(reader)
            except StopIteration:
                raise InputError(f"input file {path} is empty: expected a header row") from None
            except csv.Error as err:
                raise InputError(f"{path}: the header line cannot be parsed as CSV: {err}") from err
            if any(_has_bad_bytes(h) for h in header):
                raise InputError(f"{path}: the header line has bytes that are not valid {options.encoding}; re-save the "
                                 f"file as UTF-8 or give its encoding (csv: {{encoding: latin-1}} in the job, --encoding)")
            names, record, line0 = _check_header(path, header), 0, 0
        width = len(names)
        columns: list[list[str]] = [[] for _ in names]
        row_ids: list[int] = []
        bad: list[Quarantined] = []
        emitted = False
        while True:
            if len(row_ids) + len(bad) >= batch_rows:
                yield _csv_chunk(path, names, columns, row_ids, bad, dialect)
                columns, row_ids, bad, emitted = [[] for _ in names], [], [], True
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                line = line0 + reader.line_num
                bad.append(Quarantined(record, f"line {line}: unreadable CSV record: {err}", "read", json.dumps({"line": line})))
                record += 1
                continue
            if not fields:  # a blank line is no record
                continue
            line = line0 + reader.line_num
            reason = _row_problem(fields, names, width, line, max_cell_chars)
            if reason is not None:
                raw = delimiter.join(f.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for f in fields)
                bad.append(Quarantined(record, reason, "read", json.dumps({"line": line, "text": raw[:10000]})))
            else:
                for col, value in zip(columns, fields):
                    col.append(value)
                row_ids.append(record)
            record += 1
            if limit is not None and record >= limit:
                break
    if row_ids or bad or not emitted:
        yield _csv_chunk(path, names, columns, row_ids, bad, dialect)


def _csv_chunk(path: Location, names: list[str], columns: list[list[str]], row_ids: list[int], bad: list[Quarantined],
               dialect: dict) -> RawRead:
    arrays = {n: pa.array(c, pa.string()) for n, c in zip(names, columns)}
    arrays[ROW_ID] = pa.array(row_ids, pa.int64())
    return RawRead(str(path), pa.table(arrays), bad, dialect)


def _has_bad_bytes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _row_problem(fields: list[str], names: list[str], width: int, line: int, max_cell_chars: int) -> str | None:
    if len(fields) != width:
        return f"line {line}: ragged row: expected {width} fields, got {len(fields)}"
    for name, value in zip(names, fields):
        if _has_bad_bytes(value):
            return f"line {line}: column {name!r}: bytes that are not valid UTF-8"
        if len(value) > max_cell_chars:
            return f"line {line}: column {name!r}: cell of {len(value)} characters is over the limit of {max_cell_chars}"
    return None


def _open_parquet(path: Location) -> pq.ParquetFile:
    try:
        f = pq.ParquetFile(path.path, filesystem=path.fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file: {err}") from err
    _check_header(path, f.schema_arrow.names)
    return f


def is_passthrough_type(t: pa.DataType) -> bool:
    """Types the stage cannot model (lists, structs, maps, unions, binary): read, kept and
    written as they are, never detected, validated or imputed."""
    return (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t))


def _as_strings(path: str, table: pa.Table | pa.RecordBatch, first_row: int) -> RawRead:
    """Each column as strings (the type it was cast from in the field's metadata, so that schema
    inference can keep a decimal a decimal), but integer and float columns, which stay numbers
    (``is_typed_number``, same metadata: ``as_text`` gives their text); nested and binary
    columns as they are."""
    arrays, fields = [], []
    for source in table.schema:
        col = table.column(source.name)
        if pa.types.is_string(col.type) or is_passthrough_type(col.type):
            arrays.append(col)
            fields.append(pa.field(source.name, col.type))
        elif is_typed_number(col.type):
            arrays.append(col)
            fields.append(pa.field(source.name, col.type, metadata={"lakefill.source_type": str(col.type)}))
        else:
            arrays.append(col.cast(pa.string()))
            fields.append(pa.field(source.name, pa.string(), metadata={"lakefill.source_type": str(col.type)}))
    arrays.append(pa.array(range(first_row, first_row + table.num_rows), pa.int64()))
    fields.append(pa.field(ROW_ID, pa.int64()))
    return RawRead(str(path), pa.Table.from_arrays(arrays, schema=pa.schema(fields)), [])


def _iter_parquet(path: Location, batch_rows: int, limit: int | None) -> Iterator[RawRead]:
    f = _open_parquet(path)
    first, emitted = 0, False
    # the first ``limit`` rows are read as such: a batch no larger than the limit, so that only the
    # row groups that hold them are decoded (a whole-file batch would decode every row group)
    size = min(batch_rows, 1 << 30) if limit is None else max(1, min(batch_rows, limit, 1 << 30))
    for batch in f.iter_batches(batch_size=size):
        if limit is not None and first + batch.num_rows > limit:
            batch = batch.slice(0, max(limit - first, 0))
        if batch.num_rows:
            yield _as_strings(str(path), batch, first)
            emitted = True
        first += batch.num_rows
        if limit is not None and first >= limit:
            break
    if not emitted:
        yield _as_strings(str(path), f.schema_arrow.empty_table(), 0)


def read_parquet_row_group(path: "str | Path | Location", index: int, first_row: int, count: int = 1,
                           options: dict | None = None) -> RawRead:
    """Row groups ``index`` .. ``index + count - 1`` as one all-string batch; row ids from ``first_row``."""
    path = as_location(path, options)
    f = _open_parquet(path)
    return _as_strings(str(path), f.read_row_groups(list(range(index, index + count))), first_row)


def _columns(f: Location, csv_options: CsvOptions | None = None) -> list[str] | None:
    """A file's column names (None for an empty file)."""
    if f.size() == 0:
        return None
    if f.suffix in (".parquet", ".pq"):
        return list(_open_parquet(f).schema_arrow.names)
    # a JSON Lines file's columns are its first object's: a bad line or two before it is allowed
    limit = 100 if f.suffix in (".jsonl", ".ndjson", ".json") else 1
    chunk = next(_iter_file(f, batch_rows=1, limit=limit, csv_options=csv_options, strict=False), None)
    return None if chunk is None else [n for n in chunk.table.column_names if n != ROW_ID]


def _iter_jsonl(path: Location, max_cell_chars: int, limit: int | None, batch_rows: int,
                span: "tuple[TextSplit, list[str]] | None" = None) -> Iterator[RawRead]:
    # JSON Lines files are read whole (the column set is fixed by the first object), then chunked;
    # ``span``: only that byte range, with the file's columns
    whole = _read_jsonl(path, max_cell_chars, limit, span)
    bad = sorted(whole.quarantined, key=lambda q: q.row_id)
    for start in range(0, max(whole.table.num_rows, 1), batch_rows):
        part = whole.table.slice(start, batch_rows)
        ids = part.column(ROW_ID).to_numpy()
        if start + batch_rows >= whole.table.num_rows:
            mine, bad = bad, []
        else:
            mine = [q for q in bad if q.row_id < ids[-1]]
            bad = bad[len(mine):]
        yield RawRead(whole.path, part, mine)


def _read_jsonl(path: Location, max_cell_chars: int, limit: int | None,
                span: "tuple[TextSplit, list[str]] | None" = None) -> RawRead:
    rows, bad, names = [], [], (span[1] if span else None)
    with _text(path, "utf-8", span[0] if span else None) as fh:
        for record, line in enumerate(fh, start=span[0].first_record if span else 0):
            if limit is not None and record >= limit:
                break
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as err:
                bad.append(Quarantined(record, f"line {record + 1}: not a JSON object: {err}", "read", json.dumps({"text": line[:10000]})))
                continue
            if names is None:
                names = _check_header(path, list(obj))
            rows.append((record, obj))
    if names is None:
        raise InputError(f"input file {path} has no JSON object lines")
    columns: dict[str, list] = {n: [] for n in names}
    ids = []
    for record, obj in rows:
        extra = sorted(set(obj) - set(names))
        big = [n for n in names if obj.get(n) is not None and len(str(obj[n])) > max_cell_chars]
        if extra or big:
            why = f"unexpected keys {extra}" if extra else f"column {big[0]!r}: cell over the limit of {max_cell_chars} characters"
            bad.append(Quarantined(record, f"line {record + 1}: {why}", "read", json.dumps(obj, default=str)[:10000]))
            continue
        for n in names:
            v = obj.get(n)
            columns[n].append(None if v is None else (v if isinstance(v, str) else json.dumps(v)))
        ids.append(record)
    arrays = {n: pa.array(v, pa.string()) for n, v in columns.items()}
    arrays[ROW_ID] = pa.array(ids, pa.int64())
    return RawRead(str(path), pa.table(arrays), bad)

"""The lake: Delta tables written with ``deltalake``.

Workers write Parquet files into the table's folder (``write_part``) and return their Delta
``AddAction``s; one step commits all of them in a single transaction (``commit``) that carries
the run id as an application transaction (``txn`` action). A run id that the table has already
committed commits nothing: retried or repeated runs never write twice.

A table is a ``Location`` (``lakefill.transforms.storage``): a local folder or a URI on an object
store, with its storage options; the parts are written with ``pyarrow.fs``, the commit with
``deltalake`` on the same URI and options. On S3, deltalake 1.x commits a log entry with a
conditional put (``If-None-Match``), so two writers cannot both commit the same version; no
unsafe-rename flag is set anywhere.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema, Transaction
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

from lakefill.errors import ConfigError
from lakefill.transforms.storage import Location, as_location

__all__ = ["write_part", "commit", "CommitResult", "APP_ID_PREFIX", "read_lake", "action_to_dict", "action_from_dict",
           "check_writable", "part_path", "SchemaChange", "SchemaChangeRefused", "schema_change", "check_schema_change",
           "table_schema", "maintain", "runs_since_compaction", "open_table"]

APP_ID_PREFIX = "lakefill:"
_PART = re.compile(r"part-[0-9a-f]{32}\.parquet")
_LOG_ENTRY = re.compile(r"[0-9]{20}\.json")
_COMMIT_TRIES = 8
Mode = Literal["error", "append", "overwrite", "overwrite_partitions"]


class SchemaChangeRefused(ConfigError):
    """A run whose rows would change the table's schema without the job opting in."""


@dataclass(frozen=True)
class SchemaChange:
    """How a run's columns differ from its table's (provenance columns ``_lf_*`` left out):
    ``added`` columns the table lacks, ``absent`` table columns the run lacks, ``changed``
    (column, the table's type, the run's type), all as Delta types."""
    added: list[str]
    absent: list[str]
    changed: list[tuple[str, str, str]]

    def __bool__(self) -> bool:
        return bool(self.added or self.absent or self.changed)

    def to_dict(self) -> dict:
        return {"added": self.added, "absent": self.absent, "changed": [list(c) for c in self.changed]}


def table_schema(table_uri: "str | Path | Location") -> pa.Schema | None:
    """The Delta table's schema as Arrow, or None where there is no table yet."""
    dt = open_table(as_location(table_uri))
    return None if dt is None else pa.schema(dt.schema().to_arrow())


def schema_change(table: pa.Schema | None, run: pa.Schema) -> SchemaChange:
    """The difference between a table's schema and a run's (None: no table yet, no change)."""
    if table is None:
        return SchemaChange([], [], [])
    data = lambda schema: [f for f in schema if not f.name.startswith("_lf_")]  # noqa: E731
    theirs = {f.name: f for f in data(table)}
    ours = {f.name: f for f in data(run)}
    changed = []
    for name in theirs.keys() & ours.keys():
        a, b = _delta_type(theirs[name]), _delta_type(ours[name])
        if a != b:
            changed.append((name, a, b))
    return SchemaChange([n for n in ours if n not in theirs], [n for n in theirs if n not in ours], sorted(changed))


def _delta_type(field: pa.Field) -> str:
    t = Schema.from_arrow(pa.schema([field.with_nullable(True)])).fields[0].type
    return getattr(t, "type", None) or str(t)  # a primitive's name ("long", "string"), else the nested type


def check_schema_change(change: SchemaChange, *, table: str, add_columns: bool, absent_ok: bool,
                        nullable: "dict[str, bool] | None" = None) -> None:
    """Refuse, in one line naming the columns, a change the job did not opt into (Delta's rule:
    a write that changes the table's schema needs the writer's consent)."""
    if change.changed:
        cols = ", ".join(f"{n!r} ({a} in the table, {b} in this run)" for n, a, b in change.changed)
        raise SchemaChangeRefused(f"{table}: this run would change the type of column(s) {cols}; a Delta table's column "
                                  f"keeps its type: fix the schema (or the input) to the table's type, or write to a new output")
    if change.added and not add_columns:
        raise SchemaChangeRefused(f"{table}: this run has column(s) {change.added} that the table does not; set "
                                  f"schema_evolution: add_columns to add them (earlier rows read back null), or drop them "
                                  f"from the input")
    not_nullable = [n for n in change.absent if nullable is not None and not nullable.get(n, True)]
    if change.absent and (not absent_ok or not_nullable):
        which = not_nullable or change.absent
        raise SchemaChangeRefused(f"{table}: this run lacks column(s) {which} that the table has; "
                                  + ("the schema marks them not nullable" if not_nullable else
                                     "set missing_columns: null to write their cells as null"))


@dataclass(frozen=True)
class CommitResult:
    table: str
    run_id: str
    committed: bool  # False: this run id was already in the table, nothing written
    version: int | None
    files: int
    rows: int
    schema_change: dict | None = None  # what the commit changed in the table's schema (SchemaChange.to_dict)


# escaped in partition folder names as Hive and Spark escape them (ExternalCatalogUtils):
# a value is data, never a path ("../../x" stays one folder inside the table)
_ESCAPE = set('"#%\'*/:=?\\\x7f{[]^') | {chr(c) for c in range(0x20)}


def _escape_path_name(text: str) -> str:
    out = "".join(f"%{ord(ch):02X}" if ch in _ESCAPE else ch for ch in text)
    return "%2E%2E" if out == ".." else "%2E" if out == "." else out


def _partition_path(values: dict[str, str | None]) -> str:
    """The folder of a partition: ``col=value`` per column, both escaped; Delta readers take the
    values from the log's partitionValues, not from the path."""
    return "/".join(f"{_escape_path_name(k)}={'__HIVE_DEFAULT_PARTITION__' if v is None else _escape_path_name(v)}"
                    for k, v in values.items())


def write_part(table: pa.Table, table_uri: "str | Path | Location", *, partition_by: list[str] = (),
               prefix: str = "part") -> list[AddAction]:
    """Write ``table`` as Parquet file(s) under the table folder; return their AddActions.

    Nothing is visible to readers until ``commit`` adds the files to the Delta log.
    """
    root = as_location(table_uri)
    root.mkdir()
    if table.num_rows == 0:
        return []
    partition_by = list(partition_by)
    groups: list[tuple[dict[str, str | None], pa.Table]]
    if partition_by:
        keys = table.select(partition_by).group_by(partition_by).aggregate([]).to_pylist()
        groups = []
        for key in keys:
            mask = None
            for k, v in key.items():
                m = pc.is_null(table.column(k)) if v is None else pc.equal(table.column(k), v)
                mask = m if mask is None else pc.and_(mask, m)
            groups.append(({k: None if v is None else str(v) for k, v in key.items()},
                           table.filter(mask).drop_columns(partition_by)))
    else:
        groups = [({}, table)]
    actions = []
    for values, part in groups:
        rel = f"{prefix}-{uuid.uuid4().hex}.parquet"
        if values:
            rel = f"{_partition_path(values)}/{rel}"
        if any(p in ("", ".", "..") for p in rel.split("/")):  # never outside the table, whatever the values
            raise ValueError(f"partition path {rel!r} would leave the table folder {root}")
        buf = pa.BufferOutputStream()
        pq.write_table(part, buf)
        data = buf.getvalue()
        root.join(*rel.split("/")).write_bytes(data.to_pybytes())
        # the file's own relative path: delta-rs URI-encodes it into the log (a folder named
        # "p=a%2Fb" is "p=a%252Fb" there, as Spark writes it) and decodes it on reading
        actions.append(AddAction(path=rel, size=data.size, partition_values=values,
                                 modification_time=int(time.time() * 1000), data_change=True,
                                 stats=json.dumps(_stats(part))))
    return actions


def part_path(table_uri: "str | Path | Location", action: AddAction) -> Location:
    """The file of an AddAction that ``write_part`` returned."""
    return as_location(table_uri).join(*action.path.split("/"))


def _stats(table: pa.Table) -> dict:
    mins, maxs, nulls = {}, {}, {}
    for name in table.column_names:
        col = table.column(name)
        nulls[name] = col.null_count
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_timestamp(t):
            mm = pc.min_max(col)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo is not None and not (isinstance(lo, float) and lo != lo):
                mins[name] = lo.isoformat() if hasattr(lo, "isoformat") else lo
                maxs[name] = hi.isoformat() if hasattr(hi, "isoformat") else hi
    return {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def action_to_dict(a: AddAction) -> dict:
    return {"path": a.path, "size": a.size, "partition_values": dict(a.partition_values),
            "modification_time": a.modification_time, "data_change": a.data_change, "stats": a.stats}


def action_from_dict(d: dict) -> AddAction:
    return AddAction(**d)


def open_table(table: Location) -> DeltaTable | None:
    """The Delta table at ``table``, or None where there is none."""
    uri, options = table.delta()
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None


def _ours(table: Location, f: Location) -> bool:
    """lakefill's own records inside a table folder (``_lakefill/``: incremental runs' files)."""
    return table._relative(f.path).startswith("_lakefill/")


def check_writable(table_uri: "str | Path | Location", *, run_id: str, mode: Mode) -> None:
    """Refuse, before any work, a run that ``commit`` would refuse at the end: mode 'error' and
    a table that exists without this run id (a re-run of a committed run id is fine: it
    commits nothing twice and completes a half-committed run)."""
    table = as_location(table_uri)
    if not table.join("_delta_log").is_dir():
        foreign = [f for f in table.walk() if not _PART.fullmatch(f.name) and not _ours(table, f)]
        if foreign:  # uncommitted parts of a crashed run are fine: they are never committed
            raise FileExistsError(f"{table} holds files but is not a Delta table (no _delta_log; e.g. {foreign[0]}); "
                                  f"lakefill will not mix its table with other files: choose another output")
    if mode != "error":
        return
    dt = open_table(table)
    if dt is not None and dt.transaction_version(APP_ID_PREFIX + run_id) is None:
        raise FileExistsError(f"Delta table {table_uri} already exists and mode is 'error' (never clobber); use mode "
                              f"append, overwrite or overwrite_partitions to write into it, or another output")


def commit(table_uri: "str | Path | Location", actions: list[AddAction], schema: pa.Schema, *, run_id: str,
           mode: Mode = "error", partition_by: list[str] = (), add_columns: bool = False,
           absent_ok: bool = False, files_counter: "int | None | bool" = False,
           metadata: dict[str, str] | None = None) -> CommitResult:
    """Commit the files of one run in one Delta transaction, once per run id.

    ``mode``: error (refuse to write into an existing table), append, overwrite (replace the
    table's rows), overwrite_partitions (replace only the partitions this run writes).
    A run whose columns differ from the table's is refused (``SchemaChangeRefused``) unless
    ``add_columns`` (new columns are added to the table first, nullable: earlier rows read
    them as null) or ``absent_ok`` (a table column the run lacks reads back null in its rows);
    a type change is always refused. ``files_counter`` (an incremental run: the table's files
    counter when the run planned its files, None before any): the commit carries the counter
    plus one, and is refused (``IncrementalConflict``) if another run moved it meanwhile; Delta's
    conflict check refuses the second of two commits that carry the same value. ``metadata``:
    more of the commit's own metadata (the model version that filled the run's rows).
    """
    table = as_location(table_uri)
    uri, options = table.delta()
    app_id = APP_ID_PREFIX + run_id
    rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
    txns = [Transaction(app_id=app_id, version=1)]
    incremental = files_counter is not False
    if incremental:
        from lakefill.transforms.ingest import FILES_APP

        txns.append(Transaction(app_id=FILES_APP, version=(files_counter or 0) + 1))
    props = CommitProperties(app_transactions=txns, custom_metadata={**(metadata or {}), "lakefill.run_id": run_id})
    partition_by = list(partition_by)
    dt = open_table(table)
    if dt is None:
        try:
            create_table_with_add_actions(uri, Schema.from_arrow(schema), actions, mode="error",
                                          partition_by=partition_by or None, commit_properties=props,
                                          storage_options=options)
            return CommitResult(str(table), run_id, True, _version_of(table, app_id), len(actions), rows)
        except DeltaError:
            # another writer created the table first (concurrent first commits): commit into it
            dt = open_table(table)
            if dt is None:
                raise
            if mode == "error":
                mode = "append"  # the table did not exist when this run started: it is this run's to write
    if mode == "error" and dt.transaction_version(app_id) is None:
        raise FileExistsError(f"Delta table {table} already exists and mode is 'error'; "
                              "use mode append, overwrite or overwrite_partitions to write into it")
    changed = None
    if dt.transaction_version(app_id) is None:
        theirs = pa.schema(dt.schema().to_arrow())
        change = schema_change(theirs, schema)
        check_schema_change(change, table=str(table), add_columns=add_columns, absent_ok=absent_ok)
        if change.added:  # Delta's schema evolution: the new columns first, nullable
            added = pa.schema([schema.field(n).with_nullable(True) for n in change.added])
            dt.alter.add_columns(list(Schema.from_arrow(added).fields),
                                 commit_properties=CommitProperties(custom_metadata={"lakefill.run_id": run_id,
                                                                                     "lakefill.operation": "add_columns"}))
            dt = open_table(table)
        if change:  # the files are written with the run's columns; the table keeps all of its own
            schema = pa.schema(list(theirs) + [schema.field(n).with_nullable(True) for n in change.added])
            changed = change.to_dict()
    if mode == "overwrite_partitions" and not partition_by:
        raise ValueError("mode overwrite_partitions needs partition_by")
    for attempt in range(_COMMIT_TRIES):
        if dt.transaction_version(app_id) is not None:
            return CommitResult(str(table), run_id, False, dt.version(), 0, 0)
        if incremental:
            _check_files_counter(dt, table, run_id, files_counter)
        try:
            if mode == "overwrite_partitions":
                _commit_overwrite_partitions(dt, actions, schema, partition_by, props)
            else:
                dt.create_write_transaction(actions, mode=mode, schema=Schema.from_arrow(schema),
                                            partition_by=partition_by or None, commit_properties=props)
            break
        except CommitFailedError:
            # a concurrent writer took the version (and deltalake's own retries could not
            # resolve it, e.g. the table was created meanwhile): read the table again and retry
            if attempt == _COMMIT_TRIES - 1:
                raise
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
            dt = open_table(table)
    return CommitResult(str(table), run_id, True, _version_of(table, app_id), len(actions), rows, changed)


def _check_files_counter(dt: DeltaTable, table: Location, run_id: str, planned: int | None) -> None:
    from lakefill.transforms.ingest import FILES_APP, IncrementalConflict

    now = dt.transaction_version(FILES_APP)
    if now != planned:
        raise IncrementalConflict(f"run {run_id}: another incremental run committed to {table} after this run planned "
                                  f"its files (files counter {planned} -> {now}); nothing of this run was committed: "
                                  f"run it again to take the files that are still new")


def _version_of(table: Location, app_id: str) -> int | None:
    """The table version that holds this run's commit (not a later writer's): the newest log
    entry whose txn action carries the run's app id (read from the log itself; a store's
    listing may lag a concurrent writer's commit for a moment, so it is read again a few
    times, and None is said rather than a wrong version)."""
    needle = json.dumps({"appId": app_id}, separators=(",", ":"))[1:-1]  # "appId":"lakefill:RUN"
    log = table / "_delta_log"
    for attempt in range(6):
        entries = sorted((f for f in log.listdir() if _LOG_ENTRY.fullmatch(f.name)), key=lambda f: f.name, reverse=True)
        for f in entries[:200]:
            if needle in f.read_text():
                return int(f.name[:20])
        time.sleep(0.1 * 2 ** attempt)
    return None


def _commit_overwrite_partitions(dt, actions, schema, partition_by, props) -> None:
    filters = None
    touched = sorted({tuple(a.partition_values.get(k) for k in partition_by) for a in actions})
    if len(partition_by) == 1:
        filters = [(partition_by[0], "in", [t[0] for t in touched])]
    elif len(touched) == 1:
        filters = [(k, "=", v) for k, v in zip(partition_by, touched[0])]
    else:
        raise ValueError("overwrite_partitions with several partition columns must touch a single partition per run")
    dt.create_write_transaction(actions, mode="overwrite", schema=Schema.from_arrow(schema),
                                partition_by=partition_by, partition_filters=filters, commit_properties=props)


def read_lake(table_uri: "str | Path | Location") -> pa.Table:
    uri, options = as_location(table_uri).delta()
    return DeltaTable(uri, storage_options=options).to_pyarrow_table()


def runs_since_compaction(table_uri: "str | Path | Location") -> int:
    """How many lakefill runs committed to the table since its last compaction (OPTIMIZE)."""
    dt = open_table(as_location(table_uri))
    if dt is None:
        return 0
    n = 0
    for entry in dt.history():  # newest first
        if entry.get("operation") == "OPTIMIZE":
            break
        if "lakefill.run_id" in entry and entry.get("operation") in ("WRITE", "CREATE TABLE"):
            n += 1
    return n


def maintain(table_uri: "str | Path | Location", *, compact: bool = True, vacuum: bool = False,
             retain_hours: float | None = None) -> dict:
    """Table upkeep with deltalake: ``compact`` rewrites the table's small files into larger
    ones (OPTIMIZE: the rows and their order kept, one commit that Delta's conflict checks keep
    apart from concurrent appends); ``vacuum`` deletes the files no version within
    ``retain_hours`` (Delta's default, 168, when None) still reads. lakefill's own records
    (``_lakefill/``) are never vacuumed. Returns what each did."""
    table = as_location(table_uri)
    dt = open_table(table)
    if dt is None:
        raise ConfigError(f"{table} is not a Delta table (no _delta_log): nothing to maintain")
    done: dict = {"table": str(table), "files_before": len(dt.file_uris()), "version_before": dt.version()}
    if compact:
        metrics = dt.optimize.compact(commit_properties=CommitProperties(custom_metadata={"lakefill.operation": "compact"}))
        done["compacted"] = {"files_added": metrics.get("numFilesAdded", 0), "files_removed": metrics.get("numFilesRemoved", 0)}
        dt = open_table(table)
    if vacuum:
        hours = None if retain_hours is None else int(retain_hours)
        removed = dt.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=hours is None or hours >= 168)
        done["vacuumed_files"] = len(removed)
        dt = open_table(table)
    done["files_after"] = len(dt.file_uris())
    done["version_after"] = dt.version()
    return done

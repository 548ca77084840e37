"""The lake: Delta tables written with ``deltalake``.

Workers write Parquet files into the table's folder (``write_part``) and return their Delta
``AddAction``s; one step commits all of them in a single transaction (``commit``) that carries
the run id as an application transaction (``txn`` action). A run id that the table has already
committed commits nothing: retried or repeated runs never write twice.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema, Transaction
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

__all__ = ["write_part", "commit", "CommitResult", "APP_ID_PREFIX", "read_lake", "action_to_dict", "action_from_dict",
           "check_writable", "part_path"]

APP_ID_PREFIX = "lakefill:"
Mode = Literal["error", "append", "overwrite", "overwrite_partitions"]


@dataclass(frozen=True)
class CommitResult:
    table: str
    run_id: str
    committed: bool  # False: this run id was already in the table, nothing written
    version: int | None
    files: int
    rows: int


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


def write_part(table: pa.Table, table_uri: str | Path, *, partition_by: list[str] = (), prefix: str = "part") -> list[AddAction]:
    """Write ``table`` as Parquet file(s) under the table folder; return their AddActions.

    Nothing is visible to readers until ``commit`` adds the files to the Delta log.
    """
    root = Path(table_uri)
    root.mkdir(parents=True, exist_ok=True)
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
        path = root / rel
        if not path.resolve().is_relative_to(root.resolve()):  # never outside the table, whatever the values
            raise ValueError(f"partition path {rel!r} would leave the table folder {root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, path)
        # the file's own relative path: delta-rs URI-encodes it into the log (a folder named
        # "p=a%2Fb" is "p=a%252Fb" there, as Spark writes it) and decodes it on reading
        actions.append(AddAction(path=rel, size=path.stat().st_size, partition_values=values,
                                 modification_time=int(time.time() * 1000), data_change=True,
                                 stats=json.dumps(_stats(part))))
    return actions


def part_path(table_uri: str | Path, action: AddAction) -> Path:
    """The local file of an AddAction that ``write_part`` returned."""
    return Path(table_uri) / action.path


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


def _open(table_uri: str) -> DeltaTable | None:
    try:
        return DeltaTable(table_uri)
    except TableNotFoundError:
        return None


def check_writable(table_uri: str | Path, *, run_id: str, mode: Mode) -> None:
    """Refuse, before any work, a run that ``commit`` would refuse at the end: mode 'error' and
    a table that exists without this run id (a re-run of a committed run id is fine: it
    commits nothing twice and completes a half-committed run)."""
    if mode != "error":
        return
    dt = _open(str(table_uri))
    if dt is not None and dt.transaction_version(APP_ID_PREFIX + run_id) is None:
        raise FileExistsError(f"Delta table {table_uri} already exists and mode is 'error' (never clobber); use mode "
                              f"append, overwrite or overwrite_partitions to write into it, or another output")


def commit(table_uri: str | Path, actions: list[AddAction], schema: pa.Schema, *, run_id: str,
           mode: Mode = "error", partition_by: list[str] = ()) -> CommitResult:
    """Commit the files of one run in one Delta transaction, once per run id.

    ``mode``: error (refuse to write into an existing table), append, overwrite (replace the
    table's rows), overwrite_partitions (replace only the partitions this run writes).
    """
    uri = str(table_uri)
    app_id = APP_ID_PREFIX + run_id
    rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
    props = CommitProperties(app_transactions=[Transaction(app_id=app_id, version=1)],
                             custom_metadata={"lakefill.run_id": run_id})
    partition_by = list(partition_by)
    dt = _open(uri)
    if dt is None:
        try:
            create_table_with_add_actions(uri, Schema.from_arrow(schema), actions, mode="error",
                                          partition_by=partition_by or None, commit_properties=props)
            return CommitResult(uri, run_id, True, _version_of(uri, app_id), len(actions), rows)
        except DeltaError:
            # another writer created the table first (concurrent first commits): commit into it
            dt = _open(uri)
            if dt is None:
                raise
            if mode == "error":
                mode = "append"  # the table did not exist when this run started: it is this run's to write
    if dt.transaction_version(app_id) is not None:
        return CommitResult(uri, run_id, False, dt.version(), 0, 0)
    if mode == "error":
        raise FileExistsError(f"Delta table {uri} already exists and mode is 'error'; "
                              "use mode append, overwrite or overwrite_partitions to write into it")
    if mode == "overwrite_partitions":
        if not partition_by:
            raise ValueError("mode overwrite_partitions needs partition_by")
        _commit_overwrite_partitions(dt, actions, schema, partition_by, props)
    else:
        dt.create_write_transaction(actions, mode=mode, schema=Schema.from_arrow(schema),
                                    partition_by=partition_by or None, commit_properties=props)
    return CommitResult(uri, run_id, True, _version_of(uri, app_id), len(actions), rows)


def _version_of(uri: str, app_id: str) -> int:
    """The table version that holds this run's commit (not a later writer's)."""
    dt = DeltaTable(uri)
    for entry in dt.history():  # newest first; each commit of lakefill carries its run id
        if entry.get("lakefill.run_id") == app_id[len(APP_ID_PREFIX):]:
            return int(entry["version"])
    return dt.version()


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


def read_lake(table_uri: str | Path) -> pa.Table:
    return DeltaTable(str(table_uri)).to_pyarrow_table()

"""Apache Spark DataFrame functions: thin ``mapInArrow`` wrappers over the core.

Rows never leave the executors. A row that fails a step is not dropped: it stays in the
DataFrame with its data columns null and the quarantine columns set (``_lf_q_reason``,
``_lf_q_stage``, ``_lf_q_record``: the reason, the step and the row as read, JSON), and later
steps pass it through untouched. ``split_quarantine(df)`` gives (good rows, quarantined rows);
``write_lake`` writes both kinds as Parquet parts (table / quarantine) on the executors and
returns their Delta AddActions, which the driver commits (``lakefill.transforms.stage.finalize``).

    df = read_raw(spark, "in.parquet", columns)                 # strings + _lf_row_id
    df = detect_disguised_nulls(df, policy, schema)             # typed
    df = validate(df, schema, "pre")                            # GX suite per Arrow batch
    df = impute(df, model)                                      # model = broadcast_model(spark, dir)
    df = refine(df, model, threshold=0.2)                       # reverse training, low-confidence rows
    df = validate(df, schema, "post")
    parts = write_lake(with_run_id(df, run_id), table_uri, quarantine_uri, run_id).collect()

The model artifact's bytes go to the executors by broadcast; each Python worker loads it once
(cached by the artifact's sha256) and runs it on the task's GPU when Spark gave it one
(``TaskContext.get().resources()['gpu']``). The Arrow batch size is Spark's
``spark.sql.execution.arrow.maxRecordsPerBatch``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from lakefill.models.artifact import load_artifact
from lakefill.models.reverse import ReverseConfig
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.impute import IMPUTED, Imputer, resolve_device
from lakefill.transforms.io import ROW_ID, Quarantined, plan_reads, read_unit
from lakefill.transforms.lake import action_to_dict, write_part
from lakefill.transforms.parse import parse_table
from lakefill.schema import TableSchema
from lakefill.transforms.stage import (confidence_histogram, quarantine_batch, reason_counts, refined_rows,
                              split_by_confidence, with_run_id)
from lakefill.transforms.validate import Validator

__all__ = ["Q_REASON", "Q_STAGE", "Q_RECORD", "ModelRef", "Counters", "broadcast_model", "read_raw",
           "detect_disguised_nulls", "validate", "impute", "refine", "with_run_id_df", "split_quarantine", "write_lake",
           "stage_schemas", "fused", "detect_step", "validate_step", "impute_step", "refine_step", "run_id_step"]

Q_REASON, Q_STAGE, Q_RECORD = "_lf_q_reason", "_lf_q_stage", "_lf_q_record"
Q_FIELDS = [pa.field(Q_REASON, pa.string()), pa.field(Q_STAGE, pa.string()), pa.field(Q_RECORD, pa.string())]
PARTS_SCHEMA = "kind string, actions string, reasons string, hist string, refined long, cells long, worker string, python string"


# -- counters (Spark accumulators) -------------------------------------------------------------

class _CounterParam(AccumulatorParam):
    def zero(self, value):
        return Counter()

    def addInPlace(self, a, b):
        a.update(b)
        return a


@dataclass
class Counters:
    """Accumulators for the run report. Updated in tasks; Spark merges the successful attempts."""
    rows_in: object
    disguised: object

    @classmethod
    def create(cls, spark: SparkSession) -> "Counters":
        sc = spark.sparkContext
        return cls(sc.accumulator(0), sc.accumulator(Counter(), _CounterParam()))


# -- the envelope: data columns + quarantine columns -------------------------------------------

def _envelope(schema: pa.Schema) -> pa.Schema:
    return pa.schema(list(schema) + Q_FIELDS)


_ALIAS = "__lfx_"


def spark_name(name: str) -> str:
    """The name Spark sees for a column. ``mapInArrow`` resolves every column of its input by
    name (``df[col]``), where a dot means a struct field and a backtick quotes: a name with
    either travels through Spark under a reversible alias (``__lfx_`` + its UTF-8 in hex) and
    the Arrow side, the Parquet parts and the Delta table keep the real name."""
    return _ALIAS + name.encode("utf-8").hex() if ("." in name or "`" in name) else name


def real_name(name: str) -> str:
    return bytes.fromhex(name[len(_ALIAS):]).decode("utf-8") if name.startswith(_ALIAS) else name


def _to_spark(t: pa.Table) -> pa.Table:
    return t.rename_columns([spark_name(n) for n in t.column_names])


def _spark_schema(arrow_schema: pa.Schema):
    env = _envelope(arrow_schema)
    return from_arrow_schema(pa.schema([f.with_name(spark_name(f.name)) for f in env]))


def _split(batch: pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
    """(rows still in play, without the quarantine columns; rows already quarantined)."""
    t = pa.Table.from_batches([batch])
    t = t.rename_columns([real_name(n) for n in t.column_names])
    held = pc.is_valid(t.column(Q_REASON))
    return t.filter(pc.invert(held)).drop_columns([Q_REASON, Q_STAGE, Q_RECORD]), t.filter(held)


def _emit(good: pa.Table, new_bad: list[Quarantined], held: pa.Table, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Rows in play (cast to ``schema``), new quarantine rows and already-held ones, as one schema."""
    env = _envelope(schema)
    if good.num_rows:
        cols = [good.column(f.name).cast(f.type) if f.name in good.column_names else pa.nulls(good.num_rows, f.type)
                for f in schema]
        n = good.num_rows
        yield _to_spark(pa.Table.from_arrays(cols + [pa.nulls(n, pa.string())] * 3, schema=env)).combine_chunks().to_batches()[0]
    rows = [(q.row_id, q.reason, q.stage, q.record) for q in new_bad]
    if held.num_rows:
        rows += list(zip(held.column(ROW_ID).to_pylist(), held.column(Q_REASON).to_pylist(),
                         held.column(Q_STAGE).to_pylist(), held.column(Q_RECORD).to_pylist()))
    if rows:
        n = len(rows)
        arrays = {f.name: pa.nulls(n, f.type) for f in schema}
        arrays[ROW_ID] = pa.array([r[0] for r in rows], pa.int64())
        arrays[Q_REASON] = pa.array([r[1] for r in rows], pa.string())
        arrays[Q_STAGE] = pa.array([r[2] for r in rows], pa.string())
        arrays[Q_RECORD] = pa.array([r[3] for r in rows], pa.string())
        yield _to_spark(pa.Table.from_pydict(arrays, schema=env)).combine_chunks().to_batches()[0]


def _map(df: DataFrame, schema: pa.Schema, *steps):
    """Apply ``step(table) -> (table, quarantined)`` (several: one after the other, in one Python
    pass) to the rows in play of every Arrow batch; the output has ``schema``."""
    def fn(batches):
        for batch in batches:
            good, held = _split(batch)
            bad: list[Quarantined] = []
            for step in steps:
                if not good.num_rows:
                    break
                good, new = step(good)
                bad += new
            yield from _emit(good, bad, held, schema)
    return df.mapInArrow(fn, _spark_schema(schema))


# -- the model, broadcast -----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """A broadcast model artifact: its files' bytes, its hash, the schema, the device setting."""
    files: object  # Broadcast[dict[str, bytes]]
    sha256: str
    schema: dict
    device: str = "auto"


def broadcast_model(spark: SparkSession, model_dir: str | Path, schema: TableSchema, *, device: str = "auto") -> ModelRef:
    model_dir = Path(model_dir)
    load_artifact(model_dir, schema=schema)  # refuse a bad model on the driver, before any task
    files = {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}
    digest = _files_digest(files)
    return ModelRef(spark.sparkContext.broadcast(files), digest, schema.model_dump(by_alias=True), device)


_IMPUTERS: dict[tuple[str, str], Imputer] = {}  # per Python worker: loaded once per artifact and device
_CACHE: dict[str, object] = {}  # per Python worker: policies and GX validators, built once, reused by tasks


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _cached(key: str, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _task_device(setting: str) -> str:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if setting in ("auto", "gpu") and gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    return resolve_device(setting)


def _files_digest(files: dict[str, bytes]) -> str:
    return hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()


def _model_folder(ref: ModelRef) -> Path:
    """The broadcast artifact written into a folder private to this Python worker (``mkdtemp``:
    a fresh name, mode 0700), its bytes checked against the driver's hash before and after the
    write, then loaded (which checks the artifact's own hashes). Nothing at a predictable path
    that another user could plant a model in."""
    files = ref.files.value
    if _files_digest(files) != ref.sha256:
        raise RuntimeError("the broadcast model's bytes do not match the driver's sha256")
    folder = Path(tempfile.mkdtemp(prefix=f"lakefill-model-{ref.sha256[:16]}-"))
    for name, data in files.items():
        if Path(name).name != name:
            raise RuntimeError(f"broadcast model file {name!r} is not a plain file name")
        (folder / name).write_bytes(data)
    if _files_digest({n: (folder / n).read_bytes() for n in files}) != ref.sha256:
        raise RuntimeError(f"the model written to {folder} does not match the driver's sha256")
    return folder


def _imputer(ref: ModelRef) -> Imputer:
    device = _task_device(ref.device)
    key = (ref.sha256, device)
    if key not in _IMPUTERS:
        folder = _model_folder(ref)
        try:
            artifact = load_artifact(folder, schema=TableSchema.model_validate(ref.schema))
        finally:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        _IMPUTERS[key] = Imputer(artifact, device=device)
    return _IMPUTERS[key]


# -- the steps ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageSchemas:
    """The Arrow schema of the rows after each step (worked out on the driver from empty batches)."""
    raw: pa.Schema
    typed: pa.Schema
    imputed: pa.Schema
    final: pa.Schema


def stage_schemas(columns: list[str] | pa.Schema, schema: TableSchema, policy: NullPolicy, imputer: Imputer) -> StageSchemas:
    """``columns``: the raw columns' names (all read as strings) or the raw sample's Arrow schema
    (its nested and binary columns keep their types: they pass through)."""
    if isinstance(columns, pa.Schema):
        raw = pa.schema([pa.field(f.name, f.type) for f in columns if f.name != ROW_ID] + [pa.field(ROW_ID, pa.int64())])
    else:
        raw = pa.schema([pa.field(c, pa.string()) for c in columns] + [pa.field(ROW_ID, pa.int64())])
    empty = raw.empty_table()
    applied, _ = policy.apply(empty)
    typed, _ = parse_table(applied, schema)
    imputed = imputer.impute(typed)
    return StageSchemas(raw, typed.schema, imputed.schema, with_run_id(imputed, "x").schema)


def read_raw(spark: SparkSession, path: str, raw_schema: pa.Schema, counters: Counters | None = None,
             *, batch_rows: int = 200_000, min_tasks: int | None = None, csv_options=None) -> DataFrame:
    """The core reader on the executors: one task per read unit (consecutive Parquet row groups
    of about ``batch_rows`` rows; a text file is one unit). A Parquet file is split into at
    least ``min_tasks`` units where its row groups allow (default: four per task slot, Spark's
    ``defaultParallelism``), so that a small input still keeps every core busy and the last
    round of tasks is short. Unreadable records come back as quarantined rows. Row ids as in
    the core reader."""
    if min_tasks is None:
        min_tasks = 4 * spark.sparkContext.defaultParallelism
    units = plan_reads(path, batch_rows, min_units=min_tasks)
    plan = spark.createDataFrame(units, "path string, unit int, first long, groups int").repartition(len(units))

    def fn(batches):
        for b in batches:
            for unit in zip(*(b.column(i).to_pylist() for i in range(4))):
                for chunk in read_unit(unit, batch_rows, csv_options=csv_options):
                    if counters is not None:
                        counters.rows_in.add(chunk.rows_in)
                    table = chunk.table.select(raw_schema.names)
                    for start in range(0, max(table.num_rows, 1), batch_rows):
                        part = table.slice(start, batch_rows)
                        bad = list(chunk.quarantined) if start == 0 else []
                        yield from _emit(part, bad, _NOTHING_HELD, raw_schema)

    return plan.mapInArrow(fn, _spark_schema(raw_schema))


def detect_disguised_nulls(df: DataFrame, policy: NullPolicy, schema: TableSchema, typed_schema: pa.Schema,
                           counters: Counters | None = None) -> DataFrame:
    """Disguised nulls -> nulls (the fitted policy), then the schema's types; cells that do not
    cast put their row in quarantine with the reason."""
    return _map(df, typed_schema, detect_step(policy, schema, counters))


def detect_step(policy: NullPolicy, schema: TableSchema, counters: Counters | None = None):
    policy_dict, schema_dict = policy.to_dict(), schema.model_dump(by_alias=True)
    key = _key("detect", policy_dict, schema_dict)

    def step(table):
        schema = _cached(_key("schema", schema_dict), lambda: TableSchema.model_validate(schema_dict))
        policy = _cached(key, lambda: NullPolicy.from_dict(policy_dict, schema=schema))
        table, counts = policy.apply(table)
        if counters is not None and any(counts.values()):
            counters.disguised.add(Counter({k: int(v) for k, v in counts.items() if v}))
        return parse_table(table, schema)

    return step


def validate(df: DataFrame, schema: TableSchema, stage: str, out_schema: pa.Schema) -> DataFrame:
    """The schema's Great Expectations suite ('pre' or 'post') on each Arrow batch, on the executors;
    failing rows are quarantined with the expectation's name and the value."""
    return _map(df, out_schema, validate_step(schema, stage))


def validate_step(schema: TableSchema, stage: str):
    schema_dict = schema.model_dump(by_alias=True)
    key = _key("validate", stage, schema_dict)

    def step(table):
        return _cached(key, lambda: Validator(TableSchema.model_validate(schema_dict), stage=stage)).validate(table)

    return step


def impute(df: DataFrame, model: ModelRef, imputed_schema: pa.Schema) -> DataFrame:
    """Fills every null cell of the model's columns; adds _lf_imputed, _lf_method, _lf_confidence."""
    return _map(df, imputed_schema, impute_step(model))


def impute_step(model: ModelRef):
    return lambda t: (_imputer(model).impute(t), [])


def refine(df: DataFrame, model: ModelRef, imputed_schema: pa.Schema, *, threshold: float,
           reverse: dict | None = None) -> DataFrame:
    """Reverse training on the rows under the confidence threshold (each Arrow batch's low rows
    in one call, gradients enabled inside); the other rows pass through unchanged."""
    return _map(df, imputed_schema, refine_step(model, threshold=threshold, reverse=reverse))


def refine_step(model: ModelRef, *, threshold: float, reverse: dict | None = None):
    reverse = reverse or {}

    def step(table):
        ok, low = split_by_confidence(table, threshold)
        if not low.num_rows:
            return table, []
        base = _imputer(model)
        worker = Imputer(base.artifact, reverse=ReverseConfig(**reverse), device=base.device) if reverse else base
        return pa.concat_tables([ok, worker.refine(low)]), []

    return step


def with_run_id_df(df: DataFrame, run_id: str, final_schema: pa.Schema) -> DataFrame:
    return _map(df, final_schema, run_id_step(run_id))


def run_id_step(run_id: str):
    return lambda t: (with_run_id(t, run_id), [])


def fused(df: DataFrame, final_schema: pa.Schema, *steps) -> DataFrame:
    """Several steps (``detect_step``, ``validate_step``, ...) in one ``mapInArrow``: one Python
    pass and one Arrow round trip per batch instead of one per step. Same rows, same result."""
    return _map(df, final_schema, *steps)


def split_quarantine(df: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(rows in play without the quarantine columns, quarantined rows: row id, reason, stage, record)."""
    held = F.col(Q_REASON).isNotNull()
    good = df.filter(~held).drop(Q_REASON, Q_STAGE, Q_RECORD)
    bad = df.filter(held).select(ROW_ID, F.col(Q_REASON).alias("reason"), F.col(Q_STAGE).alias("stage"),
                                 F.col(Q_RECORD).alias("record"))
    return good, bad


def write_lake(df: DataFrame, table_uri: str, quarantine_uri: str, run_id: str, final_schema: pa.Schema,
               *, partition_by: list[str] = ()) -> DataFrame:
    """Executors write each batch's rows as Parquet parts of the table (and its quarantined rows
    as parts of the quarantine table) and return one record per part set: the AddActions (JSON),
    the quarantine reasons, the confidence histogram. Nothing is visible until the driver commits."""
    partition_by = list(partition_by)

    def fn(batches):
        for batch in batches:
            good, held = _split(batch)
            if good.num_rows:
                good = good.cast(final_schema).sort_by(ROW_ID)
                actions = write_part(good, table_uri, partition_by=partition_by)
                yield pa.RecordBatch.from_pylist([{
                    "kind": "table", "actions": json.dumps([action_to_dict(a) for a in actions]), "reasons": "{}",
                    "hist": json.dumps(confidence_histogram(good)), "refined": refined_rows(good),
                    "cells": int(pc.sum(pc.list_value_length(good.column(IMPUTED))).as_py() or 0),
                    "worker": _worker(), "python": sys.prefix}], schema=_PARTS)
            if held.num_rows:
                rows = [Quarantined(r, why, st, rec) for r, why, st, rec in zip(
                    held.column(ROW_ID).to_pylist(), held.column(Q_REASON).to_pylist(),
                    held.column(Q_STAGE).to_pylist(), held.column(Q_RECORD).to_pylist())]
                actions = write_part(quarantine_batch(rows, run_id), quarantine_uri)
                yield pa.RecordBatch.from_pylist([{
                    "kind": "quarantine", "actions": json.dumps([action_to_dict(a) for a in actions]),
                    "reasons": json.dumps(dict(reason_counts(rows))), "hist": "[]", "refined": 0, "cells": 0,
                    "worker": _worker(), "python": sys.prefix}],
                    schema=_PARTS)

    return df.mapInArrow(fn, PARTS_SCHEMA)


def _worker() -> str:
    """Which executor wrote a part: a standalone executor runs in its own work folder (.../app/executor-id)."""
    return os.getcwd()


_NOTHING_HELD = pa.schema([pa.field(ROW_ID, pa.int64())] + Q_FIELDS).empty_table()
_PARTS = pa.schema([("kind", pa.string()), ("actions", pa.string()), ("reasons", pa.string()), ("hist", pa.string()),
                    ("refined", pa.int64()), ("cells", pa.int64()), ("worker", pa.string()),
                    ("python", pa.string())])

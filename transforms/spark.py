"""Apache Spark: the stage plan (``lakefill.transforms.plan``) on the executors, and DataFrame functions.

The job (``run_plan``) is one ``mapInArrow`` over the read units: each task reads its unit,
runs every step of the plan on each batch, writes the kept rows as Parquet parts of the table
and the quarantined rows as parts of the quarantine table, and returns one record per batch:
the parts' Delta AddActions and the counters. The driver sums them (``RunTotals.add``) and
commits (``lakefill.transforms.stage.finalize``); a failed task attempt's files are never
committed and its counters never counted.

The same steps are DataFrame functions, to compose in a Spark job of your own. Rows never leave
the executors; a row that fails a step is not dropped: it stays in the DataFrame with its data
columns null and the quarantine columns set (``_lf_q_reason``, ``_lf_q_stage``, ``_lf_q_record``:
the reason, the step and the row as read, JSON), and later steps pass it through untouched.

    df = read_raw(spark, "in.parquet", schemas.raw)              # strings + _lf_row_id
    df = detect_disguised_nulls(df, policy, schema, schemas.typed)
    df = validate(df, schema, "pre", schemas.typed)              # GX suite per Arrow batch
    df = impute(df, model, schemas.imputed)                      # model = broadcast_model(spark, dir, schema)
    df = refine(df, model, schemas.imputed, threshold=0.2)       # reverse training, low-confidence rows
    df = validate(df, schema, "post", schemas.imputed)
    good, bad = split_quarantine(with_run_id_df(df, run_id, schemas.final))
    # or all of them in one pass: fused(df, schemas.final, plan.steps, model=model)

The model artifact's bytes go to the executors by broadcast; each Python worker loads it once
(cached by the artifact's sha256) and runs it on the task's GPU when Spark gave it one
(``TaskContext.get().resources()['gpu']``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
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

from lakefill.errors import ConfigError
from lakefill.models.artifact import load_artifact
from lakefill.schema import TableSchema
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms import modelcache
from lakefill.transforms.impute import Imputer, resolve_device
from lakefill.transforms.modelcache import LoadedModel, ModelSource
from lakefill.transforms.io import ROW_ID, Quarantined
from lakefill.transforms.reads import ReadUnit, plan_reads, read_unit
from lakefill.transforms.plan import (Detect, Finish, Impute, Refine, Runtime, StagePlan, Step, Validate, run_steps)
from lakefill.transforms.stage import write_outputs
from lakefill.transforms.storage import Location, as_location

__all__ = ["Q_REASON", "Q_STAGE", "Q_RECORD", "ModelRef", "Counters", "broadcast_model", "run_plan", "read_raw",
           "detect_disguised_nulls", "validate", "impute", "refine", "with_run_id_df", "split_quarantine", "write_lake",
           "stage_schemas", "fused", "spark_name", "real_name"]

Q_REASON, Q_STAGE, Q_RECORD = "_lf_q_reason", "_lf_q_stage", "_lf_q_record"
Q_FIELDS = [pa.field(Q_REASON, pa.string()), pa.field(Q_STAGE, pa.string()), pa.field(Q_RECORD, pa.string())]
# one record per written batch: its Parts (JSON), the executor's folder, its Python, the task's GPUs
_PARTS = pa.schema([("parts", pa.string()), ("worker", pa.string()), ("python", pa.string()), ("gpus", pa.string())])
PARTS_SCHEMA = ", ".join(f"{f.name} string" for f in _PARTS)  # the same, as mapInArrow's DDL


# -- counters (Spark accumulators) -------------------------------------------------------------

class _CounterParam(AccumulatorParam):
    def zero(self, value):
        return Counter()

    def addInPlace(self, a, b):
        a.update(b)
        return a


@dataclass
class Counters:
    """An accumulator of the plan's counters, for the DataFrame functions. Updated in tasks and
    merged by Spark, once per action that computes the DataFrame (two actions on one
    uncached DataFrame count twice: Spark's rule for accumulators in transformations). The job
    itself (``run_plan``) returns its counters with its parts instead: counted exactly once."""
    acc: object

    @classmethod
    def create(cls, spark: SparkSession) -> "Counters":
        return cls(spark.sparkContext.accumulator(Counter(), _CounterParam()))

    @property
    def value(self) -> Counter:
        return Counter(self.acc.value)

    def add(self, counts: Counter) -> None:
        if counts:
            self.acc.add(Counter(counts))


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


def _map(df: DataFrame, schema: pa.Schema, steps: list[Step], *, model: "ModelRef | None" = None,
         counters: Counters | None = None):
    """The plan's ``steps`` (one after the other, in one Python pass) on the rows in play of
    every Arrow batch; the output has ``schema``."""
    steps = list(steps)

    def fn(batches):
        rt = Runtime((lambda: _imputer(model)) if model is not None else None)
        for batch in batches:
            good, held = _split(batch)
            done = run_steps(steps, good, rt)
            if counters is not None:
                counters.add(done.counters)
            yield from _emit(done.table, done.quarantined, held, schema)
    return df.mapInArrow(fn, _spark_schema(schema))


# -- the model, broadcast -----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """A broadcast model artifact: its files' bytes, its hash, the schema, the device setting."""
    files: object  # Broadcast[dict[str, bytes]]
    sha256: str
    schema: dict
    device: str = "auto"


def broadcast_model(spark: SparkSession, model_dir: "str | Path | Location", schema: TableSchema, *,
                    device: str = "auto") -> ModelRef:
    """The model folder's files (local or on an object store) read on the driver, checked, and
    broadcast: no executor reads a shared disk or the store for the model."""
    loc = as_location(model_dir)
    files = {f.name: f.read_bytes() for f in loc.listdir() if f.is_file()}
    load_artifact(files, schema=schema)  # refuse a bad model on the driver, before any task
    return ModelRef(spark.sparkContext.broadcast(files), _files_digest(files), schema.model_dump(by_alias=True), device)


def _task_device(setting: str) -> str:
    gpus = _task_gpu_addresses()
    if setting in ("auto", "gpu") and gpus:
        import torch

        if torch.cuda.is_available():  # a GPU given to the task that this torch cannot use: as without one
            return f"cuda:{gpus[0]}"
    return resolve_device(setting)


def _files_digest(files: dict[str, bytes]) -> str:
    return hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()


def _imputer(ref: ModelRef) -> LoadedModel:
    """The broadcast model from the Python worker's model cache (``lakefill.transforms.modelcache``),
    loaded from the broadcast bytes (checked against the driver's hash, then by the artifact's
    own hashes) the first time; nothing is written to disk."""
    device = _task_device(ref.device)
    source = ModelSource(files=ref.files.value, schema=ref.schema, device=ref.device)

    def load() -> Imputer:  # once per worker and artifact: the bytes are hashed only when they are loaded
        if _files_digest(source.files) != ref.sha256:
            raise RuntimeError("the broadcast model's bytes do not match the driver's sha256")
        return source.load(device)

    return modelcache.cached(source.key(device), load)


# -- the job: the plan from read to write in one pass --------------------------------------------

def run_plan(spark: SparkSession, plan: StagePlan, model: ModelRef, path: str, *, table_uri: "str | Location",
             quarantine_uri: "str | Location", run_id: str, partition_by: list[str] = (), batch_rows: int = 200_000,
             min_tasks: int | None = None, csv_options=None, options: dict | None = None) -> DataFrame:
    """One task per read unit (consecutive Parquet row groups of about ``batch_rows`` rows; a
    CSV or JSON Lines file in byte ranges on record boundaries, ``plan_reads``; a file is split
    into at least ``min_tasks`` units where its row groups or records allow, default four per
    task slot, so that a small input still keeps every core busy). Each task reads, runs the plan's steps on every batch and writes the parts; the
    DataFrame it returns holds one record per batch (``parts``: ``Parts.to_dict()`` as JSON).
    Nothing is visible until the driver commits. ``options``: the storage options of the input
    (the tables' ``Location``s carry their own)."""
    options = dict(options or {})
    todo = _read_units(spark, path if isinstance(path, list) else str(path), batch_rows, min_tasks, options, csv_options)
    steps = list(plan.steps)
    out = dict(table_uri=table_uri, quarantine_uri=quarantine_uri, run_id=run_id, partition_by=list(partition_by))

    def fn(batches):
        rt = Runtime(lambda: _imputer(model))
        modelcache.take_loads()  # a load this worker made outside a run (the DataFrame functions) is not this run's
        for chunk in _read_chunks(batches, batch_rows, csv_options, options):
            done = run_steps(steps, chunk.table, rt)
            parts = write_outputs(done.table, list(chunk.quarantined) + done.quarantined, **out)
            parts.counters.update(done.counters)
            parts.counters["rows_in"] += chunk.rows_in
            parts.counters["model_loads"] += modelcache.take_loads()
            yield _parts_record(parts)

    return todo.mapInArrow(fn, PARTS_SCHEMA)


def sample_rows(spark: SparkSession, path, *, train_rows: int, seed: int = 0, csv_options=None,
                options: dict | None = None, batch_rows: int = 50_000, min_tasks: int | None = None, log=None):
    """The input's training sample drawn by the executors: each task keeps the bottom
    ``train_rows`` of its read units (``lakefill.transforms.sample``), the driver merges them one
    task at a time (holding at most about twice the sample). The same rows as the local sampler
    draws, whatever the split. Returns (``RawRead`` of the sample, ``SampleInfo``)."""
    from lakefill.transforms.io import RawRead
    from lakefill.transforms.sample import BottomK

    t0 = time.perf_counter()
    todo = _read_units(spark, path if isinstance(path, list) else str(path), batch_rows, min_tasks, options, csv_options)

    def fn(batches):
        part = BottomK(train_rows, seed)
        for chunk in _read_chunks(batches, batch_rows, csv_options, options):
            part.add(chunk.table, chunk.quarantined)
        yield pa.RecordBatch.from_pylist([{"sample": part.to_bytes()}], schema=_SAMPLE)

    merged = BottomK(train_rows, seed)
    for row in todo.mapInArrow(fn, "sample binary").toLocalIterator():
        merged.merge(BottomK.from_bytes(row["sample"], train_rows, seed))  # Arrow IPC: data, never code
    info = merged.info()
    if log is not None:
        log(f"training sample: {info.rows:,} of {info.input_rows:,} rows (seed {seed}), drawn by Spark in "
            f"{time.perf_counter() - t0:.2f} s")
    return RawRead(str(path), merged.table(), list(merged.quarantined)), info


_SAMPLE = pa.schema([("sample", pa.binary())])


def distributed_trainer(spark: SparkSession, processes: int, *, log=None):
    """The networks trained by torch DDP on Spark's executors (``training.trainer:
    torch_distributor``): ``pyspark.ml.torch.distributor.TorchDistributor`` starts ``processes``
    barrier tasks, each one rank of a gloo group running ``lakefill.models.training.ddp_networks``
    on its part of the training sample. A callable with ``train_networks``'s signature for
    ``fit_model(networks=...)``; the members that are not networks are fitted on the driver."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from lakefill.models.training import ddp_networks

    slots = spark.sparkContext.defaultParallelism
    if processes > slots:
        raise ConfigError(f"training.processes is {processes} but Spark has {slots} task slots; TorchDistributor runs "
                          f"one barrier task per process, all at once: set training.processes to at most {slots}")
    driver_log = log

    def networks(values, observed, t_num, t_cat, *, progress=False, log=None, **kwargs):  # rank 0's progress: its task's log
        t0 = time.perf_counter()
        distributor = TorchDistributor(num_processes=processes, local_mode=False, use_gpu=False)
        results = distributor.run(ddp_networks, values, observed, t_num, t_cat, progress=progress, **kwargs)
        if (log or driver_log) is not None:
            (log or driver_log)(f"networks trained by TorchDistributor on {processes} executor processes (gloo) in "
                                f"{time.perf_counter() - t0:.1f} s")
        return results

    networks.info = {"trainer": "torch_distributor", "processes": processes, "backend": "gloo"}
    return networks


def _read_units(spark: SparkSession, path: str, batch_rows: int, min_tasks: int | None, options: dict | None,
                csv_options) -> DataFrame:
    """The input's read units (``plan_reads``, planned on the driver), one per partition."""
    if min_tasks is None:
        min_tasks = 4 * spark.sparkContext.defaultParallelism
    units = plan_reads(path, batch_rows, min_units=min_tasks, options=options, csv_options=csv_options)
    rows = [tuple(u.to_dict().values()) for u in units]
    return spark.createDataFrame(rows, ReadUnit.spark_ddl()).repartition(len(units))


def _read_chunks(batches, batch_rows: int, csv_options, options: dict | None):
    """The raw chunks of the read units in a task's Arrow batches."""
    for b in batches:
        for row in b.to_pylist():
            yield from read_unit(ReadUnit.from_dict(row), batch_rows, csv_options=csv_options, options=options)


# -- the steps as DataFrame functions --------------------------------------------------------------

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
    rt = Runtime(lambda: imputer)
    typed = Detect(policy.to_dict(), schema.model_dump(by_alias=True)).run(raw.empty_table(), rt).table
    imputed = Impute().run(typed, rt).table
    return StageSchemas(raw, typed.schema, imputed.schema, Finish("x", schema.names).run(imputed, rt).table.schema)


def read_raw(spark: SparkSession, path: str, raw_schema: pa.Schema, counters: Counters | None = None,
             *, batch_rows: int = 200_000, min_tasks: int | None = None, csv_options=None) -> DataFrame:
    """The core reader on the executors, one task per read unit (as ``run_plan``); unreadable
    records come back as quarantined rows. Row ids as in the core reader."""
    todo = _read_units(spark, path, batch_rows, min_tasks, None, csv_options)

    def fn(batches):
        for chunk in _read_chunks(batches, batch_rows, csv_options, None):
            if counters is not None:
                counters.add(Counter({"rows_in": chunk.rows_in}))
            table = chunk.table.select(raw_schema.names)
            for start in range(0, max(table.num_rows, 1), batch_rows):
                part = table.slice(start, batch_rows)
                bad = list(chunk.quarantined) if start == 0 else []
                yield from _emit(part, bad, _NOTHING_HELD, raw_schema)

    return todo.mapInArrow(fn, _spark_schema(raw_schema))


def detect_disguised_nulls(df: DataFrame, policy: NullPolicy, schema: TableSchema, typed_schema: pa.Schema,
                           counters: Counters | None = None) -> DataFrame:
    """Disguised nulls -> nulls (the fitted policy), then the schema's types; cells that do not
    cast put their row in quarantine with the reason."""
    return _map(df, typed_schema, [Detect(policy.to_dict(), schema.model_dump(by_alias=True))], counters=counters)


def validate(df: DataFrame, schema: TableSchema, stage: str, out_schema: pa.Schema,
             counters: Counters | None = None) -> DataFrame:
    """The schema's Great Expectations suite ('pre' or 'post') on each Arrow batch, on the executors;
    failing rows are quarantined with the expectation's name and the value."""
    return _map(df, out_schema, [Validate(schema.model_dump(by_alias=True), stage)], counters=counters)


def impute(df: DataFrame, model: ModelRef, imputed_schema: pa.Schema) -> DataFrame:
    """Fills every null cell of the model's columns; adds _lf_imputed, _lf_method, _lf_confidence."""
    return _map(df, imputed_schema, [Impute()], model=model)


def refine(df: DataFrame, model: ModelRef, imputed_schema: pa.Schema, *, threshold: float,
           reverse: dict | None = None, counters: Counters | None = None) -> DataFrame:
    """Reverse training on the rows under the confidence threshold (each Arrow batch's low rows
    in one call, gradients enabled inside); the other rows pass through unchanged."""
    return _map(df, imputed_schema, [Refine(threshold, reverse)], model=model, counters=counters)


def with_run_id_df(df: DataFrame, run_id: str, final_schema: pa.Schema, counters: Counters | None = None) -> DataFrame:
    """The plan's last step: the run id column, rows in row-id order within each batch."""
    return _map(df, final_schema, [Finish(run_id, final_schema.names)], counters=counters)


def fused(df: DataFrame, final_schema: pa.Schema, steps: list[Step], *, model: ModelRef | None = None,
          counters: Counters | None = None) -> DataFrame:
    """Several steps (a plan's ``steps``) in one ``mapInArrow``: one Python pass and one Arrow
    round trip per batch instead of one per step. Same rows, same result."""
    return _map(df, final_schema, steps, model=model, counters=counters)


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
    as parts of the quarantine table) and return one record per batch (``parts``: the AddActions
    and counters, ``Parts.to_dict()`` as JSON). Nothing is visible until the driver commits."""
    out = dict(table_uri=table_uri, quarantine_uri=quarantine_uri, run_id=run_id, partition_by=list(partition_by))

    def fn(batches):
        for batch in batches:
            good, held = _split(batch)
            rows = [Quarantined(r, why, st, rec) for r, why, st, rec in zip(
                held.column(ROW_ID).to_pylist(), held.column(Q_REASON).to_pylist(),
                held.column(Q_STAGE).to_pylist(), held.column(Q_RECORD).to_pylist())]
            parts = write_outputs(good.cast(final_schema) if good.num_rows else None, rows, **out)
            if parts.table_actions or parts.quarantine_actions:
                yield _parts_record(parts)

    return df.mapInArrow(fn, PARTS_SCHEMA)


def _task_gpu_addresses() -> list[str]:
    """The GPU addresses Spark gave the running task (``spark.task.resource.gpu.amount`` on
    executors that discovered GPUs); none outside a task or when it gave none."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    resources = ctx.resources() if ctx is not None else {}
    return list(resources["gpu"].addresses) if "gpu" in resources else []


def _parts_record(parts) -> pa.RecordBatch:
    """A written batch's record (``_PARTS``): its ``Parts``, this executor, its Python, the task's GPUs."""
    return pa.RecordBatch.from_pylist([{"parts": json.dumps(parts.to_dict()), "worker": _worker(), "python": sys.prefix,
                                        "gpus": ",".join(_task_gpu_addresses())}], schema=_PARTS)


def _worker() -> str:
    """Which executor wrote a part: a standalone executor runs in its own work folder (.../app/executor-id)."""
    return os.getcwd()


_NOTHING_HELD = pa.schema([pa.field(ROW_ID, pa.int64())] + Q_FIELDS).empty_table()

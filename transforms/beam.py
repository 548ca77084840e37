"""Apache Beam transforms: thin DoFns over the core; elements are Arrow tables (batches of rows).

    ReadRaw                -> raw string batches (+ quarantine, + rows_in)
    DetectDisguisedNulls   -> typed batches (policy fitted before the pipeline; cast failures quarantined)
    Validate               -> GX suite per batch; failing rows to quarantine with the expectation's name
    Impute                 -> RunInference with ``LakefillModelHandler`` (keyed by the batch's first row
                              id); failed batches are split until the poisoned rows are found, and only
                              those go to quarantine with the exception text
    RouteByConfidence      -> 'confident' / 'low' tagged outputs
    Refine                 -> reverse training on the low-confidence rows, many rows per call
    WriteToLake / WriteQuarantine -> Parquet parts written by workers; their Delta AddActions flow on
    FinalizeRun            -> one step commits all parts in one Delta transaction per table (run id)

Every DoFn is built from plain dicts and paths, so the pipeline pickles to Dataflow workers; the
model is loaded once per worker process (RunInference's shared handle) and shared by its threads.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Iterable, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io import fileio
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from lakefill.models.artifact import load_artifact
from lakefill.models.reverse import ReverseConfig
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.impute import IMPUTED, Imputer
from lakefill.transforms.io import ROW_ID, Quarantined, plan_reads, read_unit
from lakefill.transforms.lake import action_from_dict, action_to_dict, write_part
from lakefill.transforms.parse import parse_table
from lakefill.schema import TableSchema
from lakefill.transforms.stage import (HIST_BINS, RunTotals, confidence_histogram, finalize, finish, quarantine_batch,
                              reason_counts, reason_key, refined_rows, split_by_confidence)
from lakefill.transforms.validate import Validator

__all__ = ["ReadRaw", "DetectDisguisedNulls", "Validate", "LakefillModelHandler", "Impute", "RouteByConfidence",
           "Refine", "Finish", "WriteToLake", "WriteQuarantine", "FinalizeRun", "QUARANTINE", "NAMESPACE"]

NAMESPACE = "lakefill"
QUARANTINE = "quarantine"
ROWS_IN = "rows_in"
DISGUISED = "disguised"


def _quarantine(rows: list[Quarantined]):
    """Quarantine records travel as lists (one element per batch), not one element per row."""
    for reason, n in reason_counts(rows).items():
        beam.metrics.Metrics.counter(NAMESPACE, f"rows_quarantined:{reason}").inc(n)
    return beam.pvalue.TaggedOutput(QUARANTINE, rows)


# -- read ------------------------------------------------------------------------------------

class _PlanReads(beam.DoFn):
    """A matched file -> read units: consecutive Parquet row groups of about ``batch_rows`` rows
    together; a text file is one unit."""

    def __init__(self, batch_rows: int):
        self.batch_rows = batch_rows

    def process(self, readable: fileio.ReadableFile):
        yield from plan_reads(readable.metadata.path, self.batch_rows)


class _ReadUnit(beam.DoFn):
    def __init__(self, batch_rows: int, csv_options=None):
        self.batch_rows, self.csv_options = batch_rows, csv_options

    def process(self, unit):
        for chunk in read_unit(unit, self.batch_rows, csv_options=self.csv_options):
            beam.metrics.Metrics.counter(NAMESPACE, "rows_in").inc(chunk.rows_in)
            yield beam.pvalue.TaggedOutput(ROWS_IN, chunk.rows_in)
            if chunk.quarantined:
                yield _quarantine(list(chunk.quarantined))
            for start in range(0, chunk.table.num_rows, self.batch_rows):
                yield chunk.table.slice(start, self.batch_rows)


class ReadRaw(beam.PTransform):
    """CSV / JSON Lines / Parquet -> all-string Arrow batches with ``_lf_row_id``.

    Outputs: main (batches), 'quarantine' (lists of unreadable records), 'rows_in' (ints).
    Files are matched with Beam's fileio; Parquet is split into units of consecutive row groups
    of about ``batch_rows`` rows (row ids from the row-group offsets) and reshuffled so that
    workers read in parallel.
    """

    def __init__(self, pattern: str, batch_rows: int = 200_000, csv_options=None):
        super().__init__()
        self.pattern, self.batch_rows, self.csv_options = pattern, batch_rows, csv_options

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> fileio.MatchFiles(self.pattern)
                | "Open" >> fileio.ReadMatches()
                | "Plan" >> beam.ParDo(_PlanReads(self.batch_rows))
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_ReadUnit(self.batch_rows, self.csv_options)).with_outputs(QUARANTINE, ROWS_IN, main="main"))


# -- detect, validate --------------------------------------------------------------------------

class DetectDisguisedNulls(beam.DoFn):
    """Applies a fitted ``NullPolicy`` (as its dict) and casts to the schema's types.

    Main output: typed batches (with ``_lf_disguised``); 'quarantine': cells that do not cast;
    'disguised': per-batch counts of replaced values per column.
    """

    def __init__(self, policy: dict, schema: dict):
        self.policy_dict, self.schema_dict = policy, schema

    def setup(self):
        self.schema = TableSchema.model_validate(self.schema_dict)
        self.policy = NullPolicy.from_dict(self.policy_dict, schema=self.schema)

    def process(self, batch: pa.Table):
        batch, counts = self.policy.apply(batch)
        counts = {k: int(v) for k, v in counts.items() if v}
        for col, n in counts.items():
            beam.metrics.Metrics.counter(NAMESPACE, f"disguised_nulls:{col}").inc(n)
        if counts:
            yield beam.pvalue.TaggedOutput(DISGUISED, counts)
        typed, bad = parse_table(batch, self.schema)
        if bad:
            yield _quarantine(bad)
        if typed.num_rows:
            yield typed


class Validate(beam.DoFn):
    """The schema's Great Expectations suite on each batch ('pre' before imputation, 'post' after)."""

    def __init__(self, schema: dict, stage: str = "pre"):
        self.schema_dict, self.stage = schema, stage

    def setup(self):
        self.validator = Validator(TableSchema.model_validate(self.schema_dict), stage=self.stage)

    def process(self, batch: pa.Table):
        good, bad = self.validator.validate(batch)
        if bad:
            yield _quarantine(bad)
        if good.num_rows:
            yield good


# -- impute (RunInference) ---------------------------------------------------------------------

class LakefillModelHandler(ModelHandler[pa.Table, pa.Table, Imputer]):
    """RunInference handler: examples are Arrow batches, the model is an ``Imputer``.

    ``max_batches``: how many batches (each up to ``batch_size`` rows) RunInference groups into
    one call (``batch_elements_kwargs``). ``device``: auto / cpu / gpu.
    """

    def __init__(self, model_dir: str, schema: dict, *, device: str = "auto", max_batches: int = 4):
        super().__init__(min_batch_size=1, max_batch_size=max_batches)
        self.model_dir, self.schema_dict, self.device = model_dir, schema, device

    def load_model(self) -> Imputer:
        artifact = load_artifact(self.model_dir, schema=TableSchema.model_validate(self.schema_dict))
        return Imputer(artifact, device=self.device)

    def run_inference(self, batch: Sequence[pa.Table], model: Imputer,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        sizes = [t.num_rows for t in batch]
        whole = model.impute(pa.concat_tables(batch, promote_options="permissive") if len(batch) > 1 else batch[0])
        out, start = [], 0
        for t, n in zip(batch, sizes):
            out.append(PredictionResult(t, whole.slice(start, n), self.model_dir))
            start += n
        return out

    def get_num_bytes(self, batch: Sequence[pa.Table]) -> int:
        return sum(t.nbytes for t in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


class _IsolateFailures(beam.DoFn):
    """A batch that failed in RunInference is halved until the failing rows are alone: the rows
    that impute rejoin the stream; each failing row goes to quarantine with the exception text."""

    def __init__(self, handler: LakefillModelHandler):
        self.handler = handler
        self._shared = shared.Shared()

    def setup(self):
        self.model = self._shared.acquire(self.handler.load_model)

    def process(self, failure):
        failed, _exc = failure
        for _key, table in failed:
            yield from self._split(table)

    def _split(self, table: pa.Table):
        try:
            yield next(iter(self.handler.run_inference([table], self.model))).inference
            return
        except Exception as err:  # noqa: BLE001 - the exception text is the quarantine reason
            if table.num_rows == 1:
                row = {k: v for k, v in table.to_pylist()[0].items()}
                yield _quarantine([Quarantined(int(row[ROW_ID]), f"impute: {type(err).__name__}: {err}", "impute",
                                               json.dumps(row, default=str))])
                return
        half = table.num_rows // 2
        yield from self._split(table.slice(0, half))
        yield from self._split(table.slice(half))


class Impute(beam.PTransform):
    """Typed batches -> imputed batches (with provenance); 'quarantine': rows whose imputation failed."""

    def __init__(self, handler: LakefillModelHandler):
        super().__init__()
        self.handler = handler

    def expand(self, batches):
        keyed = batches | "Key" >> beam.Map(lambda t: (int(t.column(ROW_ID)[0].as_py()), t))
        main, failed = keyed | "RunInference" >> RunInference(KeyedModelHandler(self.handler)).with_exception_handling()
        imputed = main | "Unkey" >> beam.Map(lambda kv: kv[1].inference)
        isolated = failed.failed_inferences | "Isolate" >> beam.ParDo(_IsolateFailures(self.handler)).with_outputs(
            QUARANTINE, main="main")
        merged = (imputed, isolated.main) | "Rejoin" >> beam.Flatten()
        return {"main": merged, QUARANTINE: isolated[QUARANTINE]}


class RouteByConfidence(beam.DoFn):
    """Tagged outputs: 'confident' (main) and 'low' (under the threshold, to be refined)."""

    LOW = "low"

    def __init__(self, threshold: float, refine: bool = True):
        self.threshold, self.refine = threshold, refine

    def process(self, batch: pa.Table):
        imputed = int(pc.sum(pc.list_value_length(batch.column(IMPUTED))).as_py() or 0)
        beam.metrics.Metrics.counter(NAMESPACE, "cells_imputed").inc(imputed)
        for k, n in enumerate(confidence_histogram(batch)):
            if n:
                beam.metrics.Metrics.counter(NAMESPACE, f"confidence_bin:{k / HIST_BINS:.1f}").inc(n)
        if not self.refine:
            yield batch
            return
        confident, low = split_by_confidence(batch, self.threshold)
        if confident.num_rows:
            yield confident
        if low.num_rows:
            yield beam.pvalue.TaggedOutput(self.LOW, low)


class _Gather(beam.DoFn):
    """Batches smaller than ``gather_rows`` are held within a bundle and handled together
    (``_handle``), the rest as they come. The stage runs in the global window (a bounded job),
    where the gathered rows are emitted at bundle end."""

    gather_rows: int

    def start_bundle(self):
        self._held: list[pa.Table] = []
        self._held_rows = 0

    def process(self, batch: pa.Table):
        if batch.num_rows >= self.gather_rows:
            yield from self._handle(batch)
            return
        self._held.append(batch)
        self._held_rows += batch.num_rows
        if self._held_rows >= self.gather_rows:
            yield from self._flush()

    def finish_bundle(self):
        for out in self._flush():
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value_at_end_of_window(out.value))
            else:
                yield GlobalWindows.windowed_value_at_end_of_window(out)

    def _flush(self):
        held, self._held, self._held_rows = self._held, [], 0
        if held:
            yield from self._handle(pa.concat_tables(held, promote_options="default"))

    def _handle(self, batch: pa.Table):
        raise NotImplementedError


class Refine(_Gather):
    """Reverse training on low-confidence rows, many rows per call (gradients enabled inside).

    The low rows arrive as small batches (a few per cent of each input batch); they are
    gathered up to ``batch_rows`` per call, as a reverse-training call costs much the same for
    a few hundred rows as for a thousand (on letter, 2 cores, 20 steps: 1,315 rows/s in calls
    of 250 rows, 2,200 in calls of 1,000). Each row's result does not depend on the rows beside it."""

    def __init__(self, handler: LakefillModelHandler, reverse: dict | None = None, batch_rows: int = 4096):
        self.handler, self.reverse, self.gather_rows = handler, reverse or {}, batch_rows
        self._shared = shared.Shared()

    def setup(self):
        base = self._shared.acquire(self.handler.load_model)
        self.imputer = Imputer(base.artifact, reverse=ReverseConfig(**self.reverse), device=base.device)

    def _handle(self, batch: pa.Table):
        out = self.imputer.refine(batch)
        n = refined_rows(out)
        beam.metrics.Metrics.counter(NAMESPACE, "rows_refined").inc(n)
        beam.metrics.Metrics.counter(NAMESPACE, "rows_reverse_tried").inc(batch.num_rows)
        yield out


class Finish(_Gather):
    """Post-validation and the run id column.

    Batches smaller than ``batch_rows`` (the re-worked rows arrive as small ones beside the
    confident part of their batch) are gathered within a bundle and validated together: a GX
    validation has a fixed cost of a few tenths of a second whatever its size.
    """

    def __init__(self, schema: dict, run_id: str, batch_rows: int = 200_000):
        self.schema_dict, self.run_id, self.gather_rows = schema, run_id, batch_rows

    def setup(self):
        self.validator = Validator(TableSchema.model_validate(self.schema_dict), stage="post")

    def _handle(self, batch: pa.Table):
        good, bad = finish(batch, self.validator, self.run_id)
        if bad:
            yield _quarantine(bad)
        if good.num_rows:
            yield good


# -- lake --------------------------------------------------------------------------------------

class _WriteParts(beam.DoFn):
    def __init__(self, table_uri: str, partition_by: list[str]):
        self.table_uri, self.partition_by = table_uri, list(partition_by)

    def process(self, batch: pa.Table):
        t = time.perf_counter()
        actions = write_part(batch, self.table_uri, partition_by=self.partition_by)
        beam.metrics.Metrics.distribution(NAMESPACE, "write_ms").update(int(1000 * (time.perf_counter() - t)))
        yield {"actions": [action_to_dict(a) for a in actions], "schema": batch.schema.serialize().to_pybytes(),
               "hist": confidence_histogram(batch) if "_lf_confidence" in batch.column_names else [0] * HIST_BINS,
               "refined": refined_rows(batch) if "_lf_method" in batch.column_names else 0}


class WriteToLake(beam.PTransform):
    """Batches -> Parquet files in the Delta table's folder; outputs one dict of AddActions per batch.

    Nothing is visible until ``FinalizeRun`` commits the actions in one transaction."""

    def __init__(self, table_uri: str, partition_by: Sequence[str] = ()):
        super().__init__()
        self.table_uri, self.partition_by = table_uri, list(partition_by)

    def expand(self, batches):
        return batches | "WriteParts" >> beam.ParDo(_WriteParts(self.table_uri, self.partition_by))


class _WriteQuarantineParts(beam.DoFn):
    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id

    def process(self, rows: list[Quarantined]):
        actions = write_part(quarantine_batch(rows, self.run_id), self.uri)
        yield {"actions": [action_to_dict(a) for a in actions], "reasons": dict(Counter(reason_key(q.reason) for q in rows))}


class WriteQuarantine(beam.PTransform):
    """Lists of quarantine records -> Parquet parts of the quarantine Delta table."""

    def __init__(self, uri: str, run_id: str):
        super().__init__()
        self.uri, self.run_id = uri, run_id

    def expand(self, lists):
        return lists | "WriteQuarantineParts" >> beam.ParDo(_WriteQuarantineParts(self.uri, self.run_id))


class FinalizeRun(beam.DoFn):
    """The single last step: sums what the workers wrote and calls the core ``finalize`` (count
    check, quarantine-share check, one Delta commit per table keyed by the run id, JSON report).
    A failed check raises, so the pipeline fails and nothing is committed to the table."""

    def __init__(self, *, run_id: str, output: str, config: dict, max_quarantine_share: float, mode: str,
                 partition_by: Sequence[str], started: float):
        self.kw = dict(run_id=run_id, output=output, config=config, max_quarantine_share=max_quarantine_share,
                       mode=mode, partition_by=list(partition_by))
        self.started = started

    def process(self, _, parts, quarantine_parts, rows_in, disguised):
        totals = RunTotals(rows_in=sum(rows_in))
        for p in sorted(parts, key=lambda p: [a["path"] for a in p["actions"]]):
            totals.table_actions += [action_from_dict(a) for a in p["actions"]]
            if totals.table_schema is None and p["actions"]:
                totals.table_schema = pa.ipc.read_schema(pa.py_buffer(p["schema"]))
            totals.confidence_hist = [a + b for a, b in zip(totals.confidence_hist, p["hist"])]
            totals.rows_refined += p["refined"]
        for q in quarantine_parts:
            totals.quarantine_actions += [action_from_dict(a) for a in q["actions"]]
            totals.quarantined_by_reason.update(q["reasons"])
        for d in disguised:
            totals.disguised.update(d)
        done = finalize(totals, engine="beam", timings={"pipeline": time.time() - self.started}, **self.kw)
        yield {"report": str(done.report), "counts": done.counts, "committed": done.committed}

"""Apache Beam transforms: the stage plan's steps as DoFns; elements are Arrow tables (batches of rows).

    ReadRaw       -> raw string batches (+ 'quarantine' lists, + 'counters': rows_in)
    RunPlan       -> each step of the plan (``lakefill.transforms.plan``) as its own step of the
                     pipeline: ``RunStep`` (a DoFn) for most, ``Impute`` (RunInference with
                     ``LakefillModelHandler``, keyed by the batch's first row id) for the model's
                     forward pass, where a failed batch is halved until the failing rows are alone
                     and only those go to quarantine with the exception text. Every step's
                     quarantined rows go to 'quarantine', its counters to 'counters' and to Beam
                     metrics.
    WriteToLake / WriteQuarantine -> Parquet parts written by workers; their Delta AddActions flow on
    FinalizeRun   -> one step commits all parts in one Delta transaction per table (run id)

The plan's steps hold plain settings, so the pipeline pickles to Dataflow workers; the model is
loaded once per worker process (RunInference's shared handle) and shared by its threads and by
the steps that use it.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Iterable, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from lakefill.transforms import modelcache
from lakefill.transforms.modelcache import LoadedModel, ModelSource
from lakefill.transforms.io import ROW_ID, Quarantined
from lakefill.transforms.reads import plan_reads, read_unit
from lakefill.transforms.plan import Impute as ImputeStep
from lakefill.transforms.plan import Runtime, StagePlan, Step, StepOutput, isolate, run_step
from lakefill.transforms.stage import Parts, RunTotals, finalize, reason_counts, write_outputs

__all__ = ["ReadRaw", "RunStep", "RunPlan", "LakefillModelHandler", "Impute", "WriteToLake", "WriteQuarantine",
           "FinalizeRun", "QUARANTINE", "COUNTERS", "NAMESPACE"]

NAMESPACE = "lakefill"
QUARANTINE = "quarantine"
COUNTERS = "counters"


def _quarantine(rows: list[Quarantined]):
    """Quarantine records travel as lists (one element per batch), not one element per row."""
    for reason, n in reason_counts(rows).items():
        beam.metrics.Metrics.counter(NAMESPACE, f"rows_quarantined:{reason}").inc(n)
    return beam.pvalue.TaggedOutput(QUARANTINE, rows)


# -- read ------------------------------------------------------------------------------------

class _PlanReads(beam.DoFn):
    """The input (a file, a folder or a glob) -> read units: consecutive Parquet row groups of
    about ``batch_rows`` rows together (from each file's footer); a CSV or JSON Lines file in
    byte ranges on record boundaries (``plan_reads``)."""

    def __init__(self, batch_rows: int, options: dict | None = None, csv_options=None, min_units: int = 1):
        self.batch_rows, self.options, self.csv_options = batch_rows, dict(options or {}), csv_options
        self.min_units = min_units

    def process(self, path: str):
        yield from plan_reads(path, self.batch_rows, min_units=self.min_units, options=self.options,
                              csv_options=self.csv_options)


class _ReadUnit(beam.DoFn):
    def __init__(self, batch_rows: int, csv_options=None, options: dict | None = None):
        self.batch_rows, self.csv_options, self.options = batch_rows, csv_options, dict(options or {})

    def process(self, unit):
        for chunk in read_unit(unit, self.batch_rows, csv_options=self.csv_options, options=self.options):
            beam.metrics.Metrics.counter(NAMESPACE, "rows_in").inc(chunk.rows_in)
            yield beam.pvalue.TaggedOutput(COUNTERS, {"rows_in": chunk.rows_in})
            if chunk.quarantined:
                yield _quarantine(list(chunk.quarantined))
            for start in range(0, chunk.table.num_rows, self.batch_rows):
                yield chunk.table.slice(start, self.batch_rows)


class ReadRaw(beam.PTransform):
    """CSV / JSON Lines / Parquet -> all-string Arrow batches with ``_lf_row_id``.

    Outputs: main (batches), 'quarantine' (lists of unreadable records), 'counters' (rows_in).
    The file (a local path or a URI on an object store, read through
    ``lakefill.transforms.storage`` with ``options``: no shared disk, no Beam filesystem) is
    planned on a worker into read units: Parquet in units of consecutive row groups of about
    ``batch_rows`` rows (row ids from the row-group offsets), CSV and JSON Lines in byte ranges of
    about 128 MiB on record boundaries (at least ``min_units`` of them where the file allows; row
    ids and line numbers as one reader of the whole file gives them), reshuffled so that workers
    read in parallel.
    """

    def __init__(self, path: str, batch_rows: int = 200_000, csv_options=None, options: dict | None = None,
                 min_units: int = 1):
        super().__init__()
        self.path, self.batch_rows, self.csv_options = (list(path) if isinstance(path, (list, tuple)) else str(path)), batch_rows, csv_options
        self.options = dict(options or {})
        self.min_units = min_units

    def expand(self, pbegin):
        return (pbegin
                | "Input" >> beam.Create([self.path])
                | "Plan" >> beam.ParDo(_PlanReads(self.batch_rows, self.options, self.csv_options, self.min_units))
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_ReadUnit(self.batch_rows, self.csv_options, self.options)).with_outputs(
                    QUARANTINE, COUNTERS, main="main"))


# -- the plan's steps --------------------------------------------------------------------------

def _emit(out: StepOutput):
    """A step's output as the DoFn's outputs: rows (main), quarantined rows, counters (+ metrics)."""
    counters = {k: int(v) for k, v in out.counters.items() if v}
    loads = modelcache.take_loads()  # this process's loads since the last step's output
    if loads:
        counters["model_loads"] = counters.get("model_loads", 0) + loads
    for name, n in counters.items():
        beam.metrics.Metrics.counter(NAMESPACE, name).inc(n)
    if counters:
        yield beam.pvalue.TaggedOutput(COUNTERS, counters)
    if out.quarantined:
        yield _quarantine(out.quarantined)
    if out.table.num_rows:
        yield out.table


class RunStep(beam.DoFn):
    """One step of the plan. Outputs: main (batches), 'quarantine' (lists), 'counters' (dicts).
    A step that uses the model gets the handler's model, loaded once per worker process."""

    def __init__(self, step: Step, handler: "LakefillModelHandler | None" = None):
        self.step, self.handler = step, handler

    def setup(self):
        load = None
        if self.step.uses_model:
            if self.handler is None:
                raise ValueError(f"step {self.step.name!r} uses the model: give RunStep a LakefillModelHandler")
            load = self.handler.load_model  # one model per worker process (LakefillModelHandler.load_model)
        self.rt = Runtime(load)
        self._fitted: tuple | None = None

    def process(self, batch: pa.Table, policy: dict | None = None):
        step = self.step
        if policy is not None:  # the null policy fitted on a worker (a remote launch): this step takes it
            if self._fitted is None or self._fitted[0] is not policy:
                self._fitted = (policy, step.with_policy(policy))
            step = self._fitted[1]
        yield from _emit(run_step(step, batch, self.rt))


class RunPlan(beam.PTransform):
    """Typed or raw batches through every step of the plan, each its own named step of the
    pipeline. Returns {'main': batches, 'quarantine': [lists per step], 'counters': [dicts per step]}."""

    def __init__(self, plan: StagePlan, handler: "LakefillModelHandler", policy=None):
        super().__init__()
        self.plan, self.handler = plan, handler
        self.policy = policy  # a PCollection of one fitted null policy (a remote launch), or None

    def expand(self, batches):
        quarantine, counters = [], []
        for step in self.plan.steps:
            if step.inference:
                out = batches | step.name >> Impute(self.handler.with_step(step))
            else:
                side = ({"policy": beam.pvalue.AsSingleton(self.policy)}
                        if self.policy is not None and hasattr(step, "with_policy") else {})
                out = batches | step.name >> beam.ParDo(RunStep(step, self.handler), **side).with_outputs(
                    QUARANTINE, COUNTERS, main="main")
            batches = out["main"]
            quarantine.append(out[QUARANTINE])
            counters.append(out[COUNTERS])
        return {"main": batches, QUARANTINE: quarantine, COUNTERS: counters}


# -- impute (RunInference) ---------------------------------------------------------------------

class LakefillModelHandler(ModelHandler[pa.Table, pa.Table, LoadedModel]):
    """RunInference handler: examples are Arrow batches, the model a ``LoadedModel``, the work
    is the plan's inference step (``Impute`` by default) on the examples, concatenated.

    ``max_batches``: how many batches (each up to ``batch_size`` rows) RunInference groups into
    one call (``batch_elements_kwargs``). ``device``: auto / cpu / gpu.
    """

    def __init__(self, model_dir: str, schema: dict, *, device: str = "auto", max_batches: int = 4,
                 step: Step | None = None, storage_options: dict | None = None, share: bool = False):
        super().__init__(min_batch_size=1, max_batch_size=max_batches)
        # share: one model per machine, served to every SDK process by Beam's MultiProcessShared
        # (the handler does the sharing itself, so RunInference, the refine step and the failure
        # isolation all reach the same copy; Beam's own large_model would share RunInference's only)
        self.share = share
        self.model_dir, self.schema_dict, self.device = str(model_dir), schema, device
        self.storage_options = dict(storage_options or {})
        self.max_batches = max_batches
        self.step = step or ImputeStep()

    def with_step(self, step: Step) -> "LakefillModelHandler":
        """The same handler (class, model, settings) running ``step``."""
        if step is self.step:
            return self
        other = copy.copy(self)
        other.step = step
        return other

    def load_model(self) -> LoadedModel:
        """The artifact from its folder or URI, checked by its hashes, from the process's model
        cache (``lakefill.transforms.modelcache``: keyed by the artifact's hash, so a retrained
        model is new): shared by RunInference, the refine step and the failure isolation (and
        their threads); with ``share``, one copy per machine (Beam's ``MultiProcessShared``)."""
        source = ModelSource(uri=self.model_dir, options=self.storage_options, schema=self.schema_dict,
                             device=self.device)
        return modelcache.load(source, share=_shared if self.share else None)

    def run_inference(self, batch: Sequence[pa.Table], model: LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        sizes = [t.num_rows for t in batch]
        table = pa.concat_tables(batch, promote_options="permissive") if len(batch) > 1 else batch[0]
        whole = self.step.run(table, Runtime(lambda: model)).table
        out, start = [], 0
        for t, n in zip(batch, sizes):
            out.append(PredictionResult(t, whole.slice(start, n), self.model_dir))
            start += n
        return out

    def get_num_bytes(self, batch: Sequence[pa.Table]) -> int:
        return sum(t.nbytes for t in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


def _shared(load, tag: str) -> LoadedModel:
    """One model per machine, served to every SDK process by Beam's ``MultiProcessShared``."""
    from apache_beam.utils.multi_process_shared import MultiProcessShared

    return MultiProcessShared(load, tag=tag, always_proxy=True).acquire()


class _IsolateFailures(beam.DoFn):
    """A batch that failed in RunInference is halved until the failing rows are alone
    (``lakefill.transforms.plan.isolate``): the rows that impute rejoin the stream; each failing
    row goes to quarantine with the exception text."""

    def __init__(self, handler: LakefillModelHandler):
        self.handler = handler

    def setup(self):
        self.model = self.handler.load_model()

    def process(self, failure):
        failed, _exc = failure
        infer = lambda t: StepOutput(next(iter(self.handler.run_inference([t], self.model))).inference)  # noqa: E731
        for _key, table in failed:
            yield from _emit(isolate(infer, table, self.handler.step.name))


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
            QUARANTINE, COUNTERS, main="main")
        merged = (imputed, isolated.main) | "Rejoin" >> beam.Flatten()
        return {"main": merged, QUARANTINE: isolated[QUARANTINE], COUNTERS: isolated[COUNTERS]}


# -- lake --------------------------------------------------------------------------------------

class _WriteParts(beam.DoFn):
    def __init__(self, table_uri: str, quarantine_uri: str, run_id: str, partition_by: list[str]):
        self.kw = dict(table_uri=table_uri, quarantine_uri=quarantine_uri, run_id=run_id,
                       partition_by=list(partition_by))

    def process(self, element):
        t = time.perf_counter()
        if isinstance(element, pa.Table):
            parts = write_outputs(element, [], **self.kw)
        else:  # a list of quarantine records
            parts = write_outputs(None, element, **self.kw)
        beam.metrics.Metrics.distribution(NAMESPACE, "write_ms").update(int(1000 * (time.perf_counter() - t)))
        yield parts.to_dict()


class WriteToLake(beam.PTransform):
    """Batches -> Parquet files in the Delta table's folder; outputs one ``Parts`` dict per batch.

    Nothing is visible until ``FinalizeRun`` commits the actions in one transaction."""

    def __init__(self, table_uri: str, partition_by: Sequence[str] = (), *, quarantine_uri: str = "", run_id: str = ""):
        super().__init__()
        self.fn = _WriteParts(table_uri, quarantine_uri, run_id, list(partition_by))

    def expand(self, batches):
        return batches | "WriteParts" >> beam.ParDo(self.fn)


class WriteQuarantine(beam.PTransform):
    """Lists of quarantine records -> Parquet parts of the quarantine Delta table (``Parts`` dicts)."""

    def __init__(self, uri: str, run_id: str):
        super().__init__()
        self.fn = _WriteParts("", uri, run_id, [])

    def expand(self, lists):
        return lists | "WriteQuarantineParts" >> beam.ParDo(self.fn)


class FinalizeRun(beam.DoFn):
    """The single last step: sums what the workers wrote and counted (``RunTotals.add``) and
    calls the core ``finalize`` (count check, quarantine-share check, one Delta commit per table
    keyed by the run id, JSON report). A failed check raises, so the pipeline fails and nothing
    is committed to the table."""

    def __init__(self, *, run_id: str, output: str, config: dict, max_quarantine_share: float, mode: str,
                 partition_by: Sequence[str], started: float, steps: Sequence[str] = ()):
        self.kw = dict(run_id=run_id, output=output, config=config, max_quarantine_share=max_quarantine_share,
                       mode=mode, partition_by=list(partition_by))
        self.started, self.steps = started, list(steps)

    def process(self, _, parts, counters):
        totals = RunTotals()
        for p in parts:
            totals.add(Parts.from_dict(p))
        for c in counters:
            totals.add(c)
        done = finalize(totals.sort(), engine="beam", timings={"pipeline": time.time() - self.started},
                        metrics={"steps": self.steps}, **self.kw)
        yield {"report": str(done.report), "counts": done.counts, "committed": done.committed}

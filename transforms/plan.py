"""The stage plan: the stage's steps, in order, on Arrow batches, written once for every engine.

    detect         disguised nulls -> nulls (the fitted policy), cells cast to the schema's types
    validate_pre   the schema's Great Expectations suite before imputation
    impute         the model fills the holes (``Imputer.impute``); a batch that fails is halved
                   until the failing rows are alone, and only they go to quarantine
    refine         reverse training on the rows under the confidence threshold (if ``refine``)
    validate_post  the suite after imputation
    (your steps)   ``stage_plan(..., extra_steps=[...])``: any ``Step``, run by every engine
    finish         the run id column, rows in row-id order, the counters of the rows kept

A step takes a batch and gives a ``StepOutput``: the rows it keeps, the rows it quarantined
(with the reason) and its counters (flat names -> ints: ``disguised_nulls:<column>``,
``cells_imputed``, ``confidence_bin:0.3``, ``validation:pre:rows_failed``, ...), which
``RunTotals.add`` sums for the run report and Beam reports as metrics. The engines only move
batches: the local engine loops over the plan (``run_steps``), Spark runs it in one
``mapInArrow`` from read to write, Beam wraps each step in a DoFn (the impute step in
RunInference). A step holds plain settings only, so a plan pickles to Dataflow workers and
Spark executors; what it builds from them (a GX validator, a fitted policy) is built once per
worker process and thread, and the model comes from the engine (``Runtime.imputer``), loaded
once per worker.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill._drift import CONFIDENCE_SUM, count_batch
from lakefill.schema import TableSchema
from lakefill._arrow import list_value_counts
from lakefill.transforms.detect import DISGUISED, NOT_APPLICABLE, NullPolicy
from lakefill.transforms.impute import CONFIDENCE, IMPUTED, METHOD, Imputer
from lakefill.transforms.modelcache import LoadedModel
from lakefill.transforms.io import ROW_ID, Quarantined
from lakefill.transforms.parse import parse_table
from lakefill.transforms.validate import Validator

__all__ = ["Step", "StepOutput", "Runtime", "StagePlan", "stage_plan", "run_steps", "run_step", "isolate",
           "Detect", "Validate", "Impute", "Refine", "Finish", "RUN_ID", "HIST_BINS", "with_run_id",
           "split_by_confidence", "confidence_histogram", "refined_rows", "cells_imputed", "bin_label"]

RUN_ID = "_lf_run_id"
HIST_BINS = 10


@dataclass
class StepOutput:
    """What a step gives back for one batch."""
    table: pa.Table
    quarantined: list[Quarantined] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)


class Runtime:
    """What an engine gives the steps: the model, from the process's model cache
    (``lakefill.transforms.modelcache``: loaded once per worker, whatever the engine)."""

    def __init__(self, model: "Callable[[], LoadedModel | Imputer] | None" = None):
        self._load, self._model = model, None

    def model(self) -> "LoadedModel":
        """The model, loaded on first use and kept for the runtime's life (a worker's batches);
        a plain ``Imputer`` is taken as it is."""
        if self._load is None:
            raise RuntimeError("this step needs the model, and the engine gave the plan none")
        if self._model is None:
            model = self._load()
            self._model = LoadedModel(model) if isinstance(model, Imputer) else model
        return self._model


_BUILT: dict[tuple, object] = {}  # per worker process and thread: validators, policies, refiners


def _built(key: tuple, build):
    key = key + (threading.get_ident(),)  # a GX context is not shared between threads
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Step:
    """One named step of the plan. Subclasses set ``name`` and implement ``run``.

    ``uses_model``: the step calls ``rt.model()``. ``inference``: the step is the model's
    forward pass (Beam runs it in RunInference). ``isolate``: a batch that raises is halved
    until the failing rows are alone; those go to quarantine with the exception text and the
    rest go on (a row that breaks the model must not fail the run)."""

    name: str = "step"
    uses_model: bool = False
    inference: bool = False
    isolate: bool = False

    def run(self, batch: pa.Table, rt: Runtime) -> StepOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Detect(Step):
    name = "detect"

    def __init__(self, policy: dict, schema: dict, profile: dict | None = None, absent: Sequence[str] = ()):
        self.policy, self.schema, self.profile = policy, schema, profile
        self.absent = list(absent)  # columns that may be missing from a file: null there, "not applicable"
        self._key = ("detect", _digest(policy, schema))

    def with_policy(self, policy: dict) -> "Detect":
        """The same step with another fitted policy (one fitted on a worker, for a remote launch)."""
        return Detect(policy, self.schema, self.profile, self.absent)

    def _policy(self) -> tuple[NullPolicy, TableSchema]:
        def build():
            schema = TableSchema.model_validate(self.schema)
            return NullPolicy.from_dict(self.policy, schema=schema), schema
        return _built(self._key, build)

    def run(self, batch, rt):
        policy, schema = self._policy()
        missing = [c for c in self.absent if c not in batch.column_names]
        for c in missing:  # the job's missing_columns: null: a column this file lacks is null, never imputed
            batch = batch.append_column(c, pa.nulls(batch.num_rows, pa.string()))
        batch, replaced = policy.apply(batch)
        if missing:
            batch = _not_applicable(batch, missing)
        typed, bad = parse_table(batch, schema)
        counters = Counter({f"disguised_nulls:{k}": int(v) for k, v in replaced.items() if v})
        counters.update({f"absent:{c}": batch.num_rows for c in missing})
        if self.profile:  # drift: the observed cells in the model's training bins
            counters.update(count_batch(typed, self.profile))
        return StepOutput(typed, bad, counters)


class Validate(Step):
    """The schema's suite; counters ``validation:<stage>:rows``, ``...:rows_failed``,
    ``...:failed:<expectation(column)>`` and ``...:batches``."""

    def __init__(self, schema: dict, stage: str):
        self.schema, self.stage = schema, stage
        self.name = f"validate_{stage}"
        self._key = ("validate", stage, _digest(schema))

    def run(self, batch, rt):
        validator = _built(self._key, lambda: Validator(TableSchema.model_validate(self.schema), stage=self.stage))
        good, bad = validator.validate(batch)
        prefix = f"validation:{self.stage}:"
        counters = Counter({prefix + "batches": 1, prefix + "rows": batch.num_rows, prefix + "rows_failed": len(bad)})
        counters.update({prefix + "failed:" + k: n for k, n in validator.last_failures.items()})
        return StepOutput(good, bad, counters)


class Impute(Step):
    """``adapted``: fill through the model's adapted networks where it has them (``adapt_rows: all``);
    ``precision``: the forward pass in ``fp32`` or ``bf16`` (``Imputer.impute``)."""

    name = "impute"
    uses_model = inference = isolate = True

    def __init__(self, adapted: bool = False, precision: str = "fp32"):
        self.adapted, self.precision = adapted, precision

    def run(self, batch, rt):
        return StepOutput(rt.model().impute(batch, adapted=self.adapted, precision=self.precision))


class Refine(Step):
    """Reverse training on the batch's rows under ``threshold`` (one call for all of them);
    the other rows pass unchanged. Counter ``rows_reverse_tried``."""

    name = "refine"
    uses_model = True

    def __init__(self, threshold: float, reverse: dict | None = None, adapted_fill: bool = False):
        self.threshold, self.reverse, self.adapted_fill = threshold, dict(reverse or {}), adapted_fill

    def run(self, batch, rt):
        confident, low = split_by_confidence(batch, self.threshold)
        if not low.num_rows:
            return StepOutput(batch)
        # a model adapted to this run's rows (the job's ``adapt``) refines through its adapted networks;
        # rows the adapted networks filled (``adapted_fill``) are refined and checked through them alone
        refined = rt.model().refine(low, reverse=self.reverse or None, adapted_fill=self.adapted_fill)
        return StepOutput(pa.concat_tables([confident, refined]), [],
                          Counter({"rows_reverse_tried": low.num_rows}))


# the finish step's per-column counters, ``written_<label>:<col>``: cells listed in each provenance column
WRITTEN_COUNTS = {"imputed": IMPUTED, "replaced": DISGUISED, "not_applicable": NOT_APPLICABLE}


class Finish(Step):
    """The run id column, rows in row-id order; counters of the rows that go to the table:
    ``cells_imputed``, ``rows_refined``, the confidence histogram (``confidence_bin:<edge>``) and,
    where rows are imputed, ``written_rows`` and per column ``written_imputed:<col>``,
    ``written_replaced:<col>`` (disguised nulls) and ``written_not_applicable:<col>``: the
    report's per-column shares, counted here so that it never reads the run's table back."""

    name = "finish"

    def __init__(self, run_id: str, columns: Sequence[str] = ()):
        self.run_id = run_id
        self.columns = list(columns)  # the schema's columns: the table's order, whatever the file's

    def run(self, batch, rt):
        counters = Counter()
        if CONFIDENCE in batch.column_names:
            counters.update({bin_label(k): n for k, n in enumerate(confidence_histogram(batch)) if n})
            if batch.num_rows:  # the run's mean confidence, against the training rows' (drift)
                counters[CONFIDENCE_SUM] = int(round((pc.sum(batch.column(CONFIDENCE)).as_py() or 0.0) * 1e6))
        if IMPUTED in batch.column_names:
            counters["cells_imputed"] = cells_imputed(batch)
            counters["written_rows"] = batch.num_rows
            for label, name in WRITTEN_COUNTS.items():
                if name in batch.column_names:
                    counters.update({f"written_{label}:{col}": n for col, n in list_value_counts(batch.column(name)).items()})
        if METHOD in batch.column_names:
            counters["rows_refined"] = refined_rows(batch)
        return StepOutput(in_schema_order(with_run_id(batch, self.run_id), self.columns).sort_by(ROW_ID), [], +counters)


@dataclass
class StagePlan:
    """The steps in order; ``names`` for reports and tests."""
    steps: list[Step]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]


def stage_plan(*, schema: TableSchema | dict, policy: NullPolicy | dict, run_id: str, refine: bool = True,
               confidence_threshold: float = 0.5, reverse: dict | None = None,
               extra_steps: Sequence[Step] = (), adapted_fill: bool = False, impute: bool = True,
               precision: str = "fp32", profile: dict | None = None, absent: Sequence[str] = ()) -> StagePlan:
    """The stage's plan. ``extra_steps`` run after post-validation, before ``finish``, on every engine.
    ``impute`` false: detect, pre-validate, (your steps), finish: a validation run with no model.
    ``adapted_fill``: every row is filled through the model's adapted networks where it has them."""
    schema_d = schema.model_dump(by_alias=True) if isinstance(schema, TableSchema) else dict(schema)
    policy_d = policy.to_dict() if isinstance(policy, NullPolicy) else dict(policy)
    steps: list[Step] = [Detect(policy_d, schema_d, profile if impute else None, absent), Validate(schema_d, "pre")]
    if impute:  # without it (a validation run) nothing is filled, so nothing is refined or post-validated
        steps.append(Impute(adapted_fill, precision))
        if refine:
            steps.append(Refine(confidence_threshold, reverse, adapted_fill))
        steps.append(Validate(schema_d, "post"))
    steps += list(extra_steps)
    steps.append(Finish(run_id, [c["name"] for c in schema_d.get("columns", [])]))
    names = [s.name for s in steps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"the plan's step names must be unique (they name Beam steps and report timings); "
                         f"{dup} appear more than once in {names}")
    return StagePlan(steps)


def isolate(fn: Callable[[pa.Table], StepOutput], batch: pa.Table, stage: str) -> StepOutput:
    """``fn`` on ``batch``; if it raises, the batch is halved until the failing rows are alone:
    the rows that pass are kept, each failing row goes to quarantine with the exception text."""
    try:
        return fn(batch)
    except Exception as err:  # noqa: BLE001 - the exception text is the quarantine reason
        if batch.num_rows <= 1:
            bad = []
            for row in batch.to_pylist():
                record = {k: v for k, v in row.items() if not k.startswith("_lf_") or k == ROW_ID}
                bad.append(Quarantined(int(row[ROW_ID]), f"{stage}: {type(err).__name__}: {err}", stage,
                                       json.dumps(record, default=str)))
            return StepOutput(batch.slice(0, 0), bad)
    half = batch.num_rows // 2
    parts = [isolate(fn, batch.slice(0, half), stage), isolate(fn, batch.slice(half), stage)]
    kept = [p.table for p in parts if p.table.num_rows]
    table = pa.concat_tables(kept, promote_options="permissive") if kept else parts[0].table
    return StepOutput(table, parts[0].quarantined + parts[1].quarantined,
                      Counter(parts[0].counters) + Counter(parts[1].counters))


def run_step(step: Step, batch: pa.Table, rt: Runtime) -> StepOutput:
    """One step on one batch (halving a failing batch if the step says ``isolate``)."""
    if step.isolate:
        return isolate(lambda t: step.run(t, rt), batch, step.name)
    return step.run(batch, rt)


def run_steps(steps: Sequence[Step], batch: pa.Table, rt: Runtime, *, timings: dict | None = None) -> StepOutput:
    """All ``steps`` on one batch, one after the other (a batch that empties stops early):
    the rows kept, every step's quarantined rows, the counters summed. ``timings`` (if given)
    gets each step's seconds added under its name."""
    quarantined: list[Quarantined] = []
    counters: Counter = Counter()
    for step in steps:
        if not batch.num_rows:
            break
        t = time.perf_counter()
        out = run_step(step, batch, rt)
        if timings is not None:
            timings[step.name] = timings.get(step.name, 0.0) + time.perf_counter() - t
        batch = out.table
        quarantined += out.quarantined
        counters.update(out.counters)
    return StepOutput(batch, quarantined, counters)


# -- helpers the steps and the run report share --------------------------------------------------

def _not_applicable(batch: pa.Table, columns: list[str]) -> pa.Table:
    """``columns`` added to every row's ``_lf_not_applicable`` list."""
    lists = [(row or []) + columns for row in batch.column(NOT_APPLICABLE).to_pylist()]
    i = batch.column_names.index(NOT_APPLICABLE)
    return batch.set_column(i, NOT_APPLICABLE, pa.array(lists, batch.schema.field(NOT_APPLICABLE).type))


def in_schema_order(batch: pa.Table, columns: Sequence[str]) -> pa.Table:
    """The schema's columns first, in its order; then the file's other columns as they came;
    then the provenance columns (``_lf_*``)."""
    names = batch.column_names
    first = [c for c in columns if c in names and not c.startswith("_lf_")]
    rest = [c for c in names if c not in first and not c.startswith("_lf_")]
    order = first + rest + [c for c in names if c.startswith("_lf_")]
    return batch if order == names else batch.select(order)


def with_run_id(batch: pa.Table, run_id: str) -> pa.Table:
    if RUN_ID in batch.column_names:
        batch = batch.drop_columns([RUN_ID])
    return batch.append_column(RUN_ID, pa.array([run_id] * batch.num_rows, pa.string()))


def split_by_confidence(batch: pa.Table, threshold: float) -> tuple[pa.Table, pa.Table]:
    """(rows at or above the threshold, rows under it)."""
    low = pc.less(batch.column(CONFIDENCE), threshold)
    return batch.filter(pc.invert(low)), batch.filter(low)


def confidence_histogram(batch: pa.Table) -> list[int]:
    conf = batch.column(CONFIDENCE).to_numpy(zero_copy_only=False) if batch.num_rows else np.zeros(0)
    return np.histogram(conf, bins=HIST_BINS, range=(0, 1))[0].tolist()


def bin_label(k: int) -> str:
    """The counter of the confidence histogram's bin ``k`` (named by its lower edge)."""
    return f"confidence_bin:{k / HIST_BINS:.1f}"


def refined_rows(batch: pa.Table) -> int:
    return int(pc.sum(pc.equal(batch.column(METHOD), "reverse")).as_py() or 0) if batch.num_rows else 0


def cells_imputed(batch: pa.Table) -> int:
    return int(pc.sum(pc.list_value_length(batch.column(IMPUTED))).as_py() or 0) if batch.num_rows else 0

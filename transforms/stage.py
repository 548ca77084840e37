"""What the engines' workers produce, summed, and the end of a run: the code every engine shares.

    write_outputs : a batch's rows (and its quarantined rows) as Parquet parts of the table (and
                    of the quarantine table); their Delta AddActions, nothing visible yet
    RunTotals     : counters and AddActions summed over the workers (``add``)
    finalize      : the count check, the quarantine and table commits (one Delta transaction
                    each, once per run id), the quarantine-share check and the JSON run report

The steps themselves, on Arrow batches, are the stage plan (``lakefill.transforms.plan``).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake.transaction import AddAction

from lakefill.errors import LakefillError
from lakefill.transforms.io import Quarantined, quarantine_table
from lakefill.transforms.ingest import planned_counter
from lakefill.transforms.lake import (action_from_dict, action_to_dict, commit, maintain, part_path, runs_since_compaction,
                                     write_part)
from lakefill.transforms.plan import HIST_BINS, RUN_ID, StepOutput, bin_label, with_run_id
from lakefill.transforms.storage import Location, as_location, redact

__all__ = ["RUN_ID", "RowsLost", "QuarantineExceeded", "reason_key", "reason_counts", "quarantine_batch", "Parts",
           "write_outputs", "RunTotals", "finalize", "HIST_BINS"]


class QuarantineExceeded(LakefillError):
    """More rows went to quarantine than the job allows."""


class RowsLost(LakefillError):
    """rows_in != rows_written + rows_quarantined."""


def quarantine_batch(rows: list[Quarantined], run_id: str) -> pa.Table:
    return with_run_id(quarantine_table(rows), run_id)


def reason_key(reason: str) -> str:
    """The kind of a quarantine reason: 'type', 'expect_column_values_to_be_between', 'ragged row', ..."""
    part = reason.split("; ", 1)[0]
    if part.startswith("line "):
        part = part.split(": ", 1)[1] if ": " in part else part
    return part.split(":", 1)[0].split("(", 1)[0].strip()


def reason_counts(rows: list[Quarantined]) -> Counter:
    return Counter(reason_key(q.reason) for q in rows)


@dataclass
class Parts:
    """The Parquet parts one worker wrote for one batch (not visible until ``finalize`` commits
    them), with the counters of its quarantined rows (``rows_quarantined:<reason>``)."""
    table_actions: list[AddAction] = field(default_factory=list)
    quarantine_actions: list[AddAction] = field(default_factory=list)
    schema: pa.Schema | None = None
    counters: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        """JSON-able (Beam elements, Spark rows)."""
        return {"table": [action_to_dict(a) for a in self.table_actions],
                "quarantine": [action_to_dict(a) for a in self.quarantine_actions],
                "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode() if self.schema else None,
                "counters": dict(self.counters)}

    @classmethod
    def from_dict(cls, d: dict) -> "Parts":
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(d["schema"]))) if d.get("schema") else None
        return cls([action_from_dict(a) for a in d["table"]], [action_from_dict(a) for a in d["quarantine"]],
                   schema, Counter(d.get("counters") or {}))


def write_outputs(batch: pa.Table | None, quarantined: list[Quarantined], *, table_uri: "str | Path | Location",
                  quarantine_uri: "str | Path | Location", run_id: str, partition_by: list[str] = ()) -> Parts:
    """A batch's kept rows as parts of the table, its quarantined rows as parts of the quarantine."""
    parts = Parts()
    if batch is not None and batch.num_rows:
        parts.table_actions = write_part(batch, table_uri, partition_by=list(partition_by))
        parts.schema = batch.schema
    if quarantined:
        parts.quarantine_actions = write_part(quarantine_batch(quarantined, run_id), quarantine_uri)
        parts.counters.update({f"rows_quarantined:{k}": n for k, n in reason_counts(quarantined).items()})
    return parts


@dataclass
class RunTotals:
    """What the workers of a run produced, summed up for the final step (``add`` in any order)."""
    counters: Counter = field(default_factory=Counter)
    table_actions: list[AddAction] = field(default_factory=list)
    quarantine_actions: list[AddAction] = field(default_factory=list)
    table_schema: pa.Schema | None = None

    def add(self, item: "Parts | StepOutput | Counter | dict") -> "RunTotals":
        if isinstance(item, Parts):
            self.table_actions += item.table_actions
            self.quarantine_actions += item.quarantine_actions
            if self.table_schema is None and item.table_actions:
                self.table_schema = item.schema
            self.counters.update(item.counters)
        elif isinstance(item, StepOutput):
            self.counters.update(item.counters)
        else:
            self.counters.update(item)
        return self

    def sort(self) -> "RunTotals":
        """Actions in path order: the same commit whatever order the workers finished in."""
        self.table_actions.sort(key=lambda a: a.path)
        self.quarantine_actions.sort(key=lambda a: a.path)
        return self

    def _prefixed(self, prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: v for k, v in sorted(self.counters.items()) if k.startswith(prefix) and v}

    @property
    def rows_in(self) -> int:
        return self.counters["rows_in"]

    @property
    def rows_written(self) -> int:
        return _rows(self.table_actions)

    @property
    def rows_quarantined(self) -> int:
        return _rows(self.quarantine_actions)

    @property
    def disguised(self) -> dict[str, int]:
        return self._prefixed("disguised_nulls:")

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        return self._prefixed("rows_quarantined:")

    @property
    def confidence_hist(self) -> list[int]:
        return [self.counters[bin_label(k)] for k in range(HIST_BINS)]

    @property
    def validation(self) -> dict:
        out = {}
        for stage in ("pre", "post"):
            p = f"validation:{stage}:"
            if any(k.startswith(p) for k in self.counters):
                out[stage] = {"batches": self.counters[p + "batches"], "rows": self.counters[p + "rows"],
                              "rows_failed": self.counters[p + "rows_failed"],
                              "failures_by_expectation": self._prefixed(p + "failed:")}
        return out


def _rows(actions: list[AddAction]) -> int:
    return sum(json.loads(a.stats)["numRecords"] for a in actions)


@dataclass
class Finalized:
    counts: dict
    committed: bool
    report: Location
    table_version: int | None
    metrics: dict = field(default_factory=dict)


def finalize(totals: RunTotals, *, run_id: str, engine: str, output: "str | Path | Location", config: dict,
             max_quarantine_share: float, mode: str, partition_by: list[str], timings: dict | None = None,
             metrics: dict | None = None, complete: "Callable[[dict, Location], None] | None" = None,
             log=print) -> Finalized:
    """The end of a run, on one process (the driver, or one Beam worker holding all the actions).

    Refuses to commit when rows went missing or the quarantine is over its share (then neither
    table gets the run, the uncommitted Parquet parts are removed, and the quarantined rows are
    kept in the report folder as ``quarantine.parquet``); commits the result table, then the
    quarantine table, each in one transaction keyed by the run id, so that a retry of a run whose
    second commit failed completes it and writes nothing twice. The report's ``metrics`` are the
    run's counters (the same names on every engine) and the engine's own ``metrics``.

    The report is built here as one dict; after the commits ``complete(report, report_dir)`` adds
    what the launcher knows (findings, drift, retraining, Data Docs, report.html), and report.json
    is written once. A refused run's report is written as it stands when the run is refused.
    """
    out = as_location(output)
    table_uri, quarantine_uri = out / "table", out / "quarantine"
    report_dir = out / "reports" / run_id
    report_dir.mkdir()
    written, quarantined = totals.rows_written, totals.rows_quarantined
    counts = {"rows_in": totals.rows_in, "rows_written": written, "rows_quarantined": quarantined,
              "quarantined_by_reason": dict(sorted(totals.quarantined_by_reason.items())),
              "disguised_nulls_replaced": dict(sorted(totals.disguised.items())),
              "cells_imputed": totals.counters["cells_imputed"], "rows_refined": totals.counters["rows_refined"]}
    metrics = {**dict(sorted((+totals.counters).items())), **(metrics or {})}  # the counters above 0

    def report(committed: bool, version=None, already: bool = False, done: bool = False) -> Location:
        built = build_report(report_dir, run_id=run_id, engine=engine, config=config, counts=counts,
                             hist=totals.confidence_hist, committed=committed, table_version=version,
                             timings=timings or {}, metrics=metrics, validation=totals.validation,
                             already_committed=already)
        if done and complete is not None:
            complete(built, report_dir)
        return write_report(report_dir, built)

    if totals.rows_in != written + quarantined:
        report(False)
        _remove(table_uri, totals.table_actions)
        _remove(quarantine_uri, totals.quarantine_actions)
        raise RowsLost(f"run {run_id}: rows_in ({totals.rows_in}) != rows_written ({written}) + rows_quarantined "
                       f"({quarantined}); nothing was committed to {table_uri} or {quarantine_uri}")
    share = quarantined / max(totals.rows_in, 1)
    if share > max_quarantine_share:
        rejected = _keep_rejected(quarantine_uri, totals.quarantine_actions, report_dir / "quarantine.parquet")
        _remove(table_uri, totals.table_actions)
        _remove(quarantine_uri, totals.quarantine_actions)
        report(False)
        raise QuarantineExceeded(f"{quarantined} of {totals.rows_in} rows ({share:.1%}) went to quarantine, over the "
                                 f"max_quarantine_share of {max_quarantine_share:.1%}; nothing was committed to "
                                 f"{table_uri} or {quarantine_uri}. The quarantined rows and their reasons are in "
                                 f"{rejected}.")
    # the table first, then the quarantine, both keyed by the run id: a run is in both or, if a
    # commit fails, the retry with the same run id completes the missing half and writes nothing twice
    result = None
    if totals.table_schema is not None:  # else every row was quarantined, and the share allows it
        try:
            result = commit(table_uri, totals.table_actions, totals.table_schema, run_id=run_id, mode=mode,
                            partition_by=partition_by, add_columns=config.get("schema_evolution") == "add_columns",
                            absent_ok=config.get("missing_columns") == "null",
                            files_counter=planned_counter(out, run_id) if config.get("incremental") else False,
                            metadata=_model_metadata(config))
        except Exception:
            _remove(table_uri, totals.table_actions)
            _remove(quarantine_uri, totals.quarantine_actions)
            report(False)
            raise
        if result.schema_change:  # what the commit changed in the table's schema, as the job allowed
            counts["schema_change"] = result.schema_change
        if not result.committed:
            log(f"run {run_id} was already committed to {table_uri}: nothing written twice")
            _remove(table_uri, totals.table_actions)
    q_schema = quarantine_batch([], run_id).schema
    try:
        q_result = commit(quarantine_uri, totals.quarantine_actions, q_schema, run_id=run_id, mode="append")
    except Exception as err:
        _remove(quarantine_uri, totals.quarantine_actions)
        report(result is not None and result.committed, result.version if result else None)
        raise LakefillError(f"run {run_id}: the table {table_uri} has the run but committing its {quarantined} "
                            f"quarantined rows to {quarantine_uri} failed ({type(err).__name__}: {err}); re-run the "
                            f"job with the same run id to complete it (nothing is written twice)") from err
    if not q_result.committed:
        _remove(quarantine_uri, totals.quarantine_actions)
    if result is None:
        path = report(False, done=True)
        return Finalized(counts, False, path, None, metrics)
    every = int(config.get("compact_every") or 0)
    if result.committed and every and runs_since_compaction(table_uri) >= every:
        metrics["compaction"] = _compact(table_uri, quarantine_uri, log)
    path = report(result.committed, result.version, already=not result.committed, done=True)
    return Finalized(counts, result.committed, path, result.version, metrics)


def _model_metadata(config: dict) -> dict[str, str]:
    """The model version that fills the run's rows, for the commit's metadata: its folder (a
    version is never overwritten) and its artifact hash."""
    if not config.get("impute", True) or not config.get("model"):
        return {}
    model = as_location(config["model"], config.get("storage_options") or {})
    try:
        sha = json.loads((model / "manifest.json").read_text()).get("artifact_sha256", "")
    except Exception:  # noqa: BLE001 - a model that cannot be read again here is named without its hash
        sha = ""
    return {"lakefill.model": str(model), "lakefill.model_sha256": sha}


def _compact(table_uri: Location, quarantine_uri: Location, log) -> dict:
    """The job's ``compact_every``: both tables compacted after a committed run; a failure is
    reported, never the run's (its rows are committed)."""
    done = {}
    for name, uri in (("table", table_uri), ("quarantine", quarantine_uri)):
        try:
            done[name] = maintain(uri, compact=True)
        except Exception as err:  # noqa: BLE001 - upkeep must not fail a committed run
            done[name] = {"error": f"{type(err).__name__}: {err}"}
            log(f"compaction of {uri} failed ({type(err).__name__}: {err}); the run is committed; "
                f"`lakefill maintain` compacts it later")
    return done


def _keep_rejected(quarantine_uri: Location, actions: list[AddAction], out: Location) -> Location:
    """The quarantined rows of a run that commits nothing, kept as one Parquet file beside its report."""
    parts = [pq.read_table(pa.BufferReader(part_path(quarantine_uri, a).read_bytes())) for a in actions]
    buf = pa.BufferOutputStream()
    pq.write_table(pa.concat_tables(parts) if parts else quarantine_batch([], ""), buf)
    return out.write_bytes(buf.getvalue().to_pybytes())


def _remove(root: Location, actions: list[AddAction]) -> None:
    for a in actions:
        part_path(root, a).remove()


def write_report(report_dir: "Path | Location", report: dict) -> Location:
    """The run's report.json: the one place it is written."""
    return (as_location(report_dir) / "report.json").write_text(json.dumps(report, indent=2, default=str))


def read_report(report_dir: "Path | Location") -> dict:
    return json.loads((as_location(report_dir) / "report.json").read_text())


def build_report(report_dir: "Path | Location", *, run_id: str, engine: str, config: dict, counts: dict, hist: list[int],
                 committed: bool, table_version: int | None, timings: dict, metrics: dict, validation: dict,
                 already_committed: bool = False) -> dict:
    """The run's report as the engine knows it at the end of the run (``finalize``)."""
    report_dir = as_location(report_dir)
    out = report_dir.parent.parent
    config = {**config, "storage_options": redact(config.get("storage_options"))} if "storage_options" in config else config
    edges = np.linspace(0, 1, HIST_BINS + 1).round(6).tolist()
    report = {"run_id": run_id, "engine": engine, "input": config.get("input"), "model": config.get("model"),
              "committed": committed, "already_committed": already_committed, "table_version": table_version,
              "counts": counts, "config": config,
              "confidence_histogram": {"edges": edges, "counts": list(hist)},
              "confidence_threshold": config.get("confidence_threshold"), "validation": validation,
              "metrics": metrics, "timings_seconds": {k: round(v, 4) for k, v in timings.items()},
              "table": str(out / "table"), "quarantine": str(out / "quarantine"),
              "data_docs": str(report_dir / "data_docs")}
    return report

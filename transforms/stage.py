"""The stage's steps on one Arrow batch, and the end of a run: the code every engine shares.

The local job, the Beam DoFns and the Spark functions call these; they only move batches.

    clean    : disguised nulls -> typed columns -> pre-validation (bad rows to quarantine)
    impute   : ``Imputer.impute`` (lakefill.transforms.impute)
    split    : confident rows / rows under the confidence threshold (these get ``Imputer.refine``)
    finish   : post-validation, the run id column, rows in row-id order
    finalize : the count check, the quarantine and table commits (one Delta transaction each,
               once per run id), the quarantine-share check and the JSON run report
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake.transaction import AddAction

from lakefill.errors import LakefillError
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.impute import CONFIDENCE, METHOD
from lakefill.transforms.io import ROW_ID, Quarantined, quarantine_table
from lakefill.transforms.lake import commit, part_path
from lakefill.transforms.parse import parse_table
from lakefill.schema import TableSchema
from lakefill.transforms.validate import Validator

__all__ = ["RUN_ID", "RowsLost", "QuarantineExceeded", "Cleaned", "clean", "split_by_confidence", "finish",
           "confidence_histogram", "refined_rows", "reason_key", "reason_counts", "with_run_id", "quarantine_batch",
           "RunTotals", "finalize", "HIST_BINS"]

RUN_ID = "_lf_run_id"
HIST_BINS = 10


class QuarantineExceeded(LakefillError):
    """More rows went to quarantine than the job allows."""


class RowsLost(LakefillError):
    """rows_in != rows_written + rows_quarantined."""


@dataclass
class Cleaned:
    table: pa.Table
    quarantined: list[Quarantined]
    disguised: dict[str, int]  # disguised nulls replaced per column


def clean(batch: pa.Table, policy: NullPolicy, schema: TableSchema, pre: Validator) -> Cleaned:
    """Raw string batch -> typed, pre-validated rows; rows that fail go to quarantine with the reason."""
    batch, disguised = policy.apply(batch)
    batch, bad = parse_table(batch, schema)
    batch, bad_pre = pre.validate(batch)
    return Cleaned(batch, bad + bad_pre, {k: int(v) for k, v in disguised.items() if v})


def split_by_confidence(batch: pa.Table, threshold: float) -> tuple[pa.Table, pa.Table]:
    """(rows at or above the threshold, rows under it)."""
    low = pc.less(batch.column(CONFIDENCE), threshold)
    return batch.filter(pc.invert(low)), batch.filter(low)


def with_run_id(batch: pa.Table, run_id: str) -> pa.Table:
    if RUN_ID in batch.column_names:
        batch = batch.drop_columns([RUN_ID])
    return batch.append_column(RUN_ID, pa.array([run_id] * batch.num_rows, pa.string()))


def finish(batch: pa.Table, post: Validator, run_id: str) -> tuple[pa.Table, list[Quarantined]]:
    """Post-validation, then the run id column; rows in row-id order."""
    batch, bad = post.validate(batch)
    return with_run_id(batch, run_id).sort_by(ROW_ID), bad


def quarantine_batch(rows: list[Quarantined], run_id: str) -> pa.Table:
    return with_run_id(quarantine_table(rows), run_id)


def confidence_histogram(batch: pa.Table) -> list[int]:
    conf = batch.column(CONFIDENCE).to_numpy(zero_copy_only=False) if batch.num_rows else np.zeros(0)
    return np.histogram(conf, bins=HIST_BINS, range=(0, 1))[0].tolist()


def refined_rows(batch: pa.Table) -> int:
    return int(pc.sum(pc.equal(batch.column(METHOD), "reverse")).as_py() or 0) if batch.num_rows else 0


def reason_key(reason: str) -> str:
    """The kind of a quarantine reason: 'type', 'expect_column_values_to_be_between', 'ragged row', ..."""
    part = reason.split("; ", 1)[0]
    if part.startswith("line "):
        part = part.split(": ", 1)[1] if ": " in part else part
    return part.split(":", 1)[0].split("(", 1)[0].strip()


def reason_counts(rows: list[Quarantined]) -> Counter:
    return Counter(reason_key(q.reason) for q in rows)


@dataclass
class RunTotals:
    """What the workers of a run produced, summed up for the final step."""
    rows_in: int = 0
    table_actions: list[AddAction] = field(default_factory=list)
    table_schema: pa.Schema | None = None
    quarantine_actions: list[AddAction] = field(default_factory=list)
    quarantined_by_reason: Counter = field(default_factory=Counter)
    disguised: Counter = field(default_factory=Counter)
    rows_refined: int = 0
    confidence_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)

    @property
    def rows_written(self) -> int:
        return _rows(self.table_actions)

    @property
    def rows_quarantined(self) -> int:
        return _rows(self.quarantine_actions)


def _rows(actions: list[AddAction]) -> int:
    return sum(json.loads(a.stats)["numRecords"] for a in actions)


@dataclass
class Finalized:
    counts: dict
    committed: bool
    report: Path
    table_version: int | None


def finalize(totals: RunTotals, *, run_id: str, engine: str, output: str | Path, config: dict,
             max_quarantine_share: float, mode: str, partition_by: list[str], timings: dict | None = None,
             metrics: dict | None = None, validation: dict | None = None, log=print) -> Finalized:
    """The end of a run, on one process (the driver, or one Beam worker holding all the actions).

    Refuses to commit when rows went missing or the quarantine is over its share (then neither
    table gets the run, the uncommitted Parquet parts are removed, and the quarantined rows are
    kept in the report folder as ``quarantine.parquet``); commits the result table, then the
    quarantine table, each in one transaction keyed by the run id, so that a retry of a run whose
    second commit failed completes it and writes nothing twice.
    """
    out = Path(output)
    table_uri, quarantine_uri = out / "table", out / "quarantine"
    report_dir = out / "reports" / run_id
    report_dir.mkdir(parents=True, exist_ok=True)
    written, quarantined = totals.rows_written, totals.rows_quarantined
    counts = {"rows_in": totals.rows_in, "rows_written": written, "rows_quarantined": quarantined,
              "quarantined_by_reason": dict(sorted(totals.quarantined_by_reason.items())),
              "disguised_nulls_replaced": dict(sorted(totals.disguised.items())),
              "cells_imputed": (metrics or {}).get("cells_imputed"), "rows_refined": totals.rows_refined}
    counts = {k: v for k, v in counts.items() if v is not None}

    def report(committed: bool, version=None, already: bool = False) -> Path:
        return write_report(report_dir, run_id=run_id, engine=engine, config=config, counts=counts,
                            hist=totals.confidence_hist, committed=committed, table_version=version,
                            timings=timings or {}, metrics=metrics or {}, validation=validation or {},
                            already_committed=already)

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
                            partition_by=partition_by)
        except Exception:
            _remove(table_uri, totals.table_actions)
            _remove(quarantine_uri, totals.quarantine_actions)
            report(False)
            raise
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
        report(False)
        return Finalized(counts, False, report_dir / "report.json", None)
    path = report(result.committed, result.version, already=not result.committed)
    return Finalized(counts, result.committed, path, result.version)


def _keep_rejected(quarantine_uri: Path, actions: list[AddAction], out: Path) -> Path:
    """The quarantined rows of a run that commits nothing, kept as one Parquet file beside its report."""
    parts = [pq.read_table(part_path(quarantine_uri, a)) for a in actions]
    pq.write_table(pa.concat_tables(parts) if parts else quarantine_batch([], ""), out)
    return out


def _remove(root: Path, actions: list[AddAction]) -> None:
    for a in actions:
        part_path(root, a).unlink(missing_ok=True)


def write_report(report_dir: Path, *, run_id: str, engine: str, config: dict, counts: dict, hist: list[int],
                 committed: bool, table_version: int | None, timings: dict, metrics: dict, validation: dict,
                 already_committed: bool = False) -> Path:
    edges = np.linspace(0, 1, HIST_BINS + 1).round(6).tolist()
    report = {"run_id": run_id, "engine": engine, "input": config.get("input"), "model": config.get("model"),
              "committed": committed, "already_committed": already_committed, "table_version": table_version,
              "counts": counts, "config": config,
              "confidence_histogram": {"edges": edges, "counts": list(hist)},
              "confidence_threshold": config.get("confidence_threshold"), "validation": validation,
              "metrics": metrics, "timings_seconds": {k: round(v, 4) for k, v in timings.items()},
              "table": str(Path(report_dir).parents[1] / "table"),
              "quarantine": str(Path(report_dir).parents[1] / "quarantine"),
              "data_docs": str(Path(report_dir) / "data_docs")}
    path = Path(report_dir) / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path

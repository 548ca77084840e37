"""The whole stage in one process on the core transforms (``lakefill run --engine local``).

read -> detect -> type -> validate (pre) -> impute -> refine (low confidence) -> validate
(post) -> lake commit (+ quarantine table, run report, GX Data Docs). The Beam and Spark jobs
run the same core functions on their workers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.artifact import ModelArtifact, load_artifact, save_artifact
from models.autoencoder import AEConfig
from models.train import fit_model
from pipelines.config import JobConfig
from transforms._errors import ConfigError, LakefillError
from transforms.detect import NullPolicy
from transforms.impute import CONFIDENCE, METHOD, Imputer
from transforms.io import ROW_ID, Quarantined, quarantine_table, read_raw
from transforms.lake import commit, write_part
from transforms.parse import detect_and_parse, parse_table
from transforms.schema import TableSchema, infer_schema, load_schema
from transforms.validate import Validator

__all__ = ["RunOutcome", "prepare", "run_local", "RUN_ID", "QuarantineExceeded", "RowsLost"]

RUN_ID = "_lf_run_id"


class QuarantineExceeded(LakefillError):
    """More rows went to quarantine than the job allows."""


class RowsLost(LakefillError):
    """rows_in != rows_written + rows_quarantined."""


@dataclass
class Prepared:
    config: JobConfig
    schema: TableSchema
    artifact: ModelArtifact
    run_id: str


@dataclass
class RunOutcome:
    run_id: str
    table: str
    quarantine: str
    report: str
    counts: dict
    committed: bool
    metrics: dict = field(default_factory=dict)


def _default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("run-%Y%m%dT%H%M%SZ")


def prepare(config: JobConfig, *, log=print) -> Prepared:
    """Everything that can be refused is refused here, before any row is processed."""
    if not Path(config.input).exists():
        raise ConfigError(f"input {config.input} does not exist")
    raw_sample = None
    if config.schema_path:
        schema = load_schema(config.schema_path)
    else:
        raw_sample = read_raw(config.input, limit=config.sample_rows)
        policy = NullPolicy(sample_rows=config.sample_rows).fit(raw_sample.table)
        schema = infer_schema(raw_sample.table, name=Path(config.input).stem, policy=policy)
    model_dir = Path(config.model)
    if not (model_dir / "manifest.json").exists():
        if not config.train_if_missing:
            raise ConfigError(f"model {model_dir} does not exist; train one with `lakefill train` or set train_if_missing: true")
        log(f"training a model into {model_dir} (train_if_missing)")
        train_to_dir(config.input, schema, model_dir, sample_rows=config.sample_rows)
    artifact = load_artifact(model_dir, schema=schema)
    return Prepared(config, schema, artifact, config.run_id or _default_run_id())


def train_to_dir(input_path: str, schema: TableSchema, out_dir: Path, *, sample_rows: int = 200_000,
                 config: AEConfig = AEConfig(), progress: bool = False) -> Path:
    typed = detect_and_parse(read_raw(input_path), schema, sample_rows=sample_rows)
    good, _ = Validator(schema, stage="pre").validate(typed.table)
    fitted = fit_model(good, schema, config=config, progress=progress)
    return save_artifact(out_dir, model=fitted.model, codec=fitted.codec, schema=schema, policy=typed.policy.to_dict(),
                         config=config, metrics=fitted.metrics, error_reference=fitted.result.error_reference)


def run_local(config: JobConfig, *, log=print) -> RunOutcome:
    prep = prepare(config, log=log)
    cfg, schema, run_id = prep.config, prep.schema, prep.run_id
    out = Path(cfg.output)
    table_uri, quarantine_uri = out / "table", out / "quarantine"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    raw = read_raw(cfg.input)
    timings["read"] = time.perf_counter() - t0
    quarantined: list[Quarantined] = list(raw.quarantined)
    t = time.perf_counter()
    policy = NullPolicy(schema=schema, sample_rows=cfg.sample_rows).fit(raw.table)
    timings["fit_policy"] = time.perf_counter() - t
    pre, post = Validator(schema, stage="pre"), Validator(schema, stage="post")
    imputer = Imputer(prep.artifact)
    disguised: Counter = Counter()
    actions, written, refined, confidences, docs_sample = [], 0, 0, [], None
    out_schema = None
    for start in range(0, raw.table.num_rows, cfg.batch_size):
        batch = raw.table.slice(start, cfg.batch_size)
        t = time.perf_counter()
        batch, counts = policy.apply(batch)
        disguised.update(counts)
        batch, bad = parse_table(batch, schema)
        quarantined += bad
        batch, bad = pre.validate(batch)
        quarantined += bad
        timings["detect_validate"] = timings.get("detect_validate", 0) + time.perf_counter() - t
        if docs_sample is None:
            docs_sample = batch.slice(0, 10_000)
        t = time.perf_counter()
        batch = imputer.impute(batch)
        timings["impute"] = timings.get("impute", 0) + time.perf_counter() - t
        t = time.perf_counter()
        if cfg.refine and batch.num_rows:
            low = pc.less(batch.column(CONFIDENCE), cfg.confidence_threshold)
            if pc.any(low).as_py():
                refined_rows = imputer.refine(batch.filter(low))
                refined += int(pc.sum(pc.equal(refined_rows.column(METHOD), "reverse")).as_py() or 0)
                batch = pa.concat_tables([batch.filter(pc.invert(low)), refined_rows])
        timings["refine"] = timings.get("refine", 0) + time.perf_counter() - t
        batch, bad = post.validate(batch)
        quarantined += bad
        confidences.append(batch.column(CONFIDENCE).to_numpy())
        batch = batch.append_column(RUN_ID, pa.array([run_id] * batch.num_rows, pa.string()))
        batch = batch.sort_by(ROW_ID)
        out_schema = batch.schema
        t = time.perf_counter()
        actions += write_part(batch, table_uri, partition_by=cfg.partition_by)
        timings["write"] = timings.get("write", 0) + time.perf_counter() - t
        written += batch.num_rows
    rows_in = raw.rows_in
    counts = {"rows_in": rows_in, "rows_written": written, "rows_quarantined": len(quarantined),
              "quarantined_by_reason": _reasons(quarantined), "disguised_nulls_replaced": dict(disguised),
              "rows_refined": refined}
    if rows_in != written + len(quarantined):
        raise RowsLost(f"rows_in ({rows_in}) != rows_written ({written}) + rows_quarantined ({len(quarantined)})")
    share = len(quarantined) / max(rows_in, 1)
    q = quarantine_table(quarantined)
    q = q.append_column(RUN_ID, pa.array([run_id] * q.num_rows, pa.string()))
    q_actions = write_part(q, quarantine_uri)
    q_result = commit(quarantine_uri, q_actions, q.schema, run_id=run_id, mode="append")
    report_dir = out / "reports" / run_id
    report_dir.mkdir(parents=True, exist_ok=True)
    if share > cfg.max_quarantine_share:
        _write_report(report_dir, run_id, cfg, counts, timings, confidences, committed=False)
        raise QuarantineExceeded(f"{len(quarantined)} of {rows_in} rows ({share:.1%}) went to quarantine, over the "
                                 f"max_quarantine_share of {cfg.max_quarantine_share:.1%}; nothing was committed to "
                                 f"{table_uri}. See {quarantine_uri} for the rows and their reasons.")
    t = time.perf_counter()
    result = commit(table_uri, actions, out_schema if out_schema is not None else pa.schema([]), run_id=run_id,
                    mode=cfg.mode, partition_by=cfg.partition_by)
    timings["commit"] = time.perf_counter() - t
    if not result.committed:
        log(f"run {run_id} was already committed to {table_uri}: nothing written twice")
        _remove_uncommitted(table_uri, actions)
    if not q_result.committed:
        _remove_uncommitted(quarantine_uri, q_actions)
    timings["total"] = time.perf_counter() - t0
    if docs_sample is not None and docs_sample.num_rows:
        pre.write_data_docs(docs_sample, report_dir / "data_docs")
    report = _write_report(report_dir, run_id, cfg, counts, timings, confidences, committed=result.committed,
                           validation={"pre": pre.summary.to_dict(), "post": post.summary.to_dict()})
    return RunOutcome(run_id, str(table_uri), str(quarantine_uri), str(report), counts, result.committed)


def _remove_uncommitted(root: Path, actions) -> None:
    for a in actions:
        (Path(root) / a.path).unlink(missing_ok=True)


def _reasons(rows: list[Quarantined]) -> dict:
    c = Counter()
    for q in rows:
        for part in q.reason.split("; "):
            head = part.split(":", 1)[0] if not part.startswith("line ") else part.split(": ", 2)[1].split(":")[0]
            c[head] += 1
    return dict(sorted(c.items()))


def _write_report(report_dir: Path, run_id: str, cfg: JobConfig, counts: dict, timings: dict, confidences,
                  *, committed: bool, validation: dict | None = None) -> Path:
    conf = np.concatenate(confidences) if confidences else np.zeros(0)
    hist, edges = np.histogram(conf, bins=10, range=(0, 1))
    report = {"run_id": run_id, "engine": "local", "input": cfg.input, "model": cfg.model, "committed": committed,
              "counts": counts, "confidence_histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
              "confidence_threshold": cfg.confidence_threshold, "validation": validation or {},
              "timings_seconds": {k: round(v, 4) for k, v in timings.items()},
              "data_docs": str(report_dir / "data_docs")}
    path = report_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    return path

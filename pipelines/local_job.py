"""The whole stage in one process on the core transforms (``lakefill run --engine local``).

read -> detect -> type -> validate (pre) -> impute -> refine (low confidence) -> validate
(post) -> lake commit (+ quarantine table, run report, GX Data Docs). The Beam and Spark jobs
run the same core functions on their workers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lakefill.models.artifact import ModelArtifact, load_artifact, save_artifact
from lakefill.models.autoencoder import AEConfig
from lakefill.models.train import fit_model
from lakefill.pipelines.config import JobConfig
from lakefill.pipelines.report import render_report
from lakefill.errors import ConfigError, InputError
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.impute import IMPUTED, Imputer, resolve_device
from lakefill.transforms.io import ROW_ID, RawRead, iter_raw, read_raw
from lakefill.transforms.lake import check_writable, write_part
from lakefill.transforms.parse import detect_and_parse, parse_table
from lakefill.schema import TableSchema, infer_schema, load_schema
from lakefill.transforms.stage import (RUN_ID, QuarantineExceeded, RowsLost, RunTotals, clean, confidence_histogram, finalize,
                              finish, quarantine_batch, reason_counts, refined_rows, split_by_confidence)
from lakefill.transforms.validate import Validator, write_data_docs

__all__ = ["RunOutcome", "Prepared", "prepare", "run_local", "RUN_ID", "QuarantineExceeded", "RowsLost",
           "write_docs", "record_detection", "config_summary"]


@dataclass
class Prepared:
    """What a run needs before it touches a row: refused here if anything is wrong."""
    config: JobConfig
    schema: TableSchema
    artifact: ModelArtifact
    policy: NullPolicy
    run_id: str
    sample: RawRead  # the first sample_rows records: the policy is fitted on them, Data Docs show them


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
    """Everything that can be refused is refused here, before any row is processed.

    The null policy is fitted on the first ``sample_rows`` records, once, so that every engine
    (and every worker) applies the same policy.
    """
    if "://" not in config.input and not Path(config.input).exists():
        raise ConfigError(f"input {config.input} does not exist")
    run_id = config.run_id or _default_run_id()
    try:  # mode 'error' and a table that has other runs: refused now, not after all the work
        check_writable(Path(config.output) / "table", run_id=run_id, mode=config.mode)
    except FileExistsError as err:
        raise ConfigError(str(err)) from err
    sample = read_raw(config.input, limit=config.sample_rows, csv_options=config.csv_options)
    if config.schema_path:
        schema = load_schema(config.schema_path)
    else:
        inferred = NullPolicy(sample_rows=config.sample_rows).fit(sample.table)
        schema = infer_schema(sample.table, name=Path(config.input).stem, policy=inferred)
    schema.check_columns([c for c in sample.table.column_names if c != ROW_ID], source=config.input)
    policy = NullPolicy(schema=schema, sample_rows=config.sample_rows).fit(sample.table)
    model_dir = Path(config.model)
    if not (model_dir / "manifest.json").exists():
        if not config.train_if_missing:
            raise ConfigError(f"model {model_dir} does not exist; train one with `lakefill train` or set train_if_missing: true")
        log(f"training a model into {model_dir} (train_if_missing)")
        train_to_dir(config.input, schema, model_dir, sample_rows=config.sample_rows, csv_options=config.csv_options)
    artifact = load_artifact(model_dir, schema=schema)
    resolve_device(config.device)
    return Prepared(config, schema, artifact, policy, run_id, sample)


def train_to_dir(input_path: str, schema: TableSchema, out_dir: Path, *, sample_rows: int = 200_000,
                 config: AEConfig = AEConfig(), progress: bool = False, csv_options=None) -> Path:
    raw = read_raw(input_path, csv_options=csv_options)
    typed = detect_and_parse(raw, schema, sample_rows=sample_rows)
    good, bad = Validator(schema, stage="pre").validate(typed.table)
    quarantined = typed.quarantined + bad

    def why() -> str:
        top = reason_counts(quarantined).most_common(3)
        return (f"{len(quarantined)} of the {raw.rows_in} rows of {input_path} were quarantined"
                + (" (top reasons: " + "; ".join(f"{k}: {n} rows" for k, n in top) + ")" if top else ""))

    if good.num_rows == 0:
        raise InputError(f"nothing to train on: {why()}. Check the schema against the file "
                         f"(`lakefill validate {input_path} --schema SCHEMA` lists the rows and reasons)")
    try:
        fitted = fit_model(good, schema, config=config, progress=progress)
    except ValueError as err:
        if "no observed values" not in str(err):
            raise
        raise InputError(f"{err} ({good.num_rows} rows passed validation; {why()})") from err
    return save_artifact(out_dir, model=fitted.model, codec=fitted.codec, schema=schema, policy=typed.policy.to_dict(),
                         config=config, metrics=fitted.metrics, error_reference=fitted.result.error_reference)


def config_summary(cfg: JobConfig) -> dict:
    return cfg.model_dump(by_alias=True)


def record_detection(prep: Prepared, report_dir: Path) -> None:
    """Add the run's disguised-null findings (value, detector, kind, share, suspect, evidence) and
    the schema's ``max_imputed_share`` per imputed column to its report.json (``report.html``
    and ``lakefill report --check`` read them)."""
    path = Path(report_dir) / "report.json"
    report = json.loads(path.read_text())
    report["detection"] = prep.policy.to_dict()
    if prep.sample.dialect is not None:  # what the CSV reader used (sniffed or from the job's csv:)
        report["csv_dialect"] = prep.sample.dialect
    report["max_imputed_share"] = {c.name: c.max_imputed_share for c in prep.schema.columns if c.impute}
    path.write_text(json.dumps(report, indent=2, default=str))


def write_docs(prep: Prepared, report_dir: Path, rows: int = 10_000) -> Path | None:
    """GX Data Docs of the pre-validation suite on the run's first ``rows`` records, as typed
    before the suite filters them: the expectations' failures (and the rows that broke them)
    show, under the table's name and the run id."""
    applied, _ = prep.policy.apply(prep.sample.table.slice(0, rows))
    typed, _ = parse_table(applied, prep.schema)
    if typed.num_rows == 0:
        return None
    return write_data_docs(prep.schema, "pre", typed, Path(report_dir) / "data_docs", run_id=prep.run_id,
                           asset=prep.schema.name)


def run_local(config: JobConfig, *, log=print) -> RunOutcome:
    """The whole stage in this process, batch by batch (``batch_size`` rows)."""
    prep = prepare(config, log=log)
    cfg, schema, run_id = prep.config, prep.schema, prep.run_id
    out = Path(cfg.output)
    table_uri, quarantine_uri = out / "table", out / "quarantine"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre, post = Validator(schema, stage="pre"), Validator(schema, stage="post")
    imputer = Imputer(prep.artifact, device=cfg.device)
    totals = RunTotals()
    cells_imputed = 0

    def timed(name, fn, *args, **kwargs):
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        return result

    for chunk in iter_raw(cfg.input, batch_rows=cfg.batch_size, csv_options=cfg.csv_options):
        totals.rows_in += chunk.rows_in
        quarantined = list(chunk.quarantined)
        cleaned = timed("detect_validate", clean, chunk.table, prep.policy, schema, pre)
        quarantined += cleaned.quarantined
        totals.disguised.update(cleaned.disguised)
        batch = timed("impute", imputer.impute, cleaned.table)
        cells_imputed += int(pc.sum(pc.list_value_length(batch.column(IMPUTED))).as_py() or 0) if batch.num_rows else 0
        if cfg.refine and batch.num_rows:
            confident, low = split_by_confidence(batch, cfg.confidence_threshold)
            if low.num_rows:
                low = timed("refine", imputer.refine, low)
                totals.rows_refined += refined_rows(low)
                batch = pa.concat_tables([confident, low])
        batch, bad = finish(batch, post, run_id)
        quarantined += bad
        hist = confidence_histogram(batch)
        totals.confidence_hist = [a + b for a, b in zip(totals.confidence_hist, hist)]
        if batch.num_rows:
            totals.table_schema = batch.schema
            totals.table_actions += timed("write", write_part, batch, table_uri, partition_by=cfg.partition_by)
        if quarantined:
            totals.quarantined_by_reason.update(reason_counts(quarantined))
            totals.quarantine_actions += write_part(quarantine_batch(quarantined, run_id), quarantine_uri)
    timings["total"] = time.perf_counter() - t0
    report_dir = out / "reports" / run_id
    done = finalize(totals, run_id=run_id, engine="local", output=out, config=config_summary(cfg),
                    max_quarantine_share=cfg.max_quarantine_share, mode=cfg.mode, partition_by=cfg.partition_by,
                    timings=timings, metrics={"cells_imputed": cells_imputed}, log=log,
                    validation={"pre": pre.summary.to_dict(), "post": post.summary.to_dict()})
    record_detection(prep, report_dir)
    write_docs(prep, report_dir)
    render_report(report_dir)
    return RunOutcome(run_id, str(table_uri), str(quarantine_uri), str(done.report), done.counts, done.committed)

"""The launcher: what every engine does before the first row and after the last.

    prepare      refuses a bad config, schema, model or output before any work; infers the
                 schema and trains the model when the job says so; fits the null policy on
                 the first ``sample_rows`` records (once, for every engine and worker)
    plan_for     the stage plan (``lakefill.transforms.plan``) of a prepared run
    complete_report  what the launcher adds to the run report after the commit (findings, drift,
                 retraining, column shares, GX Data Docs, ``report.html``), before ``finalize``
                 writes report.json once (``completer``); ``end_of_run`` for a report a Beam
                 worker wrote

The engines (``local_job``, ``beam_pipeline``, ``spark_job``) run the plan in between.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from lakefill._drift import confidence_profile, confidence_report, drift_of, drift_report, profile_table
from lakefill.errors import ConfigError, InputError, NothingNew, SchemaError
from lakefill.models.adapt import AdaptConfig
from lakefill.models.artifact import MANIFEST, ModelArtifact, save_artifact, unsaved_artifact
from lakefill.models.config import AEConfig
from lakefill.models.training import fit_model
from lakefill.pipelines import versions
from lakefill.pipelines.config import JobConfig
from lakefill.pipelines.report import column_shares_of_run, render_report
from lakefill.schema import TableSchema, infer_schema, load_schema
from lakefill.transforms import io as _io  # workers' reads (a remote launcher reads nothing: tests patch ``read_raw``)
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.impute import CONFIDENCE, Imputer, load_model_at, resolve_device, save_model_to
from lakefill.transforms.ingest import IngestPlan, plan_files, record_files
from lakefill.transforms.io import ROW_ID, RawRead, input_files, read_raw
from lakefill.transforms.lake import SchemaChangeRefused, check_schema_change, check_writable, schema_change, table_schema
from lakefill.transforms.parse import detect_and_parse, parse_table
from lakefill.transforms.plan import Detect, Runtime, StagePlan, Step, in_schema_order, stage_plan
from lakefill.transforms.stage import read_report, reason_counts, write_report
from lakefill.transforms.sample import TRAIN_ROWS, read_sample
from lakefill.transforms.storage import Location, as_location
from lakefill.transforms.validate import Validator, write_data_docs

__all__ = ["Prepared", "RunOutcome", "prepare", "fit_policy", "train_for_job", "plan_for", "train_to_dir", "load_schema_at", "config_summary", "record_detection",
           "write_docs", "complete_report", "completer", "end_of_run", "worker_policy", "worker_end_of_run"]


@dataclass
class Prepared:
    """What a run needs before it touches a row: refused here if anything is wrong."""
    config: JobConfig
    schema: TableSchema
    artifact: "ModelArtifact | None"  # None: the job's impute is false (no model)
    policy: "NullPolicy | None"  # None: a remote launch, fitted on a worker (``fit_policy``)
    run_id: str
    sample: "RawRead | None"  # the first sample_rows records: the policy is fitted on them, Data Docs show them
    adaptation: dict | None = None  # the job's ``adapt`` (or ``on_drift``): what it did (None: not asked)
    ingest: "IngestPlan | None" = None  # the job's ``incremental``: the files this run takes
    drift_check: dict | None = None  # ``on_drift``: the run's first records against the training rows, and the action
    base_model: str | None = None  # the version of the job's model the run resolved, before any adaptation


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


def check_trainer(config: JobConfig, engine: str) -> None:
    """A job's ``training.trainer`` that its engine cannot run, refused in one line before any work."""
    if config.training.trainer == "torch_distributor" and engine != "spark":
        raise ConfigError(f"training.trainer: torch_distributor trains on Spark's executors, and this job runs on "
                          f"{engine}: run it with --engine spark, or set training.trainer: local")


def prepare(config: JobConfig, *, log=print, remote: bool = False, sampler=None, networks=None,
            engine: str = "local") -> Prepared:
    """Everything that can be refused is refused here, before any row is processed.

    Every path of the job may be a URI on an object store (``storage_options`` in the job):
    the input's and the output's buckets are reached first, so that a missing bucket, refused
    credentials or an output that holds something other than a Delta table stop the run with
    an error that names the URI. The null policy is fitted on the first ``sample_rows``
    records, once, so that every engine (and every worker) applies the same policy.

    ``remote``: this process only submits the job to machines elsewhere (a Dataflow launch): it
    lists the input but never reads a record of it, and never trains. The job must name its
    schema; the null policy is fitted on a worker (``fit_policy``), and a missing model is
    refused with the command that trains it as a job on the engine.

    ``sampler``, ``networks``: the engine's ways to draw the training sample and to train the
    networks (Spark's executors), for ``train_if_missing``; ``engine`` names it for the checks.
    """
    check_trainer(config, engine)
    source, out = config.location(config.input), config.out
    source.check_reachable()
    if not any(c in source.uri for c in "*?[") and not source.exists():
        raise ConfigError(f"input {source} does not exist")
    input_files(source)  # a folder or a glob with no data file: refused, naming it
    out.check_reachable()
    run_id = config.run_id or _default_run_id()
    ingest = None
    if config.incremental:  # only the files no committed run of this output took, recorded in the table
        ingest = plan_files(source, out, run_id=run_id, changed_files=config.changed_files,
                            options=config.storage_options)
        if not ingest.files:
            raise NothingNew(f"no new file in {source} since the last run of {out} ({ingest.listed} listed, "
                             f"{ingest.taken_before} taken before"
                             + (f", {len(ingest.skipped)} changed and skipped" if ingest.skipped else "") + "): nothing to do")
        config = config.model_copy(update={"files": [f.uri for f in ingest.files]})
        log(f"incremental: {len(ingest.files)} new file(s) of {ingest.listed} in {source}")
    try:  # mode 'error' and a table that has other runs: refused now, not after all the work
        check_writable(out / "table", run_id=run_id, mode=config.mode)
        check_writable(out / "quarantine", run_id=run_id, mode="append")
    except FileExistsError as err:
        raise ConfigError(str(err)) from err
    if remote:
        if not config.schema_path:
            raise ConfigError("a remote launch (Dataflow) does not read the input, so it cannot infer a schema: "
                              "give the job a schema file (`lakefill schema infer INPUT > schema.yaml` writes one)")
        sample, policy = None, None
        schema = load_schema_at(config.location(config.schema_path))
    else:
        sample = read_raw(config.reads, options=config.storage_options, limit=config.sample_rows,
                          csv_options=config.csv_options)
        schema, policy = fit_policy(config, sample)
        sample = with_absent(config, schema, sample)
    if sample is not None:  # the table's schema changes only as the job allows (Delta's rule), decided now
        check_columns_against_table(config, schema, policy, sample)
    if ingest is not None:  # written last before the work; it counts once the run is committed
        record_files(out, run_id, ingest)
    if not config.impute:  # a validation run: no model is read or trained
        return Prepared(config, schema, None, policy, run_id, sample, None, ingest=ingest)
    model = config.location(config.model)
    if not (model / "manifest.json").exists():
        if not config.train_if_missing:
            raise ConfigError(f"model {model} does not exist; train one with `lakefill train` or set train_if_missing: true")
        if remote:
            raise ConfigError(f"model {model} does not exist, and a remote launch does not train on the launcher "
                              f"machine; train it first as a job on the engine (the launch with task=train, or "
                              f"`lakefill train --job JOB.yaml`)")
        log(f"training a model into {model} (train_if_missing)")
        _train(config, schema, log=log, sampler=sampler, networks=networks)
    newest = versions.resolve(model)  # the newest accepted version of the job's model
    if newest.uri != model.uri:
        log(f"model: {newest}, the newest accepted version of {model}")
        model = newest
        config = config.model_copy(update={"model": str(newest)})
    artifact = load_model_at(model, schema=schema)
    resolve_device(config.device)
    adaptation = drift = None
    check = config.on_drift != "none" and bool(artifact.profile)
    # the run's first records, detected and parsed as the stage will: read by the drift check and the adaptation
    rows = run_rows(schema, policy, sample) if not remote and (check or config.adapt) else None
    if check and rows is not None:
        drift = check_drift(config, schema, artifact, rows)
    drifted = bool(drift and drift["drifted"])
    # the adapted networks fill something: the side stage's rows (refine) or every row (adapt_rows: all, or a drifted
    # run with on_drift: adapt_all)
    fills = config.refine or config.adapt_rows == "all" or (drifted and config.on_drift == "adapt_all")
    if fills and (config.adapt or drifted):
        if remote:
            raise ConfigError("adapt: true fine-tunes the model on the run's first rows, and a remote launch does not "
                              "read them (a Dataflow launch must not train on the launcher machine); run the job with "
                              "adapt: false, or adapt on the Direct runner, Spark or the local engine")
        if drifted:
            log(f"drift: {', '.join(drift['drifted'])} moved from the model's training rows (on_drift: "
                f"{config.on_drift}): the networks are adapted to this run")
        artifact, adaptation = adapt_to_run(config, schema, artifact, rows, run_id, log=log)
        if adaptation.get("model"):  # every engine loads the new version (the report names it as the run's model)
            update = {"model": adaptation["model"]}
            if drifted and config.on_drift == "adapt_all":  # a drifted run: every row through the adapted networks
                update["adapt_rows"] = "all"
            config = config.model_copy(update=update)
        if drifted:
            adaptation["trigger"] = f"on_drift: {config.on_drift}"
    if drift is not None:
        drift["action"] = _drift_action(config, drifted, adaptation)
    return Prepared(config, schema, artifact, policy, run_id, sample, adaptation, ingest=ingest, drift_check=drift,
                    base_model=str(model))


def run_rows(schema: TableSchema, policy: NullPolicy, sample: RawRead) -> pa.Table:
    """The run's first ``sample_rows`` records detected and parsed as the stage will."""
    applied, _ = policy.apply(sample.table)
    typed, _ = parse_table(applied, schema)
    return typed


def check_drift(config: JobConfig, schema: TableSchema, artifact: ModelArtifact, rows: pa.Table) -> dict:
    """The run's first records (``run_rows``) against the model's training rows, per profiled
    column (``lakefill._drift``, the same measures and thresholds as the run report's drift).
    Returns the columns that drifted and the distances."""
    report, drifted = drift_of(artifact.profile, rows, {c.name: c.drift_threshold for c in schema.columns})
    return {"on_drift": config.on_drift, "rows": rows.num_rows, "drifted": drifted,
            "distances": {c: d["distance"] for c, d in report.items()}}


def _drift_action(config: JobConfig, drifted: bool, adaptation: dict | None) -> str:
    """What ``on_drift`` did with the run, for its report."""
    if not drifted:
        return "none: no column drifted"
    if not (adaptation and adaptation.get("used")):
        return f"{config.on_drift}: the model is kept ({(adaptation or {}).get('reason', 'not adapted')})"
    if config.adapt_rows == "all":
        return f"{config.on_drift}: every row filled by the adapted networks"
    return f"{config.on_drift}: the side stage refines through the adapted networks"


def run_columns(schema: TableSchema, policy: NullPolicy, sample: RawRead) -> pa.Schema:
    """The columns this run writes, typed and in the table's order (the schema's, then the
    file's others; provenance columns left out), worked out on an empty slice of the sample."""
    rt = Runtime(lambda: None)
    typed = Detect(policy.to_dict(), schema.model_dump(by_alias=True)).run(sample.table.slice(0, 0), rt).table
    typed = in_schema_order(typed, schema.names)
    return pa.schema([f for f in typed.schema if not f.name.startswith("_lf_")])


def passthrough_columns(schema: TableSchema, columns: pa.Schema) -> list[str]:
    """The run's columns the model was not trained on: written as they came."""
    trained = {c.name for c in schema.columns if c.type != "passthrough"}
    return [f.name for f in columns if f.name not in trained]


def check_columns_against_table(config: JobConfig, schema: TableSchema, policy: NullPolicy, sample: RawRead) -> None:
    """Refuse, before any work, a run whose columns would change the output table's schema in
    a way the job did not opt into (``schema_evolution``, ``missing_columns``); one line naming
    the columns (``lakefill.transforms.lake.check_schema_change``)."""
    table = config.out / "table"
    change = schema_change(table_schema(table), run_columns(schema, policy, sample))
    nullable = {c.name: c.nullable for c in schema.columns}
    try:
        check_schema_change(change, table=str(table), add_columns=config.schema_evolution == "add_columns",
                            absent_ok=config.missing_columns == "null", nullable=nullable)
    except SchemaChangeRefused as err:
        raise ConfigError(f"{err} (input {config.location(config.input)})") from err


def fit_policy(config: JobConfig, sample: RawRead) -> tuple[TableSchema, NullPolicy]:
    """The run's schema (the job's file, or inferred from ``sample``) and its null policy fitted
    on ``sample``, the first ``sample_rows`` records. The launcher calls it, or a worker when the
    launch is remote."""
    source = config.location(config.input)
    if config.schema_path:
        schema = load_schema_at(config.location(config.schema_path))
    else:
        inferred = NullPolicy(sample_rows=config.sample_rows).fit(sample.table)
        files = input_files(source)
        name = files[0].stem if len(files) == 1 else (source.parent if "*" in source.uri else source).name
        schema = infer_schema(sample.table, name=name, policy=inferred)
    sample = with_absent(config, schema, sample)  # missing_columns: null: fitted (and run) with the column all null
    present = [c for c in sample.table.column_names if c != ROW_ID]
    try:
        schema.check_columns(present, source=str(source))
    except SchemaError as err:
        if config.missing_columns != "error":
            raise
        raise SchemaError(f"{err}; or, where a column the schema marks nullable may be absent from a file, set "
                          f"missing_columns: null (its cells null, never imputed)") from err
    return schema, NullPolicy(schema=schema, sample_rows=config.sample_rows).fit(sample.table)


def with_absent(config: JobConfig, schema: TableSchema, sample: RawRead) -> RawRead:
    """The sample with the schema's columns it lacks as null columns (missing_columns: null)."""
    missing = [n for n in absent_columns(config, schema) if n not in sample.table.column_names]
    return dataclasses.replace(sample, table=_with_nulls(sample.table, missing)) if missing else sample


def absent_columns(config: JobConfig, schema: TableSchema) -> list[str]:
    """The schema's columns a file may lack (its cells null, "not applicable"): the nullable
    ones, when the job says missing_columns: null."""
    return [c.name for c in schema.columns if c.nullable] if config.missing_columns == "null" else []


def _with_nulls(table: pa.Table, columns: list[str]) -> pa.Table:
    for c in columns:
        table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
    return table


def _train(config: JobConfig, schema: TableSchema, log=print, sampler=None, networks=None) -> None:
    """The job's model trained on a sample of its input into its ``model`` folder (``training:``);
    ``sampler``: the engine's (Spark's executors draw it), else one streaming pass here;
    ``networks``: the engine's network trainer (``training.trainer``), else this process."""
    train_to_dir(config.location(config.input), schema, config.location(config.model), sample_rows=config.sample_rows,
                 csv_options=config.csv_options, config=config.ae_config(), train_rows=config.training.train_rows,
                 log=log, sampler=sampler, networks=networks)


def train_for_job(config: JobConfig, *, log=print, sampler=None, networks=None, engine: str = "local") -> dict:
    """The job's model, trained if it is missing: the engines' training jobs (``--task train``:
    a Beam pipeline's worker, the Spark driver). Returns what it did."""
    check_trainer(config, engine)
    model = config.location(config.model)
    if (model / MANIFEST).exists():
        log(f"model {model} is there: nothing to train")
        return {"model": str(model), "trained": False}
    source = config.location(config.input)
    source.check_reachable()
    schema, _ = fit_policy(config, read_raw(source, limit=config.sample_rows, csv_options=config.csv_options))
    log(f"training a model into {model}")
    _train(config, schema, log=log, sampler=sampler, networks=networks)
    return {"model": str(model), "trained": True}


def adapt_to_run(config: JobConfig, schema: TableSchema, artifact: ModelArtifact, rows: pa.Table, run_id: str, *,
                 log=print) -> tuple[ModelArtifact, dict]:
    """The job's ``adapt``: the model's networks fine-tuned on the run's first records (``rows``:
    ``run_rows``, detected and parsed as the stage will; ``lakefill.models.adapt``). If the check rows
    say the adapted networks predict better, the model is written as a new version beside the
    job's model, ``<model>.adapted-<run_id>`` (never over an existing folder), and the run's
    refine step uses it; otherwise the run uses the job's model. A rerun of the run (the same
    run id, the same base model: a retried daily run) takes the version its first try wrote;
    a version of another base model is refused. Returns (the artifact the run uses, the
    adaptation's report: ``model`` names the new version when one was written)."""
    target = config.location(config.model)
    target = target.parent / f"{target.name}.adapted-{run_id}"
    if (target / MANIFEST).exists():
        there = load_model_at(target, schema=schema)
        if (there.adaptation or {}).get("base_sha256") != artifact.digest:
            raise ConfigError(f"{target} already holds a model adapted from another model for this run id; "
                              "adaptation never overwrites one: give the run another run_id or remove it")
        log(f"adapt: {target} was written for this run id from this model: the run uses it again")
        return there, {**there.adaptation, "model": str(target), "reused": True}
    adapted, report = Imputer(artifact).adapt(rows, AdaptConfig())
    if not report["used"]:
        log(f"adapt: the model is kept ({report.get('reason')})")
        return artifact, report
    report["base_sha256"] = artifact.digest  # the model it was adapted from: a rerun of the run takes it again
    save_model_to(target, model=artifact.model, codec=artifact.codec, schema=artifact.schema, policy=artifact.policy,
                  config=artifact.config, metrics=artifact.metrics, error_reference=artifact.error_reference,
                  adapted=adapted, adaptation=report, profile=artifact.profile,
                  training_confidence=artifact.training_confidence)
    log(f"adapt: networks fine-tuned on {report['rows_fitted']} rows (check loss {report['check_loss_before']:.4g} -> "
        f"{report['check_loss_after']:.4g}); the run refines with {target}")
    report["model"] = str(target)
    return load_model_at(target, schema=schema), report


def load_schema_at(loc: Location) -> TableSchema:
    return load_schema(loc.local_path if loc.is_local else loc)  # the same checks and messages as a local file


def train_to_dir(input_path: "str | Location", schema: TableSchema, out_dir: "Path | Location", *,
                 sample_rows: int = 200_000, config: AEConfig = AEConfig(), progress: bool = False,
                 csv_options=None, train_rows: int = TRAIN_ROWS, log=None, sampler=None,
                 networks=None) -> "Path | Location":
    """Train a model on a sample of at most ``train_rows`` rows of ``input_path``, drawn
    uniformly from the whole input with ``config.random_state`` (``lakefill.transforms.sample``),
    and write it to ``out_dir`` (a folder, local or on an object store: written there directly).
    The model's metrics record the sample (``training_sample``)."""
    out = as_location(out_dir)
    raw, typed, good, quarantined, info = training_rows(input_path, schema, sample_rows=sample_rows,
                                                        csv_options=csv_options, train_rows=train_rows,
                                                        seed=config.random_state, log=log, sampler=sampler)

    def why() -> str:
        top = reason_counts(quarantined).most_common(3)
        return (f"{len(quarantined)} of the {raw.rows_in} rows sampled from {input_path} were quarantined"
                + (" (top reasons: " + "; ".join(f"{k}: {n} rows" for k, n in top) + ")" if top else ""))

    if good.num_rows == 0:
        raise InputError(f"nothing to train on: {why()}. Check the schema against the file "
                         f"(`lakefill validate {input_path} --schema SCHEMA` lists the rows and reasons)")
    try:
        # progress: a bar on a terminal, else a line every 30 s in the job's log (an Airflow or spark-submit log)
        fitted = fit_model(good, schema, config=config, progress=progress or log is not None, log=log, networks=networks)
    except ValueError as err:
        if "no observed values" not in str(err):
            raise
        raise InputError(f"{err} ({good.num_rows} rows passed validation; {why()})") from err
    save_trained(out, fitted, schema, typed.policy.to_dict(), config, good, sample=info)
    return out.local_path if out.is_local else out


def training_rows(source, schema: TableSchema, *, sample_rows: int, csv_options=None, options: dict | None = None,
                  train_rows: int = TRAIN_ROWS, seed: int = 0, log=None, sampler=None):
    """What a model trains on: the training sample of ``source`` (``read_sample``: at most
    ``train_rows`` rows drawn uniformly from the whole input, streamed), its disguised nulls
    replaced and typed, and pre-validated. Returns (raw sample, typed, the rows that pass, the
    quarantined, ``SampleInfo``). ``sampler``: an engine's ``read_sample`` (Spark's ``sample_rows``)."""
    raw, info = (sampler or read_sample)(source, train_rows=train_rows, seed=seed, csv_options=csv_options,
                                         options=options, log=log)
    typed = detect_and_parse(raw, schema, sample_rows=sample_rows)
    good, bad = Validator(schema, stage="pre").validate(typed.table)
    return raw, typed, good, typed.quarantined + bad, info


def save_trained(folder: "Path | Location", fitted, schema: TableSchema, policy: dict | None, config: AEConfig,
                 rows: pa.Table, limit: int = 20_000, sample=None):
    """A fitted model written to ``folder`` (local or a ``Location``) with what runs compare themselves with: the
    profile of the ``rows`` it was trained on and its confidence on (the first ``limit`` of) them,
    filling their own missing cells (``lakefill._drift``)."""
    filled = Imputer(unsaved_artifact(fitted, schema, config), device="cpu").impute(rows.slice(0, limit))
    return save_artifact(as_location(folder), model=fitted.model, codec=fitted.codec, schema=schema, policy=policy, config=config,
                         metrics={**fitted.metrics, **({"training_sample": sample.to_dict()} if sample else {})},
                         error_reference=fitted.result.error_reference, profile=profile_table(rows, schema),
                         training_confidence=confidence_profile(filled.column(CONFIDENCE).to_numpy(zero_copy_only=False)))


def config_summary(cfg: JobConfig) -> dict:
    """The job's settings for the run report (``write_report`` masks the storage options' secrets)."""
    return cfg.model_dump(by_alias=True)


def record_detection(prep: Prepared, report: dict) -> None:
    """Add the run's disguised-null findings (value, detector, kind, share, suspect, evidence) and
    the schema's ``max_imputed_share`` per imputed column to its report (``report.html`` and
    ``lakefill report --check`` read them)."""
    report["detection"] = prep.policy.to_dict()
    if prep.sample.dialect is not None:  # what the CSV reader used (sniffed or from the job's csv:)
        report["csv_dialect"] = prep.sample.dialect
    report["max_imputed_share"] = {c.name: c.max_imputed_share for c in prep.schema.columns if c.impute}
    if prep.sample is not None and prep.policy is not None:  # written as they came: the model was not trained on them
        report["passthrough_columns"] = passthrough_columns(prep.schema, run_columns(prep.schema, prep.policy, prep.sample))
    if prep.adaptation is not None:
        report["adaptation"] = prep.adaptation
    if prep.drift_check is not None:
        report["drift_check"] = prep.drift_check
    if prep.ingest is not None:
        report["incremental"] = prep.ingest.to_dict()
    absent = {k.split(":", 1)[1]: v for k, v in (report.get("metrics") or {}).items() if k.startswith("absent:")}
    if absent:  # missing_columns: null: rows of files that lacked a column of the schema
        report["absent_columns"] = absent
    if prep.artifact is not None and prep.artifact.profile:  # the run's observed cells against the training rows'
        thresholds = {c.name: c.drift_threshold for c in prep.schema.columns}
        report["drift"] = drift_report(prep.artifact.profile, report.get("metrics") or {}, thresholds)
    if prep.artifact is not None and prep.artifact.training_confidence:
        report["drift_confidence"] = confidence_report(prep.artifact.training_confidence, report.get("metrics") or {},
                                                       prep.config.confidence_threshold if prep.config.refine else None)


ASSETS = "_assets"  # OUTPUT/reports/_assets: the Data Docs' styles and images, shared by every run's pages


def write_docs(prep: Prepared, report_dir: Path, rows: int = 10_000) -> Path | None:
    """GX Data Docs of the pre-validation suite on the run's first ``rows`` records, as typed
    before the suite filters them: the expectations' failures (and the rows that broke them)
    show, under the table's name and the run id. ``report_dir``: a local folder."""
    applied, _ = prep.policy.apply(prep.sample.table.slice(0, rows))
    typed, _ = parse_table(applied, prep.schema)
    if typed.num_rows == 0:
        return None
    return write_data_docs(prep.schema, "pre", typed, Path(report_dir) / "data_docs", run_id=prep.run_id,
                           asset=prep.schema.name, assets=Path(report_dir).parent / ASSETS)


def plan_for(prep: Prepared, extra_steps: Sequence[Step] = ()) -> StagePlan:
    """The stage plan; for a remote launch its ``detect`` step takes the policy a worker fits."""
    cfg = prep.config
    return stage_plan(schema=prep.schema, policy=prep.policy or {}, run_id=prep.run_id, refine=cfg.refine,
                      confidence_threshold=cfg.confidence_threshold, extra_steps=extra_steps, impute=cfg.impute,
                      adapted_fill=cfg.adapt_rows == "all",  # where the model has adapted networks
                      precision=cfg.precision, profile=prep.artifact.profile if prep.artifact is not None else None,
                      absent=absent_columns(cfg, prep.schema))


def maybe_retrain(prep: Prepared, report: dict, *, log=print) -> dict | None:
    """The job's ``retrain`` after a committed run: ``on_drift`` when the run's drift check
    flagged a column, ``every_n_runs`` after ``retrain_every`` committed runs with the model the
    run used. A new version is written beside the old ones (``lakefill.pipelines.versions``);
    later runs use it if it passed its check. Recorded in the report (``retrain``)."""
    cfg = prep.config
    if cfg.retrain == "never" or prep.artifact is None:
        return None
    if not report.get("committed"):
        return None
    reason = None
    drifted = [c for c, d in (report.get("drift") or {}).items() if d.get("drifted")]
    if cfg.retrain == "on_drift" and drifted:
        reason = f"drift in {drifted}"
    if cfg.retrain == "every_n_runs":
        used = versions.runs_by_model(cfg.out).get(str(cfg.location(cfg.model)), [])
        if len(used) >= cfg.retrain_every:
            reason = f"{len(used)} runs with {cfg.model} (retrain_every {cfg.retrain_every})"
    if reason is None:
        return None
    try:
        done = versions.retrain(prep, prep.run_id, reason=reason, log=log)
    except Exception as err:  # noqa: BLE001 - the run is committed; a failed retraining is reported, not raised
        done = {"reason": reason, "trained": False, "error": f"{type(err).__name__}: {err}"}
        log(f"retraining failed ({done['error']}); the run is committed and the model unchanged")
    report["retrain"] = done
    return done


def complete_report(prep: Prepared, report: dict, report_dir: "Path | Location") -> None:
    """What the launcher adds to a run's report after the commit (``finalize``'s ``complete``):
    the findings and drift, a retraining, the per-column shares, the GX Data Docs and
    report.html. Data Docs are written by GX to a local folder: on an object store, a temporary
    one copied up (with the output's shared assets, once)."""
    loc = as_location(report_dir, prep.config.storage_options)
    record_detection(prep, report)
    maybe_retrain(prep, report)
    report["column_shares"] = column_shares_of_run(report, prep.config.storage_options)
    if loc.is_local:
        write_docs(prep, loc.local_path)
        render_report(loc.local_path, options=prep.config.storage_options, report=report)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "reports" / loc.name
        local.mkdir(parents=True)
        write_docs(prep, local)
        render_report(local, options=prep.config.storage_options, report=report)
        loc.upload(local)
        shared, remote = local.parent / ASSETS, loc.parent / ASSETS
        for f in sorted(p for p in shared.rglob("*") if p.is_file()) if shared.exists() else []:
            target = remote.join(*f.relative_to(shared).parts)
            if not target.exists():  # once per output: every run's Data Docs link the same assets
                target.write_bytes(f.read_bytes())


def completer(prep: Prepared):
    """``finalize``'s ``complete`` for this run."""
    return lambda report, report_dir: complete_report(prep, report, report_dir)


def end_of_run(prep: Prepared, report_dir: "Path | Location") -> dict:
    """The report of a run finalized by another step (a Beam worker's): read, completed, written back."""
    loc = as_location(report_dir, prep.config.storage_options)
    report = read_report(loc)
    complete_report(prep, report, loc)
    write_report(loc, report)
    return report


# -- a remote launch: what the launcher does not do, a worker does -------------------------------

def worker_sample(config: JobConfig) -> RawRead:
    """The run's first ``sample_rows`` records, read on a worker (a remote launch reads none)."""
    return _io.read_raw(config.reads, options=config.storage_options, limit=config.sample_rows,
                        csv_options=config.csv_options)


def worker_policy(config: JobConfig) -> dict:
    """The null policy of a remote launch, fitted on a worker on the run's first records."""
    return fit_policy(config, worker_sample(config))[1].to_dict()


def worker_end_of_run(prep: Prepared, policy: dict, report_dir: str) -> str:
    """``end_of_run`` on a worker, for a remote launch: the findings of the policy the workers
    used, the Data Docs of the first records, ``report.html``, all written under the output."""
    done = dataclasses.replace(prep, policy=NullPolicy.from_dict(policy, schema=prep.schema),
                               sample=worker_sample(prep.config))
    end_of_run(done, as_location(report_dir, prep.config.storage_options))
    return report_dir

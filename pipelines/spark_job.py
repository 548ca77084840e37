"""The lakefill stage as a Spark job.

    lakefill run --engine spark JOB.yaml [--master spark://host:7077] [--conf k=v ...]
    spark-submit --master ... pipelines/spark_job.py JOB.yaml [--run-id ID]

The driver refuses a bad config, schema or model before any task, fits the null policy on the
first ``sample_rows`` records, broadcasts the model's bytes, and then runs one Spark job whose
tasks read, run the stage plan's steps (``lakefill.transforms.plan``: the same steps as the Beam
and local engines) and write Parquet parts, in one ``mapInArrow`` (``transforms/spark.py``).
The driver collects the parts' AddActions and counters and commits them in one Delta
transaction per table (``lakefill.transforms.stage.finalize``). Spark's task retries are safe:
a failed attempt's files are never committed and its counters never counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from lakefill.pipelines.config import JobConfig, config_from_flags
from lakefill.pipelines.launcher import RunOutcome, completer, config_summary, plan_for, prepare, train_for_job
from lakefill.transforms.plan import Step
from lakefill.transforms.stage import Parts, RunTotals, finalize
from lakefill.transforms.storage import as_location

__all__ = ["spark_session", "run_spark", "parse_spark_args", "main"]


def parse_spark_args(args: list[str] | None) -> tuple[str | None, dict[str, str]]:
    """``--master URL`` and repeated ``--conf key=value``; anything else is refused by name."""
    ap = argparse.ArgumentParser(prog="lakefill run --engine spark", add_help=False)
    ap.add_argument("--master")
    ap.add_argument("--conf", action="append", default=[])
    known, unknown = ap.parse_known_args(list(args or []))
    if unknown:
        from lakefill.errors import ConfigError

        raise ConfigError(f"unknown option(s) for the Spark engine: {unknown} (use --master and --conf key=value)")
    conf = {}
    for kv in known.conf:
        if "=" not in kv:
            from lakefill.errors import ConfigError

            raise ConfigError(f"--conf {kv!r}: expected key=value")
        k, v = kv.split("=", 1)
        conf[k] = v
    return known.master, conf


QUIET_LOG4J = Path(__file__).with_name("log4j2-quiet.properties")


def spark_session(args: list[str] | None = None, *, app_name: str = "lakefill", verbose: bool | None = None):
    """A session for the job: ``local[*]`` unless ``--master`` says otherwise (or spark-submit set one).

    A JVM started here is quiet unless ``verbose`` (default: the ``LAKEFILL_VERBOSE`` variable that
    ``lakefill run --verbose`` sets): Spark logs errors only (``log4j2-quiet.properties``), a
    local master binds to 127.0.0.1 (no "hostname resolves to a loopback address" warning), and
    what the JVM itself prints at its start ("Using incubator modules") goes to
    ``spark_log_path()`` instead of the console."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    master, conf = parse_spark_args(args)
    verbose = os.environ.get("LAKEFILL_VERBOSE") == "1" if verbose is None else verbose
    starts_jvm = SparkSession.getActiveSession() is None and not os.environ.get("PYSPARK_GATEWAY_PORT")
    quiet = starts_jvm and not verbose
    if quiet:
        if (master or "local").startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        option = f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()}"
        for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
            conf[key] = f"{conf[key]} {option}" if key in conf else option
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not os.environ.get("PYSPARK_GATEWAY_PORT"):  # under spark-submit the master comes from its flags
        builder = builder.master("local[*]")
    defaults = {"spark.sql.execution.arrow.pyspark.enabled": "true", "spark.ui.showConsoleProgress": "false",
                "spark.executorEnv.PYSPARK_PYTHON": os.environ["PYSPARK_PYTHON"]}
    for k, v in {**defaults, **conf}.items():
        builder = builder.config(k, v)
    if not quiet:
        return builder.getOrCreate()
    with _jvm_output_to(spark_log_path()):
        return builder.getOrCreate()


def spark_log_path() -> Path:
    """Where a quiet session's JVM writes what it prints itself (this process's own file)."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"lakefill-spark-{os.getpid()}.log"


@contextlib.contextmanager
def _jvm_output_to(path: Path):
    """The JVM that starts inside inherits ``path`` as its stderr (for its life); this process's
    own stderr is back as it was when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(target, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def spark_sampler(get_spark):
    """The training sample drawn by Spark's executors (``lakefill.transforms.spark.sample_rows``)
    in the launcher's ``read_sample`` form; the session is started when a sample is asked for."""
    def sample(source, *, options=None, **kw):
        from lakefill.transforms import spark as lf

        if isinstance(source, (list, tuple)):
            path, options = list(source), dict(options or {})
        else:
            loc = as_location(source, options)
            path, options = loc.uri, {**loc.options, **(options or {})}
        return lf.sample_rows(get_spark(), path, options=options, **kw)
    return sample


def spark_networks(get_spark, config: JobConfig, log=print):
    """The job's network trainer on Spark (``training.trainer: torch_distributor``: DDP on the
    executors, ``lakefill.transforms.spark.distributed_trainer``), or None (the driver trains)."""
    if config.training.trainer != "torch_distributor":
        return None
    from lakefill.transforms import spark as lf

    return lf.distributed_trainer(get_spark(), config.training.processes, log=log)  # too many processes: refused now


def run_spark(config: JobConfig, spark_args: list[str] | None = None, *, spark=None,
              extra_steps: Sequence[Step] = (), log=print) -> RunOutcome:
    from lakefill.transforms import spark as lf

    session = [spark]

    def get_spark():
        session[0] = session[0] or spark_session(spark_args)
        return session[0]

    # train_if_missing: the executors sample (and train the networks, with trainer: torch_distributor)
    prep = prepare(config, log=log, sampler=spark_sampler(get_spark), networks=spark_networks(get_spark, config, log),
                   engine="spark")
    cfg, run_id = prep.config, prep.run_id
    out = cfg.out
    plan = plan_for(prep, extra_steps)
    t0 = time.perf_counter()
    spark = get_spark()
    model = (lf.broadcast_model(spark, cfg.location(cfg.model), prep.schema, device=cfg.device)
             if prep.artifact is not None else None)  # impute: false reads no model
    rows = lf.run_plan(spark, plan, model, cfg.reads, table_uri=out / "table", quarantine_uri=out / "quarantine",
                       run_id=run_id, partition_by=cfg.partition_by, batch_rows=cfg.batch_size,
                       csv_options=cfg.csv_options, options=cfg.storage_options).collect()
    job_seconds = time.perf_counter() - t0
    totals = RunTotals()
    for r in rows:
        totals.add(Parts.from_dict(json.loads(r["parts"])))
    metrics = {"steps": plan.names, "spark": {
        "parts": len(rows), "spark_master": spark.sparkContext.master, "model_sha256": model.sha256 if model else None,
        "executor_folders": sorted({r["worker"] for r in rows}), "executor_pythons": sorted({r["python"] for r in rows}),
        "task_gpus": sorted({a for r in rows for a in (r["gpus"] or "").split(",") if a})}}
    done = finalize(totals.sort(), run_id=run_id, engine="spark", output=out, config=config_summary(cfg),
                    max_quarantine_share=cfg.max_quarantine_share, mode=cfg.mode, partition_by=cfg.partition_by,
                    timings={"spark_job": job_seconds, "total": time.perf_counter() - t0}, metrics=metrics,
                    complete=completer(prep), log=log)
    return RunOutcome(run_id, str(out / "table"), str(out / "quarantine"), str(done.report), done.counts,
                      done.committed, done.metrics)


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: ``spark_job.py [JOB.yaml] [--run-id ID] [--task run|train]
    [--FIELD=VALUE ...] [Spark settings]``: the job config and/or one flag per job field (as the
    Airflow DAG passes them). ``--task train``: the job's model trained on the driver if missing."""
    ap = argparse.ArgumentParser(prog="spark_job.py", allow_abbrev=False)
    ap.add_argument("config", nargs="?")
    ap.add_argument("--run-id")
    ap.add_argument("--task", choices=["run", "train"], default="run")
    args, rest = ap.parse_known_args(argv)
    config, extra = config_from_flags(([f"--job={args.config}"] if args.config else []) + rest)
    if args.run_id:
        config = config.model_copy(update={"run_id": args.run_id})
    if args.task == "train":
        def get_spark():
            return spark_session(extra)
        print(json.dumps(train_for_job(config, sampler=spark_sampler(get_spark), networks=spark_networks(get_spark, config),
                                       engine="spark")))
        return 0
    outcome = run_spark(config, extra)
    print(json.dumps({"run_id": outcome.run_id, "table": outcome.table, "report": outcome.report,
                      "counts": outcome.counts, "committed": outcome.committed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

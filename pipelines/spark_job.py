"""The lakefill stage as a Spark job.

    lakefill run --engine spark JOB.yaml [--master spark://host:7077] [--conf k=v ...]
    spark-submit --master ... pipelines/spark_job.py JOB.yaml [--run-id ID]

The driver refuses a bad config, schema or model before any task, fits the null policy on the
first ``sample_rows`` records, broadcasts the model's bytes, and then runs one Spark job whose
tasks read, detect, validate, impute, refine and write Parquet parts (``transforms/spark.py``).
The driver collects the parts' AddActions and commits them in one Delta transaction per table
(``lakefill.transforms.stage.finalize``: the same code and checks as the Beam and local engines).
Spark's task retries are safe: a failed attempt's files are never committed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from lakefill.pipelines.config import JobConfig, load_config
from lakefill.pipelines.local_job import RunOutcome, config_summary, prepare, record_detection, write_docs
from lakefill.pipelines.report import render_report
from lakefill.transforms.impute import Imputer
from lakefill.transforms.lake import action_from_dict
from lakefill.transforms.stage import RunTotals, finalize

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


def spark_session(args: list[str] | None = None, *, app_name: str = "lakefill"):
    """A session for the job: ``local[*]`` unless ``--master`` says otherwise (or spark-submit set one)."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    master, conf = parse_spark_args(args)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not os.environ.get("PYSPARK_GATEWAY_PORT"):  # under spark-submit the master comes from its flags
        builder = builder.master("local[*]")
    defaults = {"spark.sql.execution.arrow.pyspark.enabled": "true", "spark.ui.showConsoleProgress": "false",
                "spark.executorEnv.PYSPARK_PYTHON": os.environ["PYSPARK_PYTHON"]}
    for k, v in {**defaults, **conf}.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def run_spark(config: JobConfig, spark_args: list[str] | None = None, *, spark=None, log=print) -> RunOutcome:
    from lakefill.transforms import spark as lf

    prep = prepare(config, log=log)
    cfg, run_id = prep.config, prep.run_id
    out = Path(cfg.output)
    t0 = time.perf_counter()
    spark = spark or spark_session(spark_args)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.batch_size))
    schemas = lf.stage_schemas(prep.sample.table.schema, prep.schema, prep.policy, Imputer(prep.artifact, device="cpu"))
    counters = lf.Counters.create(spark)
    model = lf.broadcast_model(spark, cfg.model, prep.schema, device=cfg.device)

    df = lf.read_raw(spark, cfg.input, schemas.raw, counters, batch_rows=cfg.batch_size,
                     csv_options=cfg.csv_options)
    steps = [lf.detect_step(prep.policy, prep.schema, counters), lf.validate_step(prep.schema, "pre"),
             lf.impute_step(model)]
    if cfg.refine:
        steps.append(lf.refine_step(model, threshold=cfg.confidence_threshold))
    steps += [lf.validate_step(prep.schema, "post"), lf.run_id_step(run_id)]
    df = lf.fused(df, schemas.final, *steps)  # the same steps as the DataFrame functions, in one pass
    parts = lf.write_lake(df, str(out / "table"), str(out / "quarantine"), run_id, schemas.final,
                          partition_by=cfg.partition_by).collect()
    job_seconds = time.perf_counter() - t0

    totals = RunTotals(rows_in=counters.rows_in.value, table_schema=schemas.final)
    cells = 0
    for p in sorted(parts, key=lambda r: r["actions"]):
        actions = [action_from_dict(a) for a in json.loads(p["actions"])]
        if p["kind"] == "table":
            totals.table_actions += actions
            totals.confidence_hist = [a + b for a, b in zip(totals.confidence_hist, json.loads(p["hist"]))]
            totals.rows_refined += p["refined"]
            cells += p["cells"]
        else:
            totals.quarantine_actions += actions
            totals.quarantined_by_reason.update(json.loads(p["reasons"]))
    if not totals.table_actions:
        totals.table_schema = None
    totals.disguised = Counter(counters.disguised.value)
    metrics = {"cells_imputed": cells, "parts": len(parts), "spark_master": spark.sparkContext.master,
               "model_sha256": model.sha256, "executor_folders": sorted({p["worker"] for p in parts}),
               "executor_pythons": sorted({p["python"] for p in parts})}
    done = finalize(totals, run_id=run_id, engine="spark", output=out, config=config_summary(cfg),
                    max_quarantine_share=cfg.max_quarantine_share, mode=cfg.mode, partition_by=cfg.partition_by,
                    timings={"spark_job": job_seconds, "total": time.perf_counter() - t0}, metrics=metrics, log=log)
    record_detection(prep, out / "reports" / run_id)
    write_docs(prep, out / "reports" / run_id)
    render_report(out / "reports" / run_id)
    return RunOutcome(run_id, str(out / "table"), str(out / "quarantine"), str(done.report), done.counts,
                      done.committed, metrics)


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: ``spark-submit pipelines/spark_job.py JOB.yaml [--run-id ID]``."""
    ap = argparse.ArgumentParser(prog="spark_job.py")
    ap.add_argument("config")
    ap.add_argument("--run-id")
    args, extra = ap.parse_known_args(argv)
    config = load_config(args.config)
    if args.run_id:
        config = config.model_copy(update={"run_id": args.run_id})
    outcome = run_spark(config, extra)
    print(json.dumps({"run_id": outcome.run_id, "table": outcome.table, "report": outcome.report,
                      "counts": outcome.counts, "committed": outcome.committed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

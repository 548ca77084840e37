"""The lakefill stage as an Apache Beam pipeline (Direct runner here, Dataflow unchanged).

    lakefill run --engine beam JOB.yaml [--runner DataflowRunner --project P --region R
                                         --temp_location gs://... --setup_file ./setup.py ...]

Before the pipeline starts, the launcher refuses a bad config, schema or model, fits the null
policy on the first ``sample_rows`` records. The pipeline then runs

    ReadRaw -> the stage plan, a pipeline step per plan step (detect -> validate_pre -> impute
    (RunInference) -> refine -> validate_post -> finish) -> WriteToLake (Parquet parts)
    every quarantine output -> WriteQuarantine (Parquet parts)
    FinalizeRun: one Delta commit per table, keyed by the run id; count and quarantine checks

and the launcher adds the Beam metrics, the detection findings and the GX Data Docs to the run
report when it finishes.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from lakefill.errors import ConfigError
from lakefill.pipelines.config import JobConfig
from lakefill.pipelines.launcher import Prepared, RunOutcome, config_summary, end_of_run, plan_for, prepare
from lakefill.transforms.beam import (COUNTERS, NAMESPACE, QUARANTINE, FinalizeRun, LakefillModelHandler, ReadRaw,
                                      RunPlan, WriteQuarantine, WriteToLake)
from lakefill.transforms.plan import Step
from lakefill.transforms.stage import QuarantineExceeded, RowsLost

__all__ = ["build_pipeline", "run_beam", "pipeline_options"]


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """The command line's other flags are Beam pipeline options (a flag Beam does not know is
    refused by name, not dropped); the default runner is the Direct runner."""
    options = PipelineOptions(list(beam_args or []))
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    if unknown:
        raise ConfigError(f"unknown option(s) {['--' + u for u in unknown]}: neither lakefill's nor a Beam pipeline "
                          f"option; see `lakefill run --help` (Beam's options: --runner, --project, --region, "
                          f"--temp_location, --setup_file, --direct_num_workers ...)")
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def build_pipeline(p: beam.Pipeline, prep: Prepared, *, handler: LakefillModelHandler | None = None,
                   started: float | None = None, extra_steps: Sequence[Step] = ()):
    """Adds the stage to ``p``; returns the PCollection of the final step's summary."""
    cfg, run_id = prep.config, prep.run_id
    schema = prep.schema.model_dump(by_alias=True)
    out = cfg.out
    plan = plan_for(prep, extra_steps)
    handler = handler or LakefillModelHandler(cfg.model, schema, device=cfg.device, max_batches=cfg.inference_batches,
                                              share=cfg.share_model,
                                              storage_options=cfg.storage_options)

    read = p | "ReadRaw" >> ReadRaw(cfg.input, batch_rows=cfg.batch_size, csv_options=cfg.csv_options,
                                    options=cfg.storage_options)
    done = read.main | "Stage" >> RunPlan(plan, handler)
    parts = done["main"] | "WriteToLake" >> WriteToLake(out / "table", cfg.partition_by)
    quarantine = ((read[QUARANTINE], *done[QUARANTINE]) | "AllQuarantine" >> beam.Flatten()
                  | "WriteQuarantine" >> WriteQuarantine(out / "quarantine", run_id))
    all_parts = (parts, quarantine) | "AllParts" >> beam.Flatten()
    counters = (read[COUNTERS], *done[COUNTERS]) | "AllCounters" >> beam.Flatten()
    final = FinalizeRun(run_id=run_id, output=out, config=config_summary(cfg),
                        max_quarantine_share=cfg.max_quarantine_share, mode=cfg.mode, partition_by=cfg.partition_by,
                        started=started or time.time(), steps=plan.names)
    return (p | "Start" >> beam.Create([None])
            | "FinalizeRun" >> beam.ParDo(final, parts=beam.pvalue.AsList(all_parts),
                                          counters=beam.pvalue.AsList(counters)))


def beam_metrics(result) -> dict:
    """The pipeline's lakefill counters, by name (committed values where the runner has them)."""
    out = {}
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    for d in query["distributions"]:
        v = d.committed if d.committed is not None else d.attempted
        if v is not None and v.count:
            out[d.key.metric.name] = {"count": v.count, "sum": v.sum, "min": v.min, "max": v.max, "mean": v.mean}
    return dict(sorted(out.items()))


def run_beam(config: JobConfig, beam_args: list[str] | None = None, *, handler: LakefillModelHandler | None = None,
             extra_steps: Sequence[Step] = (), log=print) -> RunOutcome:
    options = pipeline_options(beam_args)  # a bad flag is refused before any work
    runner = str(options.view_as(StandardOptions).runner or "")
    prep = prepare(config, log=log, allow_training=runner.lower().replace("runner", "") in ("direct", "prism", ""))
    out = config.out
    report_dir = out / "reports" / prep.run_id
    started = time.time()
    p = beam.Pipeline(options=options)
    build_pipeline(p, prep, handler=handler, started=started, extra_steps=extra_steps)
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as err:  # the runner wraps a failed final check: give it back under its own name
        text = str(err)
        for cls in (QuarantineExceeded, RowsLost):
            if cls.__name__ in text:
                raise cls(text.split(f"{cls.__name__}: ", 1)[-1].split("\n")[0]) from err
        raise
    report_path = report_dir / "report.json"
    report = json.loads(report_path.read_text())
    report["metrics"] = {**report["metrics"], "beam": beam_metrics(result)}
    report["runner"] = options.view_as(StandardOptions).runner
    report["timings_seconds"]["total"] = round(time.time() - started, 4)
    report_path.write_text(json.dumps(report, indent=2, default=str))  # on the lake: the launcher reads it there
    end_of_run(prep, report_dir)
    return RunOutcome(prep.run_id, str(out / "table"), str(out / "quarantine"), str(report_path), report["counts"],
                      report["committed"], report["metrics"])


def config_from_flags(argv: list[str] | None) -> tuple[JobConfig, list[str]]:
    """``--job JOB.yaml`` and/or one flag per job-config field (``--input=...``, ``--run_id=...``,
    ``--partition_by=a,b``), as a Flex Template passes its parameters; the rest are Beam options."""
    import argparse

    from lakefill.pipelines.config import load_config

    ap = argparse.ArgumentParser(prog="beam_pipeline")
    ap.add_argument("--job")
    fields = {(f.alias or name): f for name, f in JobConfig.model_fields.items()}
    for key in fields:
        ap.add_argument(f"--{key}")
    args, beam_args = ap.parse_known_args(argv)
    given = {k: v for k, v in vars(args).items() if k != "job" and v not in (None, "")}
    if "partition_by" in given:
        given["partition_by"] = [c for c in given["partition_by"].split(",") if c]
    for key, example in (("csv", '{"delimiter": ";"}'), ("storage_options", '{"AWS_REGION": "eu-west-1"}')):
        if key in given:  # a JSON object
            try:
                given[key] = json.loads(given[key])
            except ValueError as err:
                raise ConfigError(f"--{key} must be a JSON object such as {example}: {err}") from err
    if args.job:
        base = load_config(args.job).model_dump(by_alias=True)
    else:
        base = {}
    try:
        config = JobConfig.model_validate({**base, **given})
    except Exception as err:  # pydantic's message names the field
        raise ConfigError(f"invalid job parameters: {err}") from err
    return config, beam_args


def main(argv: list[str] | None = None) -> int:
    """``python -m lakefill.pipelines.beam_pipeline [--job JOB.yaml] [--FIELD=VALUE ...] [Beam options]``:
    the entry point for Dataflow launches (Flex Template, BeamRunPythonPipelineOperator)."""
    config, beam_args = config_from_flags(argv)
    outcome = run_beam(config, beam_args)
    print(json.dumps({"run_id": outcome.run_id, "table": outcome.table, "report": outcome.report,
                      "counts": outcome.counts, "committed": outcome.committed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

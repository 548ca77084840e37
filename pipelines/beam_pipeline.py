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

import argparse
import dataclasses
import json
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from lakefill.errors import ConfigError
from lakefill.pipelines.config import JobConfig, config_from_flags
from lakefill.pipelines.launcher import (Prepared, RunOutcome, check_trainer, complete_report, config_summary, plan_for, prepare,
                                        train_for_job, worker_end_of_run, worker_policy)
from lakefill.transforms.beam import (COUNTERS, NAMESPACE, QUARANTINE, FinalizeRun, LakefillModelHandler, ReadRaw,
                                      RunPlan, WriteQuarantine, WriteToLake)
from lakefill.transforms.plan import Step
from lakefill.transforms.stage import QuarantineExceeded, RowsLost, read_report, write_report

__all__ = ["config_from_flags", "build_pipeline", "build_training", "run_beam", "run_beam_training", "pipeline_options"]


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

    policy = None
    if prep.policy is None:  # a remote launch: a worker fits the null policy on the first records
        policy = p | "SampleStart" >> beam.Create([cfg]) | "FitPolicy" >> beam.Map(worker_policy)
    read = p | "ReadRaw" >> ReadRaw(cfg.reads, batch_rows=cfg.batch_size, csv_options=cfg.csv_options,
                                    options=cfg.storage_options)
    done = read.main | "Stage" >> RunPlan(plan, handler, policy)
    parts = done["main"] | "WriteToLake" >> WriteToLake(out / "table", cfg.partition_by)
    quarantine = ((read[QUARANTINE], *done[QUARANTINE]) | "AllQuarantine" >> beam.Flatten()
                  | "WriteQuarantine" >> WriteQuarantine(out / "quarantine", run_id))
    all_parts = (parts, quarantine) | "AllParts" >> beam.Flatten()
    counters = (read[COUNTERS], *done[COUNTERS]) | "AllCounters" >> beam.Flatten()
    final = FinalizeRun(run_id=run_id, output=out, config=config_summary(cfg),
                        max_quarantine_share=cfg.max_quarantine_share, mode=cfg.mode, partition_by=cfg.partition_by,
                        started=started or time.time(), steps=plan.names)
    summary = (p | "Start" >> beam.Create([None])
               | "FinalizeRun" >> beam.ParDo(final, parts=beam.pvalue.AsList(all_parts),
                                             counters=beam.pvalue.AsList(counters)))
    if policy is not None:  # the launcher reads nothing back: a worker completes the run's report
        light = dataclasses.replace(prep, artifact=None, sample=None)
        summary | "CompleteReport" >> beam.Map(lambda done, pol: worker_end_of_run(light, pol, str(out / "reports" / run_id)),
                                               beam.pvalue.AsSingleton(policy))
    return summary


class SampleRows(beam.CombineFn):
    """The training sample as a Beam combine: every worker keeps the bottom ``train_rows`` of the
    rows it reads (``lakefill.transforms.sample.BottomK``) and the runner merges the partial
    samples into one, the rows the local sampler draws. Elements: ("rows", batch) and
    ("unreadable", quarantined records)."""

    def __init__(self, train_rows: int, seed: int):
        self.train_rows, self.seed = train_rows, seed

    def create_accumulator(self):
        from lakefill.transforms.sample import BottomK

        return BottomK(self.train_rows, self.seed)

    def add_input(self, acc, element):
        kind, value = element
        return acc.add(value) if kind == "rows" else acc.add_unreadable(value)

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        for other in accumulators[1:]:
            accumulators[0].merge(other)
        return accumulators[0]

    def extract_output(self, acc):
        return acc


def _train_on(sample, config: JobConfig) -> dict:
    """``train_for_job`` on the sample the pipeline drew (a worker's step)."""
    from lakefill.transforms.io import RawRead

    def sampler(source, **_):
        return RawRead(str(source), sample.table(), list(sample.quarantined)), sample.info()

    return train_for_job(config, sampler=sampler, engine="beam")


def build_training(p: beam.Pipeline, config: JobConfig):
    """The job's model, trained if it is missing: the pipeline reads the input in parallel and
    draws the training sample with a combine (``SampleRows``), one worker fits on it
    (``train_for_job``). Training runs on the engine, never on the launcher; a model that is
    there makes the pipeline one step that says so."""
    check_trainer(config, "beam")
    if (config.location(config.model) / "manifest.json").exists():
        return p | "Job" >> beam.Create([config]) | "TrainIfMissing" >> beam.Map(lambda cfg: train_for_job(cfg, engine="beam"))
    read = p | "Read" >> ReadRaw(config.reads, batch_rows=50_000, csv_options=config.csv_options,
                                 options=config.storage_options, min_units=2)
    rows = read["main"] | "Rows" >> beam.Map(lambda t: ("rows", t))
    bad = read[QUARANTINE] | "Unreadable" >> beam.Map(lambda q: ("unreadable", q))
    sample = ((rows, bad) | "Both" >> beam.Flatten()
              | "Sample" >> beam.CombineGlobally(SampleRows(config.training.train_rows, config.training.seed)))
    return sample | "Train" >> beam.Map(_train_on, config)


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


def is_remote(options: PipelineOptions) -> bool:
    """Whether the runner runs the pipeline on other machines than this one (Dataflow, ...)."""
    runner = str(options.view_as(StandardOptions).runner or "")
    return runner.lower().replace("runner", "") not in ("direct", "prism", "")


def run_beam_training(config: JobConfig, beam_args: list[str] | None = None) -> None:
    """The job's model trained (if missing) as a Beam job: on a Dataflow worker, or here on the
    Direct runner. The launch template's ``task=train``."""
    options = pipeline_options(beam_args)
    p = beam.Pipeline(options=options)
    build_training(p, config)
    p.run().wait_until_finish()


def run_beam(config: JobConfig, beam_args: list[str] | None = None, *, handler: LakefillModelHandler | None = None,
             extra_steps: Sequence[Step] = (), log=print, remote: bool | None = None) -> RunOutcome:
    """The stage as a Beam pipeline. ``remote`` (default: the runner runs elsewhere, Dataflow):
    the launcher reads no record of the input and trains nothing; a worker fits the null policy
    and completes the report, and the outcome has no counts (the report on the lake has them)."""
    options = pipeline_options(beam_args)  # a bad flag is refused before any work
    remote = is_remote(options) if remote is None else remote
    prep = prepare(config, log=log, remote=remote, engine="beam")
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
    if remote:
        return RunOutcome(prep.run_id, str(out / "table"), str(out / "quarantine"), str(report_path), {}, None)
    # the worker that committed wrote the report; the launcher adds the runner's metrics and completes it
    report = read_report(report_dir)
    report["metrics"]["beam"] = beam_metrics(result)
    report["runner"] = options.view_as(StandardOptions).runner
    report["timings_seconds"]["total"] = round(time.time() - started, 4)
    complete_report(prep, report, report_dir)
    write_report(report_dir, report)
    return RunOutcome(prep.run_id, str(out / "table"), str(out / "quarantine"), str(report_path), report["counts"],
                      report["committed"], report["metrics"])


def main(argv: list[str] | None = None) -> int:
    """``python -m lakefill.pipelines.beam_pipeline [--task=run|train] [--job JOB.yaml] [--FIELD=VALUE ...]
    [Beam options]``: the entry point for Dataflow launches (Flex Template, Airflow's Beam operator)."""
    ap = argparse.ArgumentParser(prog="beam_pipeline", allow_abbrev=False)
    ap.add_argument("--task", choices=["run", "train"], default="run")
    args, rest = ap.parse_known_args(argv)
    config, beam_args = config_from_flags(rest)
    if args.task == "train":
        run_beam_training(config, beam_args)
        return 0
    outcome = run_beam(config, beam_args)
    print(json.dumps({"run_id": outcome.run_id, "table": outcome.table, "report": outcome.report,
                      "counts": outcome.counts, "committed": outcome.committed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

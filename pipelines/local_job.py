"""The stage in one process (``lakefill run --engine local``): the plan's steps, batch by batch.

    prepare (launcher) -> for each batch read: the stage plan (detect, validate, impute, refine,
    validate, finish) -> Parquet parts -> finalize: one Delta commit per table -> report

The Beam and Spark engines run the same plan (``lakefill.transforms.plan``) on their workers.
"""

from __future__ import annotations

import time
from typing import Sequence

from lakefill.pipelines.config import JobConfig
from lakefill.progress import LogLines
from lakefill.pipelines.launcher import (Prepared, RunOutcome, completer, config_summary, plan_for, prepare,
                                         train_to_dir)
from lakefill.transforms import modelcache
from lakefill.transforms.io import iter_raw
from lakefill.transforms.plan import Runtime, Step, run_steps
from lakefill.transforms.stage import QuarantineExceeded, RowsLost, RunTotals, finalize, write_outputs

__all__ = ["run_local", "RunOutcome", "Prepared", "prepare", "train_to_dir", "QuarantineExceeded", "RowsLost"]


def run_local(config: JobConfig, *, extra_steps: Sequence[Step] = (), log=print) -> RunOutcome:
    """The whole stage in this process, batch by batch (``batch_size`` rows). ``extra_steps``:
    steps of your own, run after post-validation (see ``lakefill.transforms.plan``)."""
    prep = prepare(config, log=log)
    cfg, run_id = prep.config, prep.run_id
    out = cfg.out
    plan = plan_for(prep, extra_steps)
    modelcache.take_loads()  # loads before this run are not its own
    model = modelcache.local(prep.artifact, cfg.device) if prep.artifact is not None else None
    rt = Runtime(lambda: model)
    totals = RunTotals().add({"model_loads": modelcache.take_loads()})
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lines = LogLines(0, desc=f"run {run_id}", unit="row", log=log)  # a line every 30 s: rows done, their rate
    for chunk in iter_raw(cfg.reads, options=cfg.storage_options, batch_rows=cfg.batch_size, csv_options=cfg.csv_options):
        totals.add({"rows_in": chunk.rows_in})
        done = run_steps(plan.steps, chunk.table, rt, timings=timings)
        t = time.perf_counter()
        parts = write_outputs(done.table, list(chunk.quarantined) + done.quarantined, table_uri=out / "table",
                              quarantine_uri=out / "quarantine", run_id=run_id, partition_by=cfg.partition_by)
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t
        totals.add(done).add(parts)
        lines.set_postfix(quarantined=f"{totals.rows_quarantined:,}")
        lines.update(chunk.rows_in)
    lines.close()
    timings["total"] = time.perf_counter() - t0
    fin = finalize(totals, run_id=run_id, engine="local", output=out, config=config_summary(cfg),
                   max_quarantine_share=cfg.max_quarantine_share, mode=cfg.mode, partition_by=cfg.partition_by,
                   timings=timings, metrics={"steps": plan.names}, complete=completer(prep), log=log)
    return RunOutcome(run_id, str(out / "table"), str(out / "quarantine"), str(fin.report), fin.counts,
                      fin.committed, fin.metrics)

"""Protocol G: a month of daily runs on a landing folder of the S3 server on loopback.

    python -m benchmarks.month [--engine local|spark|beam] [--days 30] [--rows 200] [--json OUT.json]

A file a day lands in ``s3://lake/landing/`` (``--rows`` rows drawn, seeded, from the demo's
customers table); from ``--column-day`` on the files carry a new column (``loyalty_tier``; the
job has ``schema_evolution: add_columns``), from ``--shift-day`` on incomes are tripled (drift),
and on ``--kill-day`` the run is killed after planning its files (its record written, nothing
committed) and run again with the same run id. The job: ``incremental: true``, ``retrain:
on_drift``, ``compact_every``; the model is the demo model, uploaded to the store. Per day:
seconds (planning, stage and commit, the whole run), rows in, drift flagged, the model version
used, the table's files after the run. Checked at the end: every landed row exactly once in
the table or the quarantine, the new column null before its day and present after, the first
day drift is flagged, the versions used, the files before and after compaction.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "pipelines" / "examples"


def day_file(day: int, *, rows: int, column_day: int, shift_day: int, seed: int = 0) -> str:
    """Day ``day``'s file (days count from 1): demo rows drawn with replacement."""
    with open(EXAMPLES / "customers.csv", newline="") as f:
        data = list(csv.reader(f))
    header, body = data[0], [r for r in data[1:] if len(r) == len(data[0])]
    rng = np.random.default_rng(seed * 1000 + day)
    picked = [list(body[i]) for i in rng.integers(0, len(body), rows)]
    for i, r in enumerate(picked):  # a customer once a day: the schema's id is unique
        r[0] = f"D{day:02d}-{i:06d}"
    if day >= shift_day:
        k = header.index("income")
        for r in picked:
            try:
                r[k] = f"{float(r[k]) * 3:.2f}"
            except ValueError:
                pass
    if day >= column_day:
        header = header + ["loyalty_tier"]
        picked = [r + [("gold", "silver", "bronze")[i % 3]] for i, r in enumerate(picked)]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header] + picked)
    return out.getvalue()


def simulate(root: str, options: dict, run, *, model_dir: Path, days: int, rows: int, column_day: int,
             shift_day: int, kill_day: int, compact_every: int, log=lambda *_: None) -> dict:
    """The month on the store under ``root`` (``s3://bucket``); ``run(job)`` runs a job on an engine."""
    from lakefill.pipelines.config import JobConfig
    from lakefill.pipelines.launcher import prepare
    from lakefill.errors import NothingNew
    from lakefill.transforms.storage import Location

    Location(f"{root}/models/customers", options).upload(model_dir)
    Location(f"{root}/schemas/customers.yaml", options).upload(EXAMPLES / "customers.schema.yaml")
    job = {"input": f"{root}/landing/", "schema": f"{root}/schemas/customers.yaml", "model": f"{root}/models/customers",
           "output": f"{root}/customers", "mode": "append", "incremental": True, "schema_evolution": "add_columns",
           "missing_columns": "null", "retrain": "on_drift", "compact_every": compact_every,
           "storage_options": options}
    landed, per_day = 0, []
    for day in range(1, days + 1):
        Location(f"{root}/landing/day-{day:02d}.csv", options).write_text(
            day_file(day, rows=rows, column_day=column_day, shift_day=shift_day))
        landed += rows
        cfg = JobConfig.model_validate({**job, "run_id": f"day-{day:02d}"})
        t0 = time.perf_counter()
        if day == kill_day:  # killed after planning: its record is written, nothing is committed
            prepare(cfg, log=lambda *_: None)
        try:
            outcome = run(cfg)
        except NothingNew:
            outcome = None
        seconds = time.perf_counter() - t0
        report = json.loads(Location(outcome.report, options).read_text()) if outcome else {}
        table = _delta(Location(f"{root}/customers/table", options))
        per_day.append({"day": day, "rows_in": (report.get("counts") or {}).get("rows_in", 0),
                        "seconds": round(seconds, 3),
                        "timings": report.get("timings_seconds", {}),
                        "drifted": sorted(c for c, d in (report.get("drift") or {}).items() if d.get("drifted")),
                        "model": report.get("model"), "retrain": report.get("retrain"),
                        "table_files": len(table.file_uris()), "compacted": "compaction" in (report.get("metrics") or {})})
        log(f"day {day:2d}: {per_day[-1]['rows_in']} rows, {seconds:.1f} s, drift {per_day[-1]['drifted']}, "
            f"{per_day[-1]['table_files']} files")
    table = _delta(Location(f"{root}/customers/table", options)).to_pyarrow_table()
    quarantine = _delta(Location(f"{root}/customers/quarantine", options)).to_pyarrow_table()
    runs = table.column("_lf_run_id").to_pylist()
    tiers = table.column("loyalty_tier").to_pylist()
    before = [t for r, t in zip(runs, tiers) if int(r[4:]) < column_day]
    after = [t for r, t in zip(runs, tiers) if int(r[4:]) >= column_day]
    drift_days = [d["day"] for d in per_day if d["drifted"]]
    return {"days": days, "rows_per_day": rows, "rows_landed": landed, "rows_in_table": table.num_rows,
            "rows_in_quarantine": quarantine.num_rows,
            "every_row_once": table.num_rows + quarantine.num_rows == landed,
            "new_column_null_before": all(t is None for t in before),
            "new_column_present_after": sum(t is not None for t in after), "table_rows_after": len(after),
            "first_drift_day": drift_days[0] if drift_days else None, "drift_days": drift_days,
            "models_used": sorted({d["model"] for d in per_day if d["model"]}),
            "max_table_files": max(d["table_files"] for d in per_day), "per_day": per_day}


def _delta(loc):
    from deltalake import DeltaTable

    uri, options = loc.delta()
    return DeltaTable(uri, storage_options=options)


def main(argv: list[str] | None = None) -> int:
    from lakefill.testing import S3Server

    ap = argparse.ArgumentParser(prog="python -m benchmarks.month", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["local", "spark", "beam"], default="local")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--column-day", type=int, default=10)
    ap.add_argument("--shift-day", type=int, default=20)
    ap.add_argument("--kill-day", type=int, default=25)
    ap.add_argument("--compact-every", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from lakefill.pipelines.local_job import train_to_dir
    from lakefill.schema import load_schema

    with tempfile.TemporaryDirectory() as tmp, S3Server(Path(tmp) / "moto.log") as s3:
        model = Path(tmp) / "model"
        train_to_dir(str(EXAMPLES / "customers.csv"), load_schema(EXAMPLES / "customers.schema.yaml"), model)
        run = _runner(args.engine)
        result = simulate(s3.bucket("lake"), s3.options, run, model_dir=model, days=args.days, rows=args.rows,
                          column_day=args.column_day, shift_day=args.shift_day, kill_day=args.kill_day,
                          compact_every=args.compact_every, log=print)
    result["engine"] = args.engine
    print(json.dumps({k: v for k, v in result.items() if k != "per_day"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _runner(engine: str):
    if engine == "local":
        from lakefill.pipelines.local_job import run_local

        return lambda cfg: run_local(cfg, log=lambda *_: None)
    if engine == "spark":
        from lakefill.pipelines.spark_job import run_spark, spark_session

        spark = spark_session([])
        return lambda cfg: run_spark(cfg, spark=spark, log=lambda *_: None)
    from lakefill.pipelines.beam_pipeline import run_beam

    return lambda cfg: run_beam(cfg, ["--direct_num_workers=1"], log=lambda *_: None)


if __name__ == "__main__":
    sys.exit(main())

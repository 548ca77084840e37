"""Incremental listing: a landing folder of N files, one new; what planning costs and what is read.

    python -m benchmarks.incremental [--files 1000] [--rows 20] [--engine local] [--json OUT.json]

Writes N small CSV files (letter-shaped rows, ``--rows`` each) into a temporary folder, runs
the stage once over all of them (``incremental: true``, ``impute: false``: a validation run, so
that the model does not dominate), adds one file and runs again. Reported for the second run:
seconds to plan its files (``plan_seconds``: listing the folder, reading the committed runs'
records), rows read (``rows_read``: the new file's only) and the run's total seconds; and the
same for the first run. Listing cost grows with the folder; work with the new files only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _write(folder: Path, index: int, rows: int, rng: np.random.Generator) -> None:
    values = rng.integers(0, 16, size=(rows, 4))
    lines = ["a,b,c,d"] + [",".join(map(str, r)) for r in values]
    (folder / f"part-{index:05d}.csv").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from lakefill.pipelines.config import JobConfig
    from lakefill.pipelines.local_job import run_local
    from lakefill.transforms.ingest import plan_files

    ap = argparse.ArgumentParser(prog="python -m benchmarks.incremental", description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        landing, out = Path(tmp) / "landing", Path(tmp) / "out"
        landing.mkdir()
        for i in range(args.files):
            _write(landing, i, args.rows, rng)

        def job(run_id: str) -> JobConfig:
            return JobConfig.model_validate({"input": str(landing), "output": str(out), "model": str(out / "model"),
                                             "impute": False, "incremental": True, "mode": "append",
                                             "run_id": run_id})

        runs = {}
        for name in ("first", "second"):
            if name == "second":
                _write(landing, args.files, args.rows, rng)
            t0 = time.perf_counter()
            plan = plan_files(str(landing), str(out), run_id=name)
            plan_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            outcome = run_local(job(name), log=lambda *_: None)
            runs[name] = {"files_listed": plan.listed, "files_taken": len(plan.files), "plan_seconds": round(plan_s, 4),
                          "rows_read": outcome.counts["rows_in"], "run_seconds": round(time.perf_counter() - t0, 3)}
    result = {"files": args.files + 1, "rows_per_file": args.rows, "runs": runs,
              "machine": f"{platform.machine()}, {platform.processor() or platform.system()}"}
    print(f"{'run':<8} {'listed':>7} {'taken':>6} {'plan s':>8} {'rows read':>10} {'run s':>7}")
    for name, r in runs.items():
        print(f"{name:<8} {r['files_listed']:>7} {r['files_taken']:>6} {r['plan_seconds']:>8.3f} {r['rows_read']:>10} "
              f"{r['run_seconds']:>7.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

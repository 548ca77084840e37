"""Protocol H: the networks trained in one process against torch DDP on Spark's executors
(``training.trainer: torch_distributor``), on the same rows, seeds and holes.

    python -m benchmarks.distributed --data ../shared/data/tabular/wine_red.csv,../shared/data/tabular/letter.csv \
        --seeds 0,1,2 [--processes 2] [--json benchmarks/results/distributed.json]

Per table and seed: 20% MCAR holes (protocol A's mask), the model fitted on the holed table by
``fit_model`` with the default configuration, once with the networks trained here
(``train_networks``) and once by ``TorchDistributor`` (``processes`` barrier tasks of a
``local[processes]`` Spark session, gloo); the members that are not networks are fitted in this
process both times. Each model fills the table's holes directly (no reverse pass): RMSE on the
numeric holes (range-scaled), accuracy on the categorical ones, fit seconds and the networks'
seconds. The seed spread of the one-process scores is the yardstick for the DDP scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from lakefill.models.config import AEConfig
from lakefill.models.training import fit_model, train_networks
from lakefill.pipelines.evaluate import _masked_table, load_problem, make_mask, run_lakefill, score


def _timed(networks, seconds: list):
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        out = networks(*args, **kwargs)
        seconds.append(time.perf_counter() - t0)
        return out
    run.info = getattr(networks, "info", None)
    return run


def _spread(xs):
    xs = [x for x in xs if x is not None]
    return (float(np.mean(xs)), float(np.std(xs))) if xs else (None, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CSV files, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from lakefill.transforms.spark import distributed_trainer

    spark = (SparkSession.builder.master(f"local[{args.processes}]").appName("lakefill-distributed")
             .config("spark.ui.enabled", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {"protocol": "H", "processes": args.processes, "missing_rate": args.rate, "seeds": seeds,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
           "tables": {}}
    print(f"{'table':<12} {'seed':>4} {'trainer':<18} {'rmse':>8} {'accuracy':>8} {'fit s':>7} {'networks s':>10}")
    try:
        for path in [Path(p) for p in args.data.split(",") if p]:
            problem = load_problem(path, None)
            runs = []
            for seed in seeds:
                mask = make_mask(problem, rate=args.rate, mechanism="mcar", seed=seed)
                masked = _masked_table(problem, mask)
                for name, networks in (("local", train_networks),
                                       ("torch_distributor", distributed_trainer(spark, args.processes))):
                    net_s: list[float] = []
                    t0 = time.perf_counter()
                    fitted = fit_model(masked, problem.schema, config=AEConfig(random_state=seed),
                                       networks=_timed(networks, net_s))
                    fit_s = time.perf_counter() - t0
                    Xhat, Chat, *_ = run_lakefill(problem, mask, seed, reverse=False, fitted=fitted, fit_s=fit_s)
                    rmse, acc, _ = score(problem, mask, Xhat, Chat)
                    runs.append({"seed": seed, "trainer": name, "rmse": rmse, "accuracy": acc, "fit_seconds": fit_s,
                                 "networks_seconds": net_s[0], "val_loss": fitted.result.val_loss})
                    print(f"{problem.name:<12} {seed:>4} {name:<18} {rmse if rmse is not None else float('nan'):>8.4f} "
                          f"{acc if acc is not None else float('nan'):>8.4f} {fit_s:>7.1f} {net_s[0]:>10.1f}", flush=True)
            summary = {}
            for name in ("local", "torch_distributor"):
                mine = [r for r in runs if r["trainer"] == name]
                summary[name] = {key: _spread([r[key] for r in mine])
                                 for key in ("rmse", "accuracy", "fit_seconds", "networks_seconds")}
            out["tables"][problem.name] = {"rows": problem.table.num_rows, "runs": runs, "summary": summary}
            for name, s in summary.items():
                cells = "  ".join(f"{k} {m:.4f}±{sd:.4f}" if k in ("rmse", "accuracy") else f"{k} {m:.1f}"
                                  for k, (m, sd) in s.items() if m is not None)
                print(f"{problem.name:<12} mean {name:<18} {cells}")
    finally:
        spark.stop()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How many steps reverse training needs: its effect and its cost against the number of steps.

    python -m benchmarks.reverse_steps --data PATH.csv [--seed 0] [--steps 60,20,10,20/5] [--json OUT.json]

Protocol A's set-up (20% MCAR mask of the seed, the model fitted on the masked table itself),
then reverse training with each step count on two sets of rows: the 20% least-confident rows
(``lakefill-reverse`` in protocol A) and the rows under the pipeline's default confidence
threshold. For each: RMSE over the set's hidden numeric cells (min-max scale) with the direct
fill and with the fill the per-row rule keeps, the share of rows that kept a refinement, and
reverse-training rows/s (this process's torch threads). Everything else is ``ReverseConfig``'s
default; the held-back check runs once, at the last step. ``S/P`` runs S steps with the early
stop at step P (``ReverseConfig.prune_at``: rows whose held-back error has not gone down by then
stop; the check at P is a candidate too); ``S`` alone has no early stop.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from lakefill.pipelines.evaluate import _masked_table, load_problem, make_mask
from lakefill.models.config import AEConfig
from lakefill.models.mixture import direct_fill_inputs, predict
from lakefill.models.reverse import ReverseConfig, reverse_impute
from lakefill.models.training import fit_model


def run(data: Path, seed: int, steps: list[str], threshold: float) -> dict:
    problem = load_problem(data, None)
    mask = make_mask(problem, rate=0.2, mechanism="mcar", seed=seed)
    masked = _masked_table(problem, mask)
    fitted = fit_model(masked, problem.schema, config=AEConfig(random_state=seed))
    codec, model = fitted.codec, fitted.model
    enc = codec.encode(masked)
    pred = predict(model, enc.values, enc.observed, num_weights=codec.error_weights())
    fill = ~enc.observed
    n_fill = fill.sum(1)
    err = np.where(n_fill > 0, (pred.cell_error * fill).sum(1) / np.maximum(n_fill, 1), 0.0)
    confidence = np.where(n_fill > 0, 1.0 / (1.0 + err / fitted.result.error_reference), 1.0)
    init = direct_fill_inputs(model, enc.values, enc.observed, pred)
    order = np.argsort(confidence, kind="stable")
    k = int(math.ceil(0.2 * len(order)))
    sets = {"least_confident_20pct": np.sort(order[:k][n_fill[order[:k]] > 0]),
            f"confidence_below_{threshold}": np.flatnonzero((confidence < threshold) & (n_fill > 0))}
    n_num = len(codec.num_columns_)
    cols = [codec.num_columns_.index(c) for c in problem.num_cols]
    lo, hi = problem.X.min(0), problem.X.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)

    def rmse(num: np.ndarray, rows: np.ndarray) -> float:
        X = np.stack([codec.unscale(c, num[:, j]) for j, c in enumerate(codec.num_columns_)], 1)[:, cols]
        hidden = mask[rows][:, : len(problem.num_cols)]
        sq = (((X - problem.X[rows]) / span) ** 2)[hidden]
        return float(np.sqrt(sq.mean())) if sq.size else float("nan")

    out = {"dataset": problem.name, "seed": seed, "confidence_threshold": threshold, "sets": {}}
    for name, rows in sets.items():
        entry = {"rows": int(len(rows)), "direct_rmse": rmse(pred.num[rows], rows) if len(rows) else None, "runs": []}
        for spec in steps if len(rows) else []:
            n, _, prune = spec.partition("/")
            n, prune = int(n), int(prune or 0)
            cfg = ReverseConfig(steps=n, check_every=n, prune_at=prune, random_state=seed)
            t = time.perf_counter()
            res = reverse_impute(model, enc.values[rows], enc.observed[rows], enc.targets_num[rows],
                                 enc.targets_cat[rows], init[rows], config=cfg)
            seconds = time.perf_counter() - t
            keep = fill[rows][:, :n_num] & res.improved[:, None]
            num = np.where(keep, res.num, pred.num[rows])
            r = rmse(num, rows)
            entry["runs"].append({"steps": n, "prune_at": prune, "rmse": r, "change": r - entry["direct_rmse"],
                                  "kept_share": float(res.improved.mean()), "rows_per_s": len(rows) / seconds})
        out["sets"][name] = entry
    return out


def format_table(out: dict) -> str:
    lines = [f"{out['dataset']}, seed {out['seed']}: RMSE of the re-worked rows' hidden numeric cells",
             f"{'rows':<28}{'steps':>6}{'direct':>9}{'kept fill':>11}{'change':>10}{'kept':>7}{'rows/s':>9}"]
    for name, e in out["sets"].items():
        for r in e["runs"]:
            lines.append(f"{name + ' (' + str(e['rows']) + ')':<28}{_spec(r):>6}{e['direct_rmse']:>9.5f}"
                         f"{r['rmse']:>11.5f}{r['change']:>+10.5f}{r['kept_share']:>7.2f}{r['rows_per_s']:>9,.0f}")
    return "\n".join(lines)


def _spec(run: dict) -> str:
    return f"{run['steps']}/{run['prune_at']}" if run.get("prune_at") else str(run["steps"])


def main(argv: list[str] | None = None) -> int:
    from lakefill.pipelines.config import JobConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default="60,20,10")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    threshold = JobConfig.model_fields["confidence_threshold"].default
    out = run(Path(args.data), args.seed, args.steps.split(","), threshold)
    print(format_table(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The exact-posterior ceiling of an all-categorical table, under protocol A's masks.

    python -m benchmarks.posterior_bound --data PATH.csv [--missing-rate 0.2] [--seeds 0,1,2] --json OUT.json

When a table's rows are its whole population (nursery: every combination of its 8 attributes
once, the class a function of them), the best any imputer can do for a hidden cell is the
distribution of that cell among the table's rows that agree with the row's observed cells. This
imputer reads the complete table, so it is not a method but a ceiling: it picks each hidden
cell's most frequent value among those rows, and its confidence is its own expected mean error
(1 - the picked value's share, averaged over the row's hidden cells). Scored as protocol A
(accuracy over the hidden cells; the Spearman correlation of (1 - confidence) with the row's
mean 0/1 error; the share of the errors carried by the 20% least-confident rows), on the masks
``lakefill evaluate`` draws for the same seeds. For comparison: ``ranked_by_expected_errors``
(the row's expected number of wrong cells, not their mean).

``median_candidates``: the median number of rows that agree with a masked row's observed cells.
At 1 the row is unique given what is left of it, the "posterior" is the answer itself and the
figures bound nothing (``informative: false``): a table of measurements is not a population.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lakefill.pipelines.evaluate import _rank_quality, load_problem, make_mask


def posterior(C: list[np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: the posterior pick's error (0/1), its expected error, and the candidate rows'
    count (0 where the cell is not hidden)."""
    V = np.stack([np.unique(c, return_inverse=True)[1].ravel() for c in C], 1)
    n, m = V.shape
    wrong, expected, candidates = np.zeros((n, m)), np.zeros((n, m)), np.zeros((n, m))
    patterns, which = np.unique(mask, axis=0, return_inverse=True)
    which = which.ravel()
    for p, hidden in enumerate(patterns):
        rows = np.flatnonzero(which == p)
        seen = ~hidden
        key = np.ravel_multi_index(V[:, seen].T, V[:, seen].max(0) + 1) if seen.any() else np.zeros(n, dtype=np.int64)
        for j in np.flatnonzero(hidden):
            counts = np.zeros((key.max() + 1, V[:, j].max() + 1))
            np.add.at(counts, (key, V[:, j]), 1)
            c = counts[key[rows]]
            share = c / c.sum(1, keepdims=True)
            wrong[rows, j] = share.argmax(1) != V[rows, j]
            expected[rows, j] = 1 - share.max(1)
            candidates[rows, j] = c.sum(1)
    return wrong, expected, candidates


def bound(data: Path, *, missing_rate: float, seeds: list[int]) -> dict:
    problem = load_problem(Path(data), None)
    if problem.num_cols or not problem.cat_cols:
        raise ValueError(f"{data}: the posterior ceiling is for all-categorical tables; numeric column(s) {problem.num_cols}")
    per = []
    for seed in seeds:
        mask = make_mask(problem, rate=missing_rate, mechanism="mcar", seed=seed)
        wrong, expected, candidates = posterior(problem.C, mask)
        n_h = np.maximum(mask.sum(1), 1)
        mean_err = (expected * mask).sum(1) / n_h
        rho, share = _rank_quality(mask, wrong, 1 - mean_err)
        rho_sum, share_sum = _rank_quality(mask, wrong, -(expected * mask).sum(1))
        rows = mask.any(1)
        per.append({"accuracy": float(1 - wrong[mask].mean()), "confidence_spearman": rho,
                    "least_confident_20pct_error_share": share,
                    "ranked_by_expected_errors": {"confidence_spearman": rho_sum, "least_confident_20pct_error_share": share_sum},
                    "median_candidates": float(np.median(np.where(mask, candidates, np.inf).min(1)[rows]))})
    out = {key: float(np.mean([p[key] for p in per])) for key in ("accuracy", "confidence_spearman",
                                                                 "least_confident_20pct_error_share", "median_candidates")}
    out["ranked_by_expected_errors"] = {k: float(np.mean([p["ranked_by_expected_errors"][k] for p in per]))
                                        for k in ("confidence_spearman", "least_confident_20pct_error_share")}
    out["informative"] = out["median_candidates"] > 1
    return {"dataset": problem.name, "rows": int(problem.table.num_rows), "columns": len(problem.cat_cols),
            "missing_rate": missing_rate, "mechanism": "mcar", "seeds": seeds, "posterior": out, "per_seed": per}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.posterior_bound", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="an all-categorical CSV (the complete table)")
    ap.add_argument("--missing-rate", type=float, default=0.2, help="MCAR rate, as lakefill evaluate (default 0.2)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated mask seeds (default 0,1,2)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    try:
        out = bound(args.data, missing_rate=args.missing_rate, seeds=[int(s) for s in args.seeds.split(",")])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = out["posterior"]
    print(f"{out['dataset']}: {out['rows']} rows x {out['columns']} columns, {args.missing_rate:.0%} MCAR, seeds {out['seeds']}")
    print(f"exact posterior: accuracy {p['accuracy']:.4f}, confidence Spearman {p['confidence_spearman']:.3f}, "
          f"20% least-confident rows carry {p['least_confident_20pct_error_share']:.1%} of the errors; "
          f"ranked by expected errors: {p['ranked_by_expected_errors']['confidence_spearman']:.3f}, "
          f"{p['ranked_by_expected_errors']['least_confident_20pct_error_share']:.1%}; "
          f"median candidates {p['median_candidates']:g}{'' if p['informative'] else ' (not informative)'}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

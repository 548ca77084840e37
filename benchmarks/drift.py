"""Protocol E (docs/benchmarks.md): drift. The model is trained on one part of a table and fills
another part that differs, through the pipeline's own stage (``Imputer.impute``, then
``Imputer.refine`` on the rows under the confidence threshold).

    python -m benchmarks.drift --data PATH.csv [--seeds 0,1,2] [--threshold 0.15] --json OUT.json

Split rule, the same for every table: the rows complete in the scored columns (as in protocol
A) are sorted by the table's first scored column (numbers by value, categories by their text;
ties keep the file's order); the first half trains the model (complete rows, no holes), the
second half is imputed: each of its cells is hidden with probability ``--missing-rate`` (0.2,
seeded, as protocol A's MCAR). For letter that is its first feature's low half against its
high half; for an all-categorical table, the first column's categories in text order.

``--mnist PATH.npz``: the same protocol on MNIST (protocol B's data): the images of digits 0-4
train protocol B's masked network (its config, ``--epochs``), the images of digits 5-9 get 20%
MCAR pixel holes and are imputed; scored by protocol B's metric (a hidden pixel is right when
|x_hat - x| < 0.5; ``accuracy``). The direct fill's confidence is the stage's (predicted
variance over the training run's reference), routed under ``--threshold``.

Scores as in protocol A (RMSE on the complete table's min-max scale over hidden numeric cells;
accuracy over hidden categorical cells), each on: every imputed row with the direct fill
(``direct``); the rows the side stage takes (confidence under ``--threshold``, the job's
``confidence_threshold``), with the direct fill (``routed.direct``) and with the side stage's
(``routed.side``: a row whose held-back cells did not get better keeps its direct fill); every
imputed row with the side stage's fill on the routed rows (``all_rows_with_side``). Also the
share of rows routed, the rows whose refinement was kept, and the seconds of training, of the
direct pass and of the side stage (rows/s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill._drift import drift_of, profile_table
from lakefill.models.artifact import load_artifact, save_artifact
from lakefill.models.config import AEConfig
from lakefill.models.training import fit_model
from lakefill.pipelines.config import JobConfig
from lakefill.pipelines.evaluate import Problem, _masked_table, load_problem, make_mask, table_values
from lakefill.models.adapt import AdaptConfig
from lakefill.models.reverse import ReverseConfig
from lakefill.transforms.impute import CONFIDENCE, METHOD, Imputer
from lakefill.transforms.io import ROW_ID

DEFAULT_THRESHOLD = JobConfig.model_fields["confidence_threshold"].default  # a job's default


def split(problem: Problem) -> tuple[np.ndarray, np.ndarray, str]:
    """(train rows, imputed rows, split column): the first scored column's lower half trains."""
    column = [c for c in problem.table.column_names if c in problem.num_cols + problem.cat_cols][0]
    if column in problem.num_cols:
        key = problem.X[:, problem.num_cols.index(column)]
    else:
        key = problem.C[problem.cat_cols.index(column)]
    order = np.argsort(key, kind="stable")
    half = len(order) // 2
    return np.sort(order[:half]), np.sort(order[half:]), column


def subset(problem: Problem, rows: np.ndarray) -> Problem:
    return replace(problem, X=problem.X[rows], C=[c[rows] for c in problem.C], table=problem.table.take(pa.array(rows)))


def scores(problem: Problem, full: Problem, mask: np.ndarray, X: np.ndarray, C: list[np.ndarray],
           rows: np.ndarray) -> dict:
    """RMSE (min-max scale of the whole complete table ``full``) and accuracy over ``rows``' hidden cells."""
    d = len(problem.num_cols)
    out = {"rmse": None, "accuracy": None, "rows": int(rows.sum())}
    if d:
        lo, hi = full.X.min(0), full.X.max(0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        h = mask[:, :d] & rows[:, None]
        if h.any():
            out["rmse"] = float(np.sqrt((((X - problem.X) / span) ** 2)[h].mean()))
    if problem.C:
        hits = total = 0
        for k, c in enumerate(problem.C):
            h = mask[:, d + k] & rows
            hits += int((C[k][h] == c[h]).sum())
            total += int(h.sum())
        out["accuracy"] = hits / total if total else None
    return out


SIDES = ("reverse", "adapt", "side")  # reverse training alone; the adapted fill alone; both (the stage with adapt)


def default_stage(profile: dict, run_rows: pa.Table, thresholds: dict, adapt_report: dict, adapted: dict,
                  side: dict) -> dict:
    """What a job's default stage (``on_drift: adapt_all``) does with the imputed part: its
    observed cells against the training rows' profile (``lakefill._drift``, the run's drift
    check); drifted, with the adaptation accepted: every row through the adapted networks;
    otherwise the side stage. Returns the check, the action and the scores of that fill."""
    check, drifted = drift_of(profile, run_rows, thresholds)
    adapt_all = bool(drifted) and bool(adapt_report.get("used"))
    return {"drifted": drifted, "columns_checked": len(check),
            "action": "adapt_all" if adapt_all else "side stage" if not drifted else "side stage (adaptation not used)",
            "all_rows": adapted if adapt_all else side}


def run(data: Path, *, seed: int, missing_rate: float, threshold: float, config: AEConfig,
        adapt: AdaptConfig | None = None, reverse: ReverseConfig = ReverseConfig()) -> dict:
    full = load_problem(Path(data), None)
    train_rows, test_rows, column = split(full)
    train, test = subset(full, train_rows), subset(full, test_rows)
    mask = make_mask(test, rate=missing_rate, mechanism="mcar", seed=seed)
    t0 = time.perf_counter()
    fitted = fit_model(train.table, full.schema, config=config)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(tmp, model=fitted.model, codec=fitted.codec, schema=full.schema, policy=None, config=config,
                      metrics=fitted.metrics, error_reference=fitted.result.error_reference)
        artifact = load_artifact(tmp)
    imputer = Imputer(artifact, reverse=reverse)
    no_steps = Imputer(artifact, reverse=replace(reverse, steps=0))
    masked = _masked_table(test, mask)
    if ROW_ID not in masked.column_names:  # the row's key: its held-back cells and random draws follow it
        masked = masked.append_column(ROW_ID, pa.array(np.arange(masked.num_rows), pa.int64()))
    t0 = time.perf_counter()
    direct = imputer.impute(masked)
    direct_s = time.perf_counter() - t0
    routed = np.asarray(pc.less(direct.column(CONFIDENCE), threshold).to_numpy(zero_copy_only=False), dtype=bool)
    every = mask.any(axis=1)
    routed &= every
    t0 = time.perf_counter()  # the run's rows: the adaptation sees their observed cells (never the hidden truth)
    adapted, adapt_report = imputer.adapt(direct, adapt or AdaptConfig(random_state=seed))
    adapt_s = time.perf_counter() - t0
    Xd, Cd = table_values(direct, test.num_cols, test.cat_cols)
    # for comparison, not a stage path: every row filled by the adapted networks' direct pass
    Xa, Ca = table_values(Imputer(replace(artifact, model=adapted)).impute(masked), test.num_cols, test.cat_cols)
    low = direct.filter(pa.array(routed))
    idx = np.nonzero(routed)[0]
    out_sides, seconds, kept = {}, {}, {}
    for side in SIDES:
        worker = no_steps if side == "adapt" else imputer
        t0 = time.perf_counter()
        part = worker.refine(low, adapted=adapted if side != "reverse" else None)
        seconds[side] = time.perf_counter() - t0
        Xs, Cs = Xd.copy(), [c.copy() for c in Cd]
        if len(idx):
            Xr, Cr = table_values(part, test.num_cols, test.cat_cols)
            Xs[idx] = Xr
            for k in range(len(Cs)):
                Cs[k][idx] = Cr[k]
        kept[side] = int(sum(m == "reverse" for m in part.column(METHOD).to_pylist())) if len(idx) else 0
        out_sides[side] = (Xs, Cs)
    return {
        "seed": seed,
        "split": {"column": column, "rule": "first scored column, lower half trains", "train_rows": int(len(train_rows)),
                  "impute_rows": int(len(test_rows))},
        "direct": scores(test, full, mask, Xd, Cd, every),
        "routed": {"direct": scores(test, full, mask, Xd, Cd, routed),
                   **{side: scores(test, full, mask, *out_sides[side], routed) for side in SIDES}},
        "all_rows_with_side": {side: scores(test, full, mask, *out_sides[side], every) for side in SIDES},
        "all_rows_adapted_direct": scores(test, full, mask, Xa, Ca, every),
        "default_stage": default_stage(profile_table(train.table, full.schema), masked,
                                       {c.name: c.drift_threshold for c in full.schema.columns}, adapt_report,
                                       scores(test, full, mask, Xa, Ca, every), scores(test, full, mask, *out_sides["side"], every)),
        "routed_share": float(routed.sum() / max(every.sum(), 1)),
        "rows_kept_refined": kept,
        "adapt": adapt_report,
        "train_seconds": round(train_s, 2),
        "adapt_seconds": round(adapt_s, 2),
        "direct_rows_per_s": round(len(test_rows) / max(direct_s, 1e-9), 1),
        "side_rows_per_s": {side: round(len(idx) / max(seconds[side], 1e-9), 1) if len(idx) else None for side in SIDES},
    }


def run_mnist(path: Path, *, seed: int, missing_rate: float, threshold: float, epochs: int,
              adapt: AdaptConfig | None = None, reverse: ReverseConfig = ReverseConfig()) -> dict:
    """Protocol E on MNIST: digits 0-4 train, digits 5-9 are imputed (see the module's docstring)."""
    from lakefill.models.adapt import adapt_model
    from lakefill.models.mixture import predict
    from lakefill.models.training import train_autoencoder
    from lakefill.models.reverse import reverse_impute

    data = np.load(path)
    x = data["x_test"].reshape(len(data["x_test"]), -1).astype(np.float32) / 255.0
    y = np.asarray(data["y_test"])
    train, test, keys = x[y <= 4], x[y >= 5], np.nonzero(y >= 5)[0]
    n_pix = x.shape[1]
    cfg = AEConfig(hidden=512, depth=2, code=128, epochs=epochs, batch_size=128, lr=1e-3, max_hide=0.5, block_hide=0.5,
                   recon_weight=0.5, patience=12, patience_after=0.0, min_steps=0, schedule="onecycle", random_state=seed)
    no_cat = np.zeros((len(test), 0), np.int64)
    t0 = time.perf_counter()
    res = train_autoencoder(train, np.ones_like(train, dtype=bool), train, np.zeros((len(train), 0), np.int64),
                            col_slices=[(j, j + 1) for j in range(n_pix)], n_num=n_pix, cat_sizes=[], config=cfg)
    train_s = time.perf_counter() - t0
    hidden = np.random.default_rng(seed).random(test.shape) < missing_rate
    observed = ~hidden
    blank = np.where(observed, test, 0.0).astype(np.float32)
    t0 = time.perf_counter()
    pred = predict(res.model, blank, observed)
    direct = np.where(observed, test, np.clip(pred.num, 0, 1)).astype(np.float32)
    direct_s = time.perf_counter() - t0
    n_fill = hidden.sum(1)
    err = (pred.cell_error * hidden).sum(1) / np.maximum(n_fill, 1)
    every = n_fill > 0
    routed = (1.0 / (1.0 + err / res.error_reference) < threshold) & every
    t0 = time.perf_counter()
    adapted, adapt_report = adapt_model(res.model, blank, observed, blank, no_cat, row_keys=keys,
                                        config=adapt or AdaptConfig(random_state=seed), reverse=reverse)
    adapt_s = time.perf_counter() - t0
    idx = np.nonzero(routed)[0]
    every_adapted = np.where(observed, test, np.clip(predict(adapted, blank, observed).num, 0, 1))
    fills, kept, seconds = {}, {}, {}
    for side in SIDES:
        fill, t0 = direct.copy(), time.perf_counter()
        if len(idx):
            r = reverse_impute(res.model, blank[idx], observed[idx], blank[idx], no_cat[idx], direct[idx],
                               config=replace(reverse, steps=0) if side == "adapt" else reverse, row_keys=keys[idx],
                               adapted=None if side == "reverse" or adapted is res.model else adapted)
            use = r.improved[:, None] & hidden[idx]
            fill[idx] = np.where(use, np.clip(r.num, 0, 1), direct[idx])
            kept[side] = int(r.improved.sum())
        seconds[side] = time.perf_counter() - t0
        fills[side] = fill

    def score(f, rows):
        h = hidden & rows[:, None]
        return {"rmse": None, "accuracy": float((np.abs(f - test) < 0.5)[h].mean()) if h.any() else None,
                "rows": int(rows.sum())}

    from lakefill.schema import TableSchema

    names = [f"p{j}" for j in range(n_pix)]
    schema = TableSchema.model_validate({"name": "mnist", "columns": [{"name": c, "type": "numeric", "impute": True}
                                                                       for c in names]})
    train_t = pa.table({c: train[:, j].astype(np.float64) for j, c in enumerate(names)})
    run_t = pa.table({c: pa.array(test[:, j].astype(np.float64), mask=hidden[:, j]) for j, c in enumerate(names)})
    default = default_stage(profile_table(train_t, schema), run_t, {}, adapt_report, score(every_adapted, every),
                            score(fills["side"], every))
    return {
        "seed": seed,
        "split": {"column": "digit", "rule": "digits 0-4 train, 5-9 imputed", "train_rows": int(len(train)),
                  "impute_rows": int(len(test))},
        "default_stage": default,
        "direct": score(direct, every),
        "routed": {"direct": score(direct, routed), **{side: score(fills[side], routed) for side in SIDES}},
        "all_rows_with_side": {side: score(fills[side], every) for side in SIDES},
        "all_rows_adapted_direct": score(every_adapted, every),
        "routed_share": float(routed.sum() / max(every.sum(), 1)),
        "rows_kept_refined": {side: kept.get(side, 0) for side in SIDES},
        "adapt": adapt_report,
        "train_seconds": round(train_s, 2),
        "adapt_seconds": round(adapt_s, 2),
        "direct_rows_per_s": round(len(test) / max(direct_s, 1e-9), 1),
        "side_rows_per_s": {side: round(len(idx) / max(seconds[side], 1e-9), 1) if len(idx) else None for side in SIDES},
    }


def _mean(results: list[dict], *path) -> float | None:
    values = []
    for r in results:
        v = r
        for p in path:
            v = v[p]
        if v is not None:
            values.append(v)
    return float(np.mean(values)) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.drift", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="a complete CSV table (protocol A's)")
    src.add_argument("--mnist", type=Path, help="MNIST as protocol B reads it (.npz with x_test, y_test)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the MNIST network (--mnist)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the holes and the model")
    ap.add_argument("--missing-rate", type=float, default=0.2)
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help=f"rows under this confidence go to the side stage (default {DEFAULT_THRESHOLD}, a job's)")
    ap.add_argument("--ae-config", help="JSON overrides of the autoencoder settings (for experiments)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    source = args.data or args.mnist
    if not source.exists():
        ap.error(f"{'--data' if args.data else '--mnist'} {source}: no such file")
    if not 0 < args.missing_rate < 1 or not 0 < args.threshold <= 1:
        ap.error("--missing-rate must be in (0, 1) and --threshold in (0, 1]")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be integers separated by commas, got {args.seeds!r}")
    overrides = json.loads(args.ae_config) if args.ae_config else {}
    if args.mnist:
        runs = [run_mnist(args.mnist, seed=s, missing_rate=args.missing_rate, threshold=args.threshold,
                          epochs=args.epochs) for s in seeds]
    else:
        runs = [run(args.data, seed=s, missing_rate=args.missing_rate, threshold=args.threshold,
                    config=AEConfig.from_dict({**overrides, "random_state": s})) for s in seeds]
    out = {"protocol": "E", "dataset": "mnist_digits" if args.mnist else args.data.stem, "missing_rate": args.missing_rate, "threshold": args.threshold,
           "seeds": seeds, "runs": runs}
    for key in ("rmse", "accuracy"):
        out[key] = {"direct": _mean(runs, "direct", key), "routed_direct": _mean(runs, "routed", "direct", key),
                    **{f"routed_{side}": _mean(runs, "routed", side, key) for side in SIDES},
                    **{("all_rows_with_side" if side == "side" else f"all_rows_{side}"):
                       _mean(runs, "all_rows_with_side", side, key) for side in SIDES}}
        out[key]["all_rows_adapted_direct"] = _mean(runs, "all_rows_adapted_direct", key)
        out[key]["all_rows_default"] = _mean(runs, "default_stage", "all_rows", key)
    out["routed_share"] = _mean(runs, "routed_share")
    split_ = runs[0]["split"]
    print(f"{out['dataset']}: trained on {split_['train_rows']} rows ({split_['rule']}: {split_['column']!r}), imputed {split_['impute_rows']}, seeds {seeds}, "
          f"routed {out['routed_share']:.1%} (confidence < {args.threshold})")
    nan = float("nan")
    for key in ("rmse", "accuracy"):
        r = out[key]
        if r["direct"] is not None:
            print(f"  {key:<8} all rows: direct {r['direct']:.4f}, reverse {r['all_rows_reverse']:.4f}, "
                  f"adapt {r['all_rows_adapt']:.4f}, side stage {r['all_rows_with_side']:.4f} | every row by the adapted "
                  f"networks {r['all_rows_adapted_direct']:.4f}")
            print(f"  {'':<8} routed rows: direct {r['routed_direct'] or nan:.4f}, "
                  + ", ".join(f"{side} {r[f'routed_{side}'] or nan:.4f}" for side in SIDES))
    for key in ("rmse", "accuracy"):
        if out[key]["all_rows_default"] is not None:
            print(f"  {key:<8} all rows, the default stage (on_drift: adapt_all): {out[key]['all_rows_default']:.4f}")
    out["default_actions"] = [r["default_stage"]["action"] for r in runs]
    print(f"  drift check: {sum(bool(r['default_stage']['drifted']) for r in runs)} of {len(runs)} seeds drifted "
          f"({runs[0]['default_stage']['drifted'][:5]}); actions {out['default_actions']}")
    used = sum(bool(r["adapt"]["used"]) for r in runs)
    print(f"  adapted networks used on {used} of {len(runs)} seeds; adaptation {_mean(runs, 'adapt_seconds'):.1f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

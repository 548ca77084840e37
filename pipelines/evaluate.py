"""Protocol A (docs/benchmarks.md): tabular imputation accuracy, lakefill against baselines.

    lakefill evaluate --data PATH.csv [--schema schema.yaml] --missing-rate 0.2 \\
        --mechanism mcar|mar|mnar --seeds 0,1,2 \\
        --methods lakefill,lakefill-reverse,mean,knn,mice,missforest --json OUT.json

Masks (over the imputable columns, seeded by the seed):
- mcar: every cell is hidden independently with probability p.
- mar:  30% of the columns (at least one, drawn by the seed) are never hidden; a cell of any
        other column j is hidden with probability sigmoid(a_j + w_j . s) where s is the row's
        standardised values of the never-hidden columns, w_j ~ N(0, 1) / sqrt(#never-hidden),
        and a_j is found by bisection so that column j's rate is p * d / d_hideable (the
        overall rate is p).
- mnar: self-masking: a cell is hidden with probability sigmoid(a_j + 2 * s_ij), s_ij the
        cell's own standardised value (for a category: +1 for the more frequent half of the
        categories, -1 otherwise); a_j by bisection so that each column's rate is p.

Every method is fitted on the masked table itself (transductive, as in GAIN), then fills it.
Numeric score: RMSE over the hidden numeric cells on the complete data's min-max [0, 1] scale.
Categorical score: accuracy over the hidden categorical cells. lakefill's methods run the
product's path (``Imputer.impute``, ``refine`` and ``adapt``, as a job does); every method is
scored on its unrounded numeric output (lakefill is fitted with integer columns read as numeric;
a job writes them rounded).
lakefill also reports confidence quality: the Spearman correlation between (1 - row
confidence) and the row's true mean error (squared error on the min-max scale for numbers, 0/1
for categories), and the share of the total error carried by the 20% least-confident rows. And
the same two figures if the model's predicted cell errors were exactly right (``_if_calibrated``:
each hidden cell's error drawn from its prediction, a category wrong with probability 1 - max p,
a number's squared error its predicted variance times a chi-square(1) draw; 20 draws seeded by
the seed): the ceiling of a confidence built from this model's predictions, so that a low
Spearman can be told apart from a badly calibrated one (``calibration_categorical`` and
``calibration_numeric``: the hidden cells' mean true error over their mean predicted error);
``_by_expected_errors``: the two figures for the rows ranked by their expected number of errors
(the sum of their cells' predicted errors) instead of the confidence's mean.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill.errors import ConfigError
from lakefill.models.config import AEConfig
from lakefill.models.adapt import AdaptConfig
from lakefill.models.artifact import unsaved_artifact
from lakefill.models.mixture import predict
from lakefill.models.reverse import ReverseConfig
from lakefill.models.training import fit_model
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.impute import CONFIDENCE, IMPUTED, METHOD, Imputer
from lakefill.transforms.io import read_raw
from lakefill.transforms.parse import detect_and_parse
from lakefill.schema import infer_schema, load_schema

METHODS = ("lakefill", "lakefill-reverse", "lakefill-adapt", "mean", "knn", "mice", "missforest")
REVERSE_SHARE = 0.2  # lakefill-reverse re-works the least-confident 20% of the rows
# lakefill-adapt: the same rows, refined through the networks adapted to the table's observed cells (a job's adapt)


@dataclass
class Problem:
    name: str
    num_cols: list[str]
    cat_cols: list[str]
    X: np.ndarray  # (n, n_num) complete numeric values
    C: list[np.ndarray]  # complete categorical values (object arrays)
    table: pa.Table  # complete typed table
    schema: object


def load_problem(data: Path, schema_path: Path | None) -> Problem:
    raw = read_raw(data)
    if schema_path is not None:
        schema = load_schema(schema_path)
    else:
        schema = infer_schema(raw.table, name=data.stem, policy=NullPolicy().fit(raw.table))
    table = detect_and_parse(raw, schema).table
    imputed = [c for c in schema.columns if c.impute]
    num_cols = [c.name for c in imputed if c.type in ("numeric", "integer", "decimal")]  # decimals scored as floats
    cat_cols = [c.name for c in imputed if c.type in ("categorical", "boolean")]
    # only rows complete in the scored columns can be scored
    complete = np.ones(table.num_rows, dtype=bool)
    for c in num_cols + cat_cols:
        complete &= np.asarray(pc.is_valid(table.column(c)))
    table = table.filter(pa.array(complete))
    X, C = table_values(table, num_cols, cat_cols)
    return Problem(data.stem, num_cols, cat_cols, X, C, table, schema)


def table_values(table: pa.Table, num_cols: list[str], cat_cols: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The scored columns of a typed table: numbers as floats (n, n_num), categories as labels."""
    X = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(float) for c in num_cols], 1) \
        if num_cols else np.zeros((table.num_rows, 0))
    C = [np.asarray([_label(v) for v in table.column(c).to_pylist()], dtype=object) for c in cat_cols]
    return X, C


def _label(value) -> str:
    """A category as scored: booleans as the codec names them ("false", "true"), else its text."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _calibrate(logit: np.ndarray, rate: float) -> np.ndarray:
    lo, hi = -50.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return _sigmoid(logit + (lo + hi) / 2)


def make_mask(problem: Problem, *, rate: float, mechanism: str, seed: int) -> np.ndarray:
    """(n, n_num + n_cat) bool, True = hidden. Exact rules in the module docstring."""
    rng = np.random.default_rng(seed)
    S = _standardised(problem)
    n, d = S.shape
    if mechanism == "mcar":
        return rng.random((n, d)) < rate
    if mechanism == "mar":
        k = max(1, int(round(0.3 * d)))
        fixed = rng.choice(d, size=k, replace=False)
        free = np.setdiff1d(np.arange(d), fixed)
        col_rate = min(0.95, rate * d / max(1, len(free)))
        mask = np.zeros((n, d), dtype=bool)
        for j in free:
            w = rng.standard_normal(k) / math.sqrt(k)
            p = _calibrate(S[:, fixed] @ w, col_rate)
            mask[:, j] = rng.random(n) < p
        return mask
    if mechanism == "mnar":
        mask = np.zeros((n, d), dtype=bool)
        for j in range(d):
            p = _calibrate(2.0 * S[:, j], rate)
            mask[:, j] = rng.random(n) < p
        return mask
    raise ValueError(f"unknown mechanism {mechanism!r}; expected mcar, mar or mnar")


def _standardised(problem: Problem) -> np.ndarray:
    parts = []
    if problem.X.shape[1]:
        sd = problem.X.std(0)
        parts.append((problem.X - problem.X.mean(0)) / np.where(sd > 0, sd, 1.0))
    for c in problem.C:
        values, counts = np.unique(c, return_counts=True)
        frequent = set(values[np.argsort(-counts)][: max(1, len(values) // 2)])
        parts.append(np.where(np.isin(c, list(frequent)), 1.0, -1.0)[:, None])
    return np.concatenate(parts, 1)


def _masked_table(problem: Problem, mask: np.ndarray) -> pa.Table:
    t = problem.table
    for j, name in enumerate(problem.num_cols + problem.cat_cols):
        col = t.column(name)
        t = t.set_column(t.column_names.index(name), name, pc.if_else(pa.array(mask[:, j]), pa.scalar(None, col.type), col))
    return t


# ------------------------------------------------------------------------------------ methods
def run_lakefill(problem: Problem, mask: np.ndarray, seed: int, *, reverse: bool, config: AEConfig | None = None,
                 fitted=None, fit_s: float | None = None, adapt: bool = False, train_rows: int | None = None,
                 precision: str = "fp32"):
    """Fit (or take the given fit of the same seed and config) and fill through the product's
    ``Imputer``, as a job does: ``impute`` (its confidence), then, for ``reverse``, ``refine`` on
    the least-confident ``REVERSE_SHARE`` of the rows (with ``adapt``: through the networks
    ``Imputer.adapt`` tuned on the table's observed cells, as a job's ``adapt``). Returns the
    scores' inputs and the fit. ``train_rows``: fit on the training sample of that many rows (the
    product's: the rows with the smallest seeded hashes of their row ids), fill the whole table.
    ``precision``: the fill's forward pass in fp32 or under bfloat16 autocast (the job's)."""
    from lakefill.transforms.io import ROW_ID

    masked = _masked_table(problem, mask)
    ids = pa.array(np.arange(masked.num_rows), pa.int64())  # a row's key is its position (mask, scores, merge)
    masked = (masked.set_column(masked.column_names.index(ROW_ID), ROW_ID, ids) if ROW_ID in masked.column_names
              else masked.append_column(ROW_ID, ids))
    if fitted is None:
        t0 = time.perf_counter()
        fit_on = masked
        if train_rows and train_rows < masked.num_rows:  # the rows the product's sampler draws
            from lakefill.transforms.sample import BottomK

            fit_on = masked.take(BottomK(train_rows, seed).add(masked.select([ROW_ID])).table().column(ROW_ID))
        fitted = fit_model(fit_on, _unrounded(problem.schema), config=config or AEConfig(random_state=seed))
        fit_s = time.perf_counter() - t0
    artifact = unsaved_artifact(fitted, _unrounded(problem.schema), config or AEConfig(random_state=seed))
    imputer = Imputer(artifact, reverse=ReverseConfig(random_state=seed))
    t0 = time.perf_counter()
    out = imputer.impute(masked, precision=precision)
    confidence = out.column(CONFIDENCE).to_numpy()
    extra = {}
    if reverse:
        n_fill = pc.list_value_length(out.column(IMPUTED)).to_numpy()
        order = np.argsort(confidence, kind="stable")
        k = int(math.ceil(REVERSE_SHARE * len(order)))
        rows = np.sort(order[:k][n_fill[order[:k]] > 0])
        adapted = None
        if adapt:
            adapted, report = imputer.adapt(out, AdaptConfig(random_state=seed))
            extra.update(adapt_used=bool(report["used"]), adapt_seconds=float(report.get("seconds", 0.0)))
            adapted = adapted if adapted is not fitted.model else None
        refined = imputer.refine(out.take(rows), adapted=adapted)
        extra.update(refined_rows=int(len(rows)),
                     refined_rows_improved=int(np.sum(np.asarray(refined.column(METHOD).to_pylist()) == "reverse")))
        keep = np.ones(out.num_rows, dtype=bool)
        keep[rows] = False  # the re-worked rows replace theirs, in row order (as a job merges them)
        out = pa.concat_tables([out.filter(pa.array(keep)), refined]).sort_by(ROW_ID)
    imp_s = time.perf_counter() - t0
    Xhat, Chat = table_values(out, problem.num_cols, problem.cat_cols)
    # the calibration diagnostics read the predicted error of every cell, which the table does not carry
    codec = fitted.codec
    enc = codec.encode(masked)
    pred = predict(fitted.model, enc.values, enc.observed, num_weights=codec.error_weights())
    expected = pred.cell_error[:, [codec.num_columns_.index(c) for c in problem.num_cols]
                               + [len(codec.num_columns_) + codec.cat_columns_.index(c) for c in problem.cat_cols]]
    return Xhat, Chat, fit_s, imp_s, confidence, expected, extra, fitted


def _unrounded(schema):
    """The schema lakefill is fitted with here: integer columns as numeric, so that its fill is
    scored unrounded, as the baselines' is (a job writes an integer column rounded)."""
    return schema.model_copy(update={"columns": [c.model_copy(update={"type": "numeric"}) if c.type == "integer" else c
                                                 for c in schema.columns]})


def _design(problem: Problem, mask: np.ndarray, onehot: bool):
    """Baseline input: min-max scaled numerics (masked -> NaN) + categoricals (one-hot or codes)."""
    d_num = len(problem.num_cols)
    Xm = problem.X.copy()
    Xm[mask[:, :d_num]] = np.nan
    lo, hi = np.nanmin(Xm, 0) if d_num else [], np.nanmax(Xm, 0) if d_num else []
    span = np.where((np.asarray(hi) - np.asarray(lo)) > 0, np.asarray(hi) - np.asarray(lo), 1.0) if d_num else 1.0
    parts = [(Xm - lo) / span] if d_num else []
    cat_info = []
    for k, c in enumerate(problem.C):
        hidden = mask[:, d_num + k]
        cats = sorted(set(c[~hidden]))
        code = np.array([cats.index(v) if v in cats else -1 for v in c], dtype=float)
        if onehot:
            block = np.eye(len(cats))[np.maximum(code, 0).astype(int)]
            block[hidden] = np.nan
            parts.append(block)
        else:
            code[hidden] = np.nan
            parts.append(code[:, None])
        cat_info.append(cats)
    return np.concatenate(parts, 1), lo, span, cat_info


def _undesign(problem: Problem, Z: np.ndarray, lo, span, cat_info, onehot: bool):
    d_num = len(problem.num_cols)
    Xhat = Z[:, :d_num] * span + lo if d_num else np.zeros((len(Z), 0))
    Chat, pos = [], d_num
    for cats in cat_info:
        if onehot:
            Chat.append(np.asarray(cats, dtype=object)[Z[:, pos:pos + len(cats)].argmax(1)])
            pos += len(cats)
        else:
            idx = np.clip(np.round(Z[:, pos]), 0, len(cats) - 1).astype(int)
            Chat.append(np.asarray(cats, dtype=object)[idx])
            pos += 1
    return Xhat, Chat


@functools.cache
def _one_shot_forest():  # sklearn is imported only when a baseline runs
    from sklearn.ensemble import RandomForestRegressor

    class OneShotForest(RandomForestRegressor):
        """A random forest that drops its trees once it has predicted: IterativeImputer's
        fit_transform predicts with each column's forest once, and keeping them all (100 trees x
        columns x iterations) is what runs a machine out of memory."""

        def predict(self, X):
            out = super().predict(X)
            self.estimators_ = []
            return out

    return OneShotForest


def run_baseline(method: str, problem: Problem, mask: np.ndarray, seed: int):
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
    from sklearn.linear_model import BayesianRidge

    onehot = method in ("knn", "mice")
    Z, lo, span, cat_info = _design(problem, mask, onehot)
    if method == "mean":
        d_num = len(problem.num_cols)
        imps = [SimpleImputer(strategy="mean")] if d_num else []
        t0 = time.perf_counter()
        out = []
        if d_num:
            out.append(imps[0].fit(Z[:, :d_num]))
        cat_imp = SimpleImputer(strategy="most_frequent").fit(Z[:, d_num:]) if problem.C else None
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        parts = [imps[0].transform(Z[:, :d_num])] if d_num else []
        if cat_imp is not None:
            parts.append(cat_imp.transform(Z[:, d_num:]))
        Zh = np.concatenate(parts, 1)
        return (*_undesign(problem, Zh, lo, span, cat_info, onehot), fit_s, time.perf_counter() - t0)
    if method == "knn":
        imp = KNNImputer(n_neighbors=5)
    elif method == "mice":
        imp = IterativeImputer(estimator=BayesianRidge(), max_iter=10, random_state=seed, sample_posterior=False)
    elif method == "missforest":
        # transductive: fit_transform fills the table as it fits, each forest dropped once it has
        # predicted (``_one_shot_forest``): the numbers fit + transform gave, one forest in memory
        # instead of every iteration's (a 30,000 x 24 table needed more than 24 GB)
        imp = IterativeImputer(estimator=_one_shot_forest()(n_estimators=100, max_features="sqrt", n_jobs=-1, random_state=seed),
                               max_iter=10, random_state=seed, initial_strategy="mean")
        t0 = time.perf_counter()
        Zh = imp.fit_transform(Z)
        return (*_undesign(problem, Zh, lo, span, cat_info, onehot), time.perf_counter() - t0, 0.0)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    imp.fit(Z)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Zh = imp.transform(Z)
    return (*_undesign(problem, Zh, lo, span, cat_info, onehot), fit_s, time.perf_counter() - t0)


class PeakMemory:
    """The peak resident memory a block of work adds to this process: ``/proc/self/statm``
    polled every ``every`` seconds from a thread, the largest value less the value at the start
    (``mb``; None where /proc is not there). A method's memory, measured where it runs."""

    def __init__(self, every: float = 0.02):
        self.every, self.mb = every, None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> "PeakMemory":
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            rss = self._rss()
            if rss is not None and self.peak is not None:
                self.peak = max(self.peak, rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        rss = self._rss()
        if self.start is not None and rss is not None:
            self.peak = max(self.peak, rss)
            self.mb = (self.peak - self.start) / 2**20


# ------------------------------------------------------------------------------------ scoring
def score(problem: Problem, mask: np.ndarray, Xhat: np.ndarray, Chat: list[np.ndarray]):
    d_num = len(problem.num_cols)
    rmse = acc = None
    sq = np.zeros_like(problem.X)
    if d_num:
        lo, hi = problem.X.min(0), problem.X.max(0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        sq = ((Xhat - problem.X) / span) ** 2
        h = mask[:, :d_num]
        rmse = float(np.sqrt(sq[h].mean())) if h.any() else None
    if problem.C:
        hits = total = 0
        for k, c in enumerate(problem.C):
            h = mask[:, d_num + k]
            hits += int((Chat[k][h] == c[h]).sum())
            total += int(h.sum())
        acc = hits / total if total else None
    return rmse, acc, sq


def confidence_quality(problem: Problem, mask: np.ndarray, sq: np.ndarray, confidence: np.ndarray, Chat,
                       expected: np.ndarray | None = None, seed: int = 0, draws: int = 20) -> dict:
    """The confidence's two figures on the true errors; with ``expected`` (the predicted error of
    every cell, the problem's columns in order) also their calibrated ceiling (module docstring)."""
    cell_err = np.concatenate([sq] + [(Chat[k] != c).astype(float)[:, None] for k, c in enumerate(problem.C)], 1)
    out = dict(zip(("confidence_spearman", "least_confident_20pct_error_share"), _rank_quality(mask, cell_err, confidence)))
    if expected is None:
        return out
    is_num = np.arange(cell_err.shape[1]) < len(problem.num_cols)
    rng = np.random.default_rng(seed)
    ceiling = np.mean([_rank_quality(mask, np.where(is_num, expected * rng.chisquare(1, expected.shape),
                                                    rng.random(expected.shape) < expected), confidence)
                       for _ in range(draws)], axis=0)
    out.update(confidence_spearman_if_calibrated=float(ceiling[0]), least_confident_20pct_error_share_if_calibrated=float(ceiling[1]))
    # the other ranking these predictions give: by the row's expected number of errors, not their mean
    by_sum = _rank_quality(mask, cell_err, -(expected * mask).sum(1))
    out.update(confidence_spearman_by_expected_errors=by_sum[0], least_confident_20pct_error_share_by_expected_errors=by_sum[1])
    for kind, cols in (("numeric", is_num), ("categorical", ~is_num)):
        h = mask & cols
        if h.any():
            out[f"calibration_{kind}"] = float(cell_err[h].mean() / max(expected[h].mean(), 1e-12))
    return out


def _rank_quality(mask: np.ndarray, cell_err: np.ndarray, confidence: np.ndarray) -> tuple[float, float]:
    """Spearman of (1 - confidence) with the rows' mean error; the 20% least-confident rows' share of the error."""
    from scipy.stats import spearmanr

    n_h = mask.sum(1)
    rows = n_h > 0
    row_sum = (cell_err * mask).sum(1)[rows]
    conf = confidence[rows]
    rho = float(spearmanr(1 - conf, row_sum / n_h[rows]).statistic)
    order = np.argsort(conf, kind="stable")
    k = int(math.ceil(0.2 * len(order)))
    return rho, float(row_sum[order[:k]].sum() / max(row_sum.sum(), 1e-12))


def evaluate(*, data: Path, schema: Path | None, missing_rate: float, mechanism: str, seeds: list[int],
             methods: list[str], log=print, ae_config: dict | None = None, train_rows: int | None = None,
             precision: list[str] | str = "fp32") -> dict:
    """Protocol A. ``precision``: the lakefill methods' fill in fp32 or bf16; several (``["fp32",
    "bf16"]``) fill from the same fit, the ones after the first reported as ``<method>@<precision>``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {unknown}; expected some of {', '.join(METHODS)}")
    precisions = [precision] if isinstance(precision, str) else list(precision)
    if not precisions or set(precisions) - {"fp32", "bf16"} or len(set(precisions)) < len(precisions):
        raise ConfigError(f"--precision must be fp32, bf16 or both (comma-separated), got {','.join(precisions)}")
    methods = [m + ("" if p == precisions[0] else f"@{p}") for m in methods
               for p in (precisions if m.startswith("lakefill") else precisions[:1])]
    if not 0 < missing_rate < 1:
        raise ConfigError(f"--missing-rate must be in (0, 1), got {missing_rate}")
    problem = load_problem(Path(data), schema)
    per: dict[str, dict[str, list]] = {m: {"rmse": [], "accuracy": [], "fit": [], "impute": [], "peak_mb": []}
                                       for m in methods}
    extras: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in seeds:
        mask = make_mask(problem, rate=missing_rate, mechanism=mechanism, seed=seed)
        fit = None  # lakefill and lakefill-reverse share one fit per seed (training is deterministic)
        for m in methods:
            memory = PeakMemory()
            if m.startswith("lakefill"):
                name, _, prec = m.partition("@")
                cfg = AEConfig.from_dict({**(ae_config or {}), "random_state": seed})
                with memory:
                    Xhat, Chat, fit_s, imp_s, conf, expected, extra, fitted = run_lakefill(
                        problem, mask, seed, reverse=name in ("lakefill-reverse", "lakefill-adapt"), config=cfg,
                        adapt=name == "lakefill-adapt", train_rows=train_rows, precision=prec or precisions[0],
                        fitted=fit[0] if fit else None, fit_s=fit[1] if fit else None)
                fit = (fitted, fit_s)
            else:
                with memory:
                    Xhat, Chat, fit_s, imp_s = run_baseline(m, problem, mask, seed)
                conf, expected, extra = None, None, {}
            rmse, acc, sq = score(problem, mask, Xhat, Chat)
            if conf is not None:
                extra.update(confidence_quality(problem, mask, sq, conf, Chat, expected, seed))
            per[m]["rmse"].append(rmse)
            per[m]["accuracy"].append(acc)
            per[m]["fit"].append(fit_s)
            per[m]["impute"].append(imp_s)
            per[m]["peak_mb"].append(memory.mb)
            extras[m].append(extra)
            peak = "n/a" if memory.mb is None else f"{memory.mb:.0f}MB"
            log(f"  seed {seed} {m:<17} rmse={_f(rmse)} accuracy={_f(acc)} fit={fit_s:.1f}s impute={imp_s:.2f}s "
                f"peak={peak} {extra or ''}")
    results = {}
    for m in methods:
        r = per[m]
        results[m] = {
            "rmse": _mean(r["rmse"]), "rmse_std": _std(r["rmse"]),
            "accuracy": _mean(r["accuracy"]), "accuracy_std": _std(r["accuracy"]),
            "fit_seconds": float(np.mean(r["fit"])), "impute_seconds": float(np.mean(r["impute"])),
            "peak_mb": max((x for x in r["peak_mb"] if x is not None), default=None),
        }
        keys = sorted({k for e in extras[m] for k in e})
        for k in keys:
            results[m][k] = float(np.mean([e[k] for e in extras[m] if k in e]))
    if "missforest" in results:  # each method's fit + impute seconds over missForest's, same run
        base = results["missforest"]["fit_seconds"] + results["missforest"]["impute_seconds"]
        for r in results.values():
            r["seconds_vs_missforest"] = (r["fit_seconds"] + r["impute_seconds"]) / base if base > 0 else None
    return {"dataset": problem.name, "rows": int(problem.table.num_rows),
            "columns": len(problem.num_cols) + len(problem.cat_cols), "missing_rate": missing_rate,
            "mechanism": mechanism, "seeds": seeds, "precision": precisions[0], "results": results,
            **({"train_rows": train_rows} if train_rows else {})}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _std(xs):
    xs = [x for x in xs if x is not None]
    return float(np.std(xs)) if xs else None


def _f(x):
    return "n/a" if x is None else f"{x:.4f}"


def format_table(out: dict) -> str:
    lines = [f"{out['dataset']}: {out['rows']} rows x {out['columns']} columns, {out['missing_rate']:.0%} {out['mechanism'].upper()}, seeds {out['seeds']}",
             f"{'method':<18} {'RMSE':>8} {'±':>7} {'accuracy':>9} {'±':>7} {'fit s':>8} {'impute s':>9} {'peak MB':>8} "
             f"{'x missForest':>13}"]
    for m, r in out["results"].items():
        ratio, peak = r.get("seconds_vs_missforest"), r.get("peak_mb")
        lines.append(f"{m:<18} {_f(r['rmse']):>8} {_f(r['rmse_std']):>7} {_f(r['accuracy']):>9} {_f(r['accuracy_std']):>7} "
                     f"{r['fit_seconds']:>8.1f} {r['impute_seconds']:>9.2f} {'n/a' if peak is None else f'{peak:.0f}':>8} "
                     f"{'' if ratio is None else f'{ratio:.2f}':>13}")
    for m, r in out["results"].items():
        if "confidence_spearman" in r:
            lines.append(f"{m}: confidence Spearman {r['confidence_spearman']:.3f}, "
                         f"20% least-confident rows carry {r['least_confident_20pct_error_share']:.1%} of the error"
                         + (f" (if the predicted errors were exact: {r['confidence_spearman_if_calibrated']:.3f}, "
                            f"{r['least_confident_20pct_error_share_if_calibrated']:.1%})" if "confidence_spearman_if_calibrated" in r else ""))
    return "\n".join(lines)


def write_json(out: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(out, indent=2))

"""Drift: the training rows' statistics per column, the same counted on a run's observed cells,
and the distance between them (the measures TFDV and Vertex AI model monitoring use).

A *profile* is made once, on the rows a model is trained on, and kept in the model's manifest:
per imputed column, the missing share and, for a number, the counts in bins cut at the
training values' deciles (open at both ends: a run's values outside the training range fall in
the end bins); for a category, the counts of its 30 most frequent values and of all others
together. A run counts its own observed cells into the same bins (mergeable counters named
``drift:<column>:<bin>``, summed across batches, workers and engines like every other counter)
and the report compares: Jensen-Shannon divergence (base 2, in [0, 1]) for numbers, the
L-infinity distance of the category shares for categories. A column drifts when its distance is
over its threshold (the schema's ``drift_threshold``, else ``DEFAULT_THRESHOLDS``).
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["profile_table", "count_batch", "drift_report", "drift_of", "DEFAULT_THRESHOLDS", "PREFIX", "MIN_ROWS",
           "confidence_profile", "confidence_report", "CONFIDENCE_SUM"]

CONFIDENCE_SUM = "confidence_sum_e6"  # the run's counter: the sum of its rows' confidences, in millionths
_CONFIDENCE_BINS = 100

PREFIX = "drift:"
TOP_CATEGORIES = 30
OTHER = "__other__"
MISSING = "__missing__"
DEFAULT_THRESHOLDS = {"jensen_shannon": 0.1, "l_infinity": 0.2}
MIN_ROWS = 50  # a run with fewer observed cells in a column is not judged on it (too few to tell)
_NUMERIC = ("numeric", "integer")
_CATEGORICAL = ("categorical", "boolean")


def _columns(schema) -> list:
    return [c for c in schema.columns if c.impute and c.type in _NUMERIC + _CATEGORICAL]


def profile_table(table: pa.Table, schema) -> dict:
    """The training rows' profile of every imputed number and category column of ``table``
    (typed, nulls = missing)."""
    out = {}
    for spec in _columns(schema):
        if spec.name not in table.column_names:
            continue
        col = table.column(spec.name)
        n = table.num_rows
        observed = col.drop_null()
        entry: dict = {"rows": n, "missing_share": (n - len(observed)) / n if n else 0.0}
        if spec.type in _NUMERIC:
            x = np.asarray(observed.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
            x = x[np.isfinite(x)]
            edges = np.unique(np.quantile(x, np.linspace(0.1, 0.9, 9))).tolist() if len(x) else []
            entry.update(kind="numeric", edges=edges, counts=_bin_counts(x, edges).tolist())
        else:
            counts = pc.value_counts(observed.cast(pa.string()))
            pairs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()),
                           key=lambda t: (-t[1], t[0]))
            top = pairs[:TOP_CATEGORIES]
            entry.update(kind="categorical", categories=[v for v, _ in top],
                         counts=[k for _, k in top] + [sum(k for _, k in pairs[TOP_CATEGORIES:])])
        out[spec.name] = entry
    return out


def _bin_counts(x: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=float), x, side="right"), minlength=len(edges) + 1)


def count_batch(table: pa.Table, profile: dict) -> dict[str, int]:
    """A batch's counters for the profile's columns: ``drift:<col>:<bin>`` for observed cells
    (a number's bin index, a category's index or ``__other__``), ``drift:<col>:__missing__``."""
    out: dict[str, int] = {}
    for name, entry in profile.items():
        if name not in table.column_names:
            continue
        col = table.column(name)
        observed = col.drop_null()
        missing = len(col) - len(observed)
        if missing:
            out[f"{PREFIX}{name}:{MISSING}"] = missing
        if entry["kind"] == "numeric":
            x = np.asarray(observed.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
            counts = _bin_counts(x[np.isfinite(x)], entry["edges"])
            out.update({f"{PREFIX}{name}:{i}": int(k) for i, k in enumerate(counts) if k})
        else:
            cats = entry["categories"]
            index = pc.index_in(observed.cast(pa.string()), value_set=pa.array(cats, pa.string()))
            idx = np.asarray(pc.fill_null(index, len(cats)).to_numpy(zero_copy_only=False), dtype=np.int64)
            counts = np.bincount(idx, minlength=len(cats) + 1)
            out.update({f"{PREFIX}{name}:{cats[i] if i < len(cats) else OTHER}": int(k)
                        for i, k in enumerate(counts) if k})
    return out


def _js(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return max(0.0, min(1.0, (kl(p, m) + kl(q, m)) / 2))


def drift_report(profile: dict, counters: dict, thresholds: dict[str, float | None] | None = None) -> dict:
    """Per profiled column: the measure, the distance of the run's observed cells to training,
    the threshold, whether it drifted, and the missing shares; plus the shares for a plot."""
    thresholds = thresholds or {}
    out = {}
    for name, entry in profile.items():
        prefix = f"{PREFIX}{name}:"
        mine = {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)}
        missing = int(mine.pop(MISSING, 0))
        train = np.asarray(entry["counts"], dtype=float)
        if entry["kind"] == "numeric":
            labels = [str(i) for i in range(len(train))]
            measure = "jensen_shannon"
        else:
            labels = list(entry["categories"]) + [OTHER]
            measure = "l_infinity"
        run = np.asarray([float(mine.get(label, 0)) for label in labels])
        observed = int(run.sum())
        limit = thresholds.get(name)
        limit = DEFAULT_THRESHOLDS[measure] if limit is None else float(limit)
        row = {"measure": measure, "threshold": limit, "observed": observed,
               "missing_share_training": round(entry["missing_share"], 6),
               "missing_share_run": round(missing / (observed + missing), 6) if observed + missing else None}
        if observed < MIN_ROWS or train.sum() == 0:
            row.update(distance=None, drifted=False, note=f"fewer than {MIN_ROWS} observed cells: not judged")
        else:
            if measure == "jensen_shannon":
                distance = _js(train, run)
            else:
                distance = float(np.max(np.abs(train / train.sum() - run / run.sum())))
            row.update(distance=round(distance, 6), drifted=bool(distance > limit))
        row["bins"] = labels if measure == "l_infinity" else _bin_labels(entry["edges"])
        row["share_training"] = (train / train.sum()).round(6).tolist() if train.sum() else []
        row["share_run"] = (run / run.sum()).round(6).tolist() if observed else []
        out[name] = row
    return out


def drift_of(profile: dict, table: pa.Table, thresholds: dict[str, float | None] | None = None) -> tuple[dict, list[str]]:
    """A typed table's observed cells against a profile in one step: ``drift_report`` of its
    counts, and the columns that drifted (sorted)."""
    report = drift_report(profile, count_batch(table, profile), thresholds)
    return report, sorted(c for c, d in report.items() if d["drifted"])


def confidence_profile(confidence: np.ndarray) -> dict:
    """The training rows' confidence (the model filling their own missing cells): its mean and
    a histogram of 100 bins over [0, 1], so that any threshold's routed share can be read off."""
    c = np.clip(np.asarray(confidence, dtype=float), 0, 1)
    return {"rows": int(len(c)), "mean": float(c.mean()) if len(c) else None,
            "histogram": np.histogram(c, bins=_CONFIDENCE_BINS, range=(0, 1))[0].tolist()}


def confidence_report(training: dict, counters: dict, threshold: float | None) -> dict:
    """The run's mean confidence and routed share (rows under the threshold) beside the training rows'."""
    rows = int(counters.get("written_rows", 0))
    hist = np.asarray(training.get("histogram") or [], dtype=float)
    out = {"training_mean_confidence": training.get("mean"),
           "run_mean_confidence": round(counters.get(CONFIDENCE_SUM, 0) / 1e6 / rows, 6) if rows else None}
    if threshold is not None and hist.sum():
        under = int(round(threshold * _CONFIDENCE_BINS))  # the bins wholly under the threshold (0.15: 15 of 100)
        out["training_routed_share"] = round(float(hist[:under].sum() / hist.sum()), 6)
        out["run_routed_share"] = round(counters.get("rows_reverse_tried", 0) / rows, 6) if rows else None
        out["threshold"] = threshold
    return out


def _bin_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all"]
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    return [f"< {fmt(edges[0])}"] + [f"{fmt(a)}-{fmt(b)}" for a, b in zip(edges, edges[1:])] + [f">= {fmt(edges[-1])}"]



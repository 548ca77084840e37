"""Boosted trees: a gradient-boosted regressor per numeric column, blended into the networks' fill.

A network fills a hole with a smooth function of the row's given cells. Some tables carry sharp
rules a smooth function misses: spam's word-count columns come in twins (a "857" count is 0
wherever its "415" twin is 0, and equal to it elsewhere), where the networks overshoot and a
tree's split on the twin is exact. ``fit_trees`` trains scikit-learn's
``HistGradientBoostingRegressor`` (missing cells as NaN, which its splits route on) for each
numeric column on the training rows' observed cells, from the row's other columns (a numeric
column's robust-scaled value, a category's slot index; ``lakefill.models.donors.column_values``).
``fit_weight`` then finds the blend weight, in steps of 1/20 and one for all columns, with the
lowest squared error on the held-out rows' hidden cells; unless that saves at least ``MIN_GAIN``
of the held-out loss the weight is 0 and the trees are left out of the model (they cost time);
the trees are then fitted once more on all rows (held-out ones included) and kept with it.
The trees move the fill, not its confidence: the predicted variance stays the networks'.

The fitted trees are kept as arrays (the nodes of every tree, side by side: feature,
threshold, where a missing value goes, children, leaf value), saved in the weights file like
any buffer (never pickle). Imputation walks them with scikit-learn's compiled tree walker,
rebuilt from the arrays, or, where that private class is not the one this code knows, a
vectorised numpy walk down all of a column's trees at once (the same sums, about 12x slower).
Deterministic: no random draw in the
fit (no early stopping, no subsampling under ``MAX_ROWS``) or in the walk. Categorical columns
get no trees (the networks' and donors' fill stands).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lakefill.models.donors import column_values
from lakefill.models.grid import grid_weight

__all__ = ["TreeFill", "TreeBlend", "fit_trees", "fill_values", "fit_weight", "with_weight", "ROUNDS", "MAX_ROWS", "MAX_COLUMNS",
           "MIN_CELLS", "MIN_GAIN"]

ROUNDS = 100  # boosting rounds per column (scikit-learn's default, learning rate 0.1)
MAX_LEAVES = 31  # leaves per tree (scikit-learn's default)
MAX_ROWS = 50_000  # training rows a column's trees see (a seeded draw beyond that)
# wider tables get no trees: one regressor per numeric column over all the others costs about
# the square of the width (spam's 57 columns: about 23 s on its 4,601 rows)
MAX_COLUMNS = 128
MIN_CELLS = 20  # held-out hidden cells the trees need to be weighed at all
MAX_CLASSES = 10  # a chained round's classifiers: categorical columns of at most this many categories
# the held-out loss the trees must save (a share of it) to be kept: they cost an imputation
# about as much time again as the networks (letter: their best weight, 0.05, saved 0.03%)
MIN_GAIN = 0.01
_PAIRS = 1 << 21  # (row, tree) pairs walked at once


@dataclass
class TreeBlend:
    num: np.ndarray  # (n, n_num) the trees' prediction (scaled), 0 where none
    has: np.ndarray  # (n, n_num) bool: a cell the trees predicted (a hole in a column with trees)
    cat_probs: list | None = None  # per categorical column (n, k): the classifiers' probabilities (classified trees)
    cat_has: np.ndarray | None = None  # (n, n_cat) bool


class TreeFill(nn.Module):
    """Every kept column's trees as flat node arrays. ``columns``: the numeric columns (index in
    the table's numeric block) with trees; per column its ``baseline`` (the regressor's
    constant) and blend ``weight``; per tree its ``root`` node (a tree's nodes run from its root
    to the next tree's) and the position of its column in ``columns``; per node its split ``feature`` (a table column), ``threshold`` (a value <= it goes
    left), ``missing_left``, ``left``/``right`` children (a leaf points at itself) and ``value``
    (a leaf's contribution, learning rate included)."""

    def __init__(self, n_nodes: int, n_trees: int, n_columns: int, *, col_slices: list[tuple[int, int]], n_num: int,
                 filled: bool = False, classified: bool = False, cat_sizes: list[int] | None = None):
        super().__init__()
        self.col_slices, self.n_num = [tuple(s) for s in col_slices], n_num
        # a categorical column's categories (the networks' output slots; its input slice may be wider)
        self.cat_sizes = list(cat_sizes) if cat_sizes is not None else [b - a for a, b in self.col_slices[n_num:]]
        self.filled = filled  # the trees read a row's holes as the mixture's fill (False: as missing, NaN)
        # classified: outputs may be a categorical column's category: ``klass`` its slot (-1: a number);
        # the column's probabilities are the softmax of its outputs' sums (slots with no output: 0)
        self.classified = classified
        if classified:
            self.register_buffer("klass", torch.zeros(n_columns, dtype=torch.int64))
        self.register_buffer("columns", torch.zeros(n_columns, dtype=torch.int64))
        self.register_buffer("baseline", torch.zeros(n_columns, dtype=torch.float64))
        self.register_buffer("weight", torch.zeros(n_columns))
        self.register_buffer("root", torch.zeros(n_trees, dtype=torch.int64))
        self.register_buffer("tree_column", torch.zeros(n_trees, dtype=torch.int64))
        self.register_buffer("feature", torch.zeros(n_nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(n_nodes, dtype=torch.float64))
        self.register_buffer("missing_left", torch.zeros(n_nodes, dtype=torch.uint8))
        self.register_buffer("left", torch.zeros(n_nodes, dtype=torch.int64))
        self.register_buffer("right", torch.zeros(n_nodes, dtype=torch.int64))
        self.register_buffer("value", torch.zeros(n_nodes, dtype=torch.float64))
        self._arrays = None
        self.compiled = _COMPILED is not None  # scikit-learn's compiled walk (same sums, ~10x faster)

    @property
    def sizes(self) -> dict:
        return {"nodes": len(self.feature), "trees": len(self.root), "columns": len(self.columns),
                **({"filled": True} if self.filled else {}), **({"classified": True} if self.classified else {})}

    def _numpy(self) -> dict:
        """The buffers as numpy arrays (cached: the model is frozen once fitted or loaded)."""
        if self._arrays is None:
            a = {k: v.cpu().numpy() for k, v in self.named_buffers()}
            a["depth"] = _depth(a["left"], a["right"], a["root"])
            a["predictors"] = _predictors(a) if self.compiled else None
            self._arrays = a
        return self._arrays

    def _apply(self, fn, *args, **kwargs):  # .to() / load_state_dict() replace the buffers: drop the cache
        self._arrays = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._arrays = None
        return super()._load_from_state_dict(*args, **kwargs)

    def check(self) -> None:
        """Refuse node arrays that do not make trees (a child outside its tree or not below its
        parent, a feature that is no column): a loaded file is checked before any walk reads it."""
        self._arrays = None
        a = {k: v.cpu().numpy() for k, v in self.named_buffers()}
        n, cols = len(a["feature"]), len(self.col_slices)
        for name in ("left", "right", "root"):
            if len(a[name]) and (a[name].min() < 0 or a[name].max() >= n):
                raise ValueError(f"trees: a {name} index is outside the {n} nodes")
        root = a["root"]
        if len(root) and (root[0] != 0 or np.any(np.diff(root) <= 0)):
            raise ValueError("trees: the roots do not split the nodes into trees")
        if n and not len(root):
            raise ValueError("trees: nodes without a tree")
        idx = np.arange(n)
        end = np.append(root[1:], n)[np.searchsorted(root, idx, side="right") - 1] if n else idx
        leaf = (a["left"] == idx) & (a["right"] == idx)
        for name in ("left", "right"):
            child = a[name][~leaf]
            if np.any(child <= idx[~leaf]) or np.any(child >= end[~leaf]):
                raise ValueError(f"trees: a {name} child is outside its tree or not below its node")
        if len(a["feature"]) and (a["feature"].min() < 0 or a["feature"].max() >= cols):
            raise ValueError(f"trees: a split feature is not one of the table's {cols} columns")
        klass = a["klass"] if self.classified else np.full(len(a["columns"]), -1)
        if len(a["columns"]) and (a["columns"].min() < 0 or np.any(a["columns"][klass < 0] >= self.n_num)
                                  or np.any(a["columns"] >= cols)):
            raise ValueError(f"trees: a column is not one of the table's {self.n_num} numeric columns")
        sizes = np.array([0] * self.n_num + self.cat_sizes)
        cat = klass >= 0
        if np.any(a["columns"][cat] < self.n_num) or np.any(klass[cat] >= sizes[a["columns"][cat]]):
            raise ValueError("trees: a category output is not a slot of a categorical column")
        if len(a["tree_column"]) and (a["tree_column"].min() < 0 or a["tree_column"].max() >= len(a["columns"])):
            raise ValueError("trees: a tree belongs to no column")
        self._numpy()  # the walk's depth: a cycle is refused there

    def lookup(self, values: np.ndarray, given: np.ndarray, fill: np.ndarray | None = None) -> TreeBlend:
        """The trees' prediction of every hole (a cell not given) in a column with trees.
        ``fill``: the mixture's fill of every cell (``fill_values``), which trees fitted on filled
        inputs read where a cell is not given."""
        a = self._numpy()
        n = len(values)
        cats = self.cat_sizes
        num, has = np.zeros((n, self.n_num), dtype=np.float64), np.zeros((n, self.n_num), dtype=bool)
        probs, cat_has = [np.zeros((n, k), dtype=np.float32) for k in cats], np.zeros((n, len(cats)), dtype=bool)
        if not n or not len(a["columns"]):
            return TreeBlend(num, has, probs, cat_has)
        if self.filled and fill is None:
            raise ValueError("these trees read the mixture's fill of a row's holes: pass fill")
        X = _inputs(values, given, self.col_slices, self.n_num, fill if self.filled else None)
        klass = a["klass"] if self.classified else np.full(len(a["columns"]), -1)
        logits: dict[int, np.ndarray] = {}
        for c, j in enumerate(a["columns"]):
            rows = np.nonzero(~given[:, j])[0]
            if not len(rows):
                continue
            trees = np.nonzero(a["tree_column"] == c)[0]
            raw = a["baseline"][c] + (_walk_compiled(a, X[rows], trees) if self.compiled else _walk(a, X[rows], trees))
            if klass[c] < 0:
                num[rows, j] = raw
                has[rows, j] = True
            else:
                k = j - self.n_num
                if k not in logits:
                    logits[k] = np.full((n, cats[k]), -np.inf)
                logits[k][rows, klass[c]] = raw
                cat_has[rows, k] = True
        for k, z in logits.items():
            rows = cat_has[:, k]
            z = z[rows] - z[rows].max(axis=1, keepdims=True)
            e = np.exp(z)
            probs[k][rows] = e / e.sum(axis=1, keepdims=True)
        return TreeBlend(num, has, probs, cat_has)

    def row_weights(self, blend: TreeBlend) -> np.ndarray:
        """(n, n_num): each numeric cell's blend weight (0 where the trees have no prediction)."""
        a = self._numpy()
        number = a["klass"] < 0 if self.classified else np.ones(len(a["columns"]), dtype=bool)
        w = np.zeros(self.n_num, dtype=np.float64)
        w[a["columns"][number]] = a["weight"][number]
        return np.where(blend.has, w, 0.0)

    def cat_weights(self, blend: TreeBlend) -> np.ndarray:
        """(n, n_cat): each categorical cell's blend weight (0 where the trees have no prediction)."""
        a = self._numpy()
        w = np.zeros(len(self.col_slices) - self.n_num, dtype=np.float64)
        if self.classified:
            cat = a["klass"] >= 0
            w[a["columns"][cat] - self.n_num] = a["weight"][cat]
        return np.where(blend.cat_has, w, 0.0)


def _depth(left: np.ndarray, right: np.ndarray, root: np.ndarray) -> int:
    """The longest root-to-leaf path (steps a walk needs until every row sits on a leaf)."""
    node, depth = root.copy(), 0
    while len(node):
        inner = (left[node] != node) | (right[node] != node)
        node = np.concatenate([left[node[inner]], right[node[inner]]])
        depth += bool(len(node))
        if depth > len(left):
            raise ValueError("trees: a cycle in the node arrays")
    return depth


def _walk(a: dict, X: np.ndarray, trees: np.ndarray) -> np.ndarray:
    """The sum over ``trees`` of each row's leaf value: all (row, tree) pairs step down together."""
    out = np.zeros(len(X), dtype=np.float64)
    step = max(1, _PAIRS // max(len(trees), 1))
    feature, threshold, missing_left, left, right = a["feature"], a["threshold"], a["missing_left"], a["left"], a["right"]
    for s in range(0, len(X), step):
        x = X[s:s + step]
        node = np.broadcast_to(a["root"][trees], (len(x), len(trees))).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(a["depth"]):
            v = x[rows, feature[node]]
            go_left = (v <= threshold[node]) | (np.isnan(v) & (missing_left[node] > 0))
            node = np.where(go_left, left[node], right[node])
        out[s:s + step] = a["value"][node].sum(axis=1)
    return out


def _compiled():
    """scikit-learn's tree walker (a private class, so checked here: None if it is not the one
    this code was written against, and the numpy walk does the work)."""
    try:
        from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    except ImportError:
        return None
    needed = {"value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf", "is_categorical"}
    if not needed <= set(PREDICTOR_RECORD_DTYPE.names or ()):
        return None
    try:  # and called as this code calls it: a one-leaf tree must give its leaf's value
        leaf = np.zeros(1, dtype=PREDICTOR_RECORD_DTYPE)
        leaf["value"], leaf["is_leaf"] = 0.5, 1
        no_bitsets = np.zeros((0, 8), dtype=np.uint32)
        got = TreePredictor(leaf, no_bitsets, no_bitsets).predict(np.zeros((2, 1)), no_bitsets,
                                                                    np.zeros(1, dtype=np.uint32), 1)
        if not np.array_equal(got, [0.5, 0.5]):
            return None
    except Exception:  # any failure of a private API means: use the numpy walk
        return None
    return TreePredictor, PREDICTOR_RECORD_DTYPE


_COMPILED = _compiled()


def _predictors(a: dict) -> list:
    """One scikit-learn TreePredictor per tree, rebuilt from the node arrays (node indices local to the tree)."""
    predictor, dtype = _COMPILED
    ends = np.append(a["root"][1:], len(a["feature"]))
    no_bitsets = np.zeros((0, 8), dtype=np.uint32)
    out = []
    for start, end in zip(a["root"], ends):
        nodes = np.zeros(end - start, dtype=dtype)
        idx = np.arange(start, end)
        leaf = (a["left"][idx] == idx) & (a["right"][idx] == idx)
        nodes["value"] = a["value"][idx]
        nodes["feature_idx"] = a["feature"][idx]
        nodes["num_threshold"] = a["threshold"][idx]
        nodes["missing_go_to_left"] = a["missing_left"][idx]
        nodes["left"] = np.where(leaf, 0, a["left"][idx] - start)
        nodes["right"] = np.where(leaf, 0, a["right"][idx] - start)
        nodes["is_leaf"] = leaf
        out.append(predictor(nodes, no_bitsets, no_bitsets))
    return out


def _walk_compiled(a: dict, X: np.ndarray, trees: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float64)
    f_idx_map = np.zeros(X.shape[1], dtype=np.uint32)
    no_bitsets = np.zeros((0, 8), dtype=np.uint32)
    threads = max(1, torch.get_num_threads())
    out = np.zeros(len(X), dtype=np.float64)
    for t in trees:
        out += a["predictors"][t].predict(X, no_bitsets, f_idx_map, threads)
    return out


def fill_values(num: np.ndarray, probs: list[np.ndarray]) -> np.ndarray:
    """(n, n_cols): the mixture's fill as the trees read a column (``column_values``' layout): a
    number's scaled value, a category's most likely slot."""
    return np.concatenate([np.asarray(num, dtype=np.float64).reshape(len(num), -1),
                           *[np.argmax(p, axis=1)[:, None].astype(np.float64) for p in probs]], axis=1)


def _inputs(values: np.ndarray, given: np.ndarray, col_slices, n_num: int, fill: np.ndarray | None) -> np.ndarray:
    """The trees' inputs: the given cells, and for a hole the mixture's fill (None: NaN, a missing
    value the splits route)."""
    X = column_values(values, col_slices, n_num).astype(np.float64)
    X[~given] = np.nan if fill is None else np.asarray(fill, dtype=np.float64)[~given]
    return X


def fit_trees(values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, *, col_slices: list[tuple[int, int]],
              n_num: int, rows: np.ndarray, seed: int, rounds: int = ROUNDS, fill: np.ndarray | None = None,
              t_cat: np.ndarray | None = None, cat_sizes: list[int] | None = None) -> TreeFill | None:
    """One regressor per numeric column on ``rows``' observed cells of it (every column with at
    least ``MIN_CELLS`` of them and two distinct values), its blend weight still 0 (see
    ``fit_weight`` and ``with_weight``). None if no column qualifies. ``fill`` (``fill_values`` of
    every row of ``values``): the inputs' holes read as the mixture's fill, as in a chained
    imputer's second round (None: as missing). ``t_cat`` (the categorical targets, slot indices,
    -1 unknown): a classifier per categorical column too, of at most ``MAX_CLASSES`` categories
    seen (a column of more keeps the networks' fill: its trees would multiply the fit time)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if len(rows) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS, replace=False))
    X = _inputs(values[rows], observed[rows], col_slices, n_num, None if fill is None else fill[rows])
    parts: list[tuple[int, int, float, list[np.ndarray]]] = []  # (column, slot or -1, baseline, trees)
    n_cols = len(col_slices) if t_cat is not None else n_num
    for j in range(n_cols):
        has = observed[rows, j]
        if j < n_num:
            y = t_num[rows, j].astype(np.float64)[has]
            if has.sum() < MIN_CELLS or np.ptp(y) == 0:
                continue
        else:
            has = has & (t_cat[rows, j - n_num] >= 0)
            y = t_cat[rows, j - n_num][has].astype(np.int64)
            seen = np.unique(y)
            if has.sum() < MIN_CELLS or not 2 <= len(seen) <= MAX_CLASSES:
                continue
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column's nanmin
            varies = np.nanmin(X[has], axis=0) < np.nanmax(X[has], axis=0)
        varies[j] = False  # the column itself is what is missing
        inputs = np.nonzero(varies)[0]  # a column with one value (or none) can split nothing
        if not len(inputs):
            continue
        kind = HistGradientBoostingRegressor if j < n_num else HistGradientBoostingClassifier
        est = kind(max_iter=rounds, learning_rate=0.1, max_leaf_nodes=MAX_LEAVES, early_stopping=False,
                   random_state=seed).fit(X[has][:, inputs], y)
        base = np.ravel(est._baseline_prediction).astype(np.float64)
        slots = [-1] if j < n_num else ([int(est.classes_[1])] if len(est.classes_) == 2 else [int(c) for c in est.classes_])
        if j >= n_num and len(est.classes_) == 2:  # a binary classifier's score is the second class's logit, the first's 0
            parts.append((j, int(est.classes_[0]), 0.0, []))
        for t, slot in enumerate(slots):
            trees = []
            for per_class in est._predictors:
                nodes = per_class[t].nodes.copy()
                nodes["feature_idx"] = np.where(nodes["is_leaf"] > 0, 0, inputs[nodes["feature_idx"]])
                trees.append(nodes)
            parts.append((j, slot, float(base[t]), trees))
    if not parts:
        return None
    n_nodes = sum(len(nodes) for *_, trees in parts for nodes in trees)
    n_trees = sum(len(trees) for *_, trees in parts)
    out = TreeFill(n_nodes, n_trees, len(parts), col_slices=col_slices, n_num=n_num, filled=fill is not None,
                   classified=t_cat is not None, cat_sizes=cat_sizes)
    node_fields = {k: [] for k in ("feature", "threshold", "missing_left", "left", "right", "value")}
    roots, tree_column, offset = [], [], 0
    for c, (*_, trees) in enumerate(parts):
        for nodes in trees:
            leaf = nodes["is_leaf"].astype(bool)
            idx = np.arange(len(nodes)) + offset
            node_fields["feature"].append(np.where(leaf, 0, nodes["feature_idx"]))
            node_fields["threshold"].append(np.where(leaf, 0.0, nodes["num_threshold"]))
            node_fields["missing_left"].append(nodes["missing_go_to_left"].astype(np.uint8))
            node_fields["left"].append(np.where(leaf, idx, nodes["left"].astype(np.int64) + offset))
            node_fields["right"].append(np.where(leaf, idx, nodes["right"].astype(np.int64) + offset))
            node_fields["value"].append(np.where(leaf, nodes["value"], 0.0))
            roots.append(offset)
            tree_column.append(c)
            offset += len(nodes)
    with torch.no_grad():
        for k, chunks in node_fields.items():
            getattr(out, k).copy_(torch.from_numpy(np.concatenate(chunks)))
        out.root.copy_(torch.tensor(roots, dtype=torch.int64))
        out.tree_column.copy_(torch.tensor(tree_column, dtype=torch.int64))
        out.columns.copy_(torch.tensor([j for j, *_ in parts], dtype=torch.int64))
        out.baseline.copy_(torch.tensor([b for _, _, b, _ in parts], dtype=torch.float64))
        if out.classified:
            out.klass.copy_(torch.tensor([slot for _, slot, _, _ in parts], dtype=torch.int64))
    out.check()
    return out


def fit_weight(fill: TreeFill, pred_num: np.ndarray, blend: TreeBlend, truth: np.ndarray, hide: np.ndarray,
               loss_weights: np.ndarray, *, pred_probs: list[np.ndarray] | None = None, truth_cat: np.ndarray | None = None,
               hide_cat: np.ndarray | None = None) -> tuple[float, dict]:
    """The blend weight (``grid_weight``: steps of 1/20) with the lowest loss-weighted squared error of
    ``(1 - w) * pred_num + w * trees`` on the held-out hidden cells (``hide``: (n, n_num)) of the
    columns with trees, one weight for all of them: a column's own held-out cells (a few dozen
    in a table of thousands of rows) choose a weight mostly by chance (measured on spam: per
    column 0.0456, one weight 0.0442). A weight that saves less than ``MIN_GAIN`` of the loss is
    0. Returns the weight and a report (``best_weight``: the grid's, before that rule). With
    classifiers (``blend.cat_probs``) and ``pred_probs``, ``truth_cat``, ``hide_cat``: their own
    weight on the hidden categorical cells' cross-entropy, by the same rule (``cat_weight``)."""
    cells = hide & blend.has
    lw = np.broadcast_to(np.asarray(loss_weights, dtype=np.float64), pred_num.shape)[cells]
    p, t, y = pred_num[cells].astype(np.float64), blend.num[cells], truth[cells].astype(np.float64)

    def loss(w: float) -> float:
        return float((lw * ((1 - w) * p + w * t - y) ** 2).sum())

    weight, report = _weigh(loss, int(cells.sum()))
    report["columns"] = int(len(fill.columns))
    if blend.cat_probs is not None and pred_probs is not None and blend.cat_has.any():
        picks = []  # per column: (the network's, the trees') probability of the true category on its hidden cells
        for k, (mine, theirs) in enumerate(zip(pred_probs, blend.cat_probs)):
            r = np.nonzero(hide_cat[:, k] & blend.cat_has[:, k] & (truth_cat[:, k] >= 0))[0]
            picks.append((mine[r, truth_cat[r, k]].astype(np.float64), theirs[r, truth_cat[r, k]].astype(np.float64)))

        def cat_loss(w: float) -> float:
            return -sum(float(np.log(np.maximum((1 - w) * a + w * b, 1e-12)).sum()) for a, b in picks)

        cat_weight, cat_report = _weigh(cat_loss, sum(len(a) for a, _ in picks))
        report.update({f"cat_{k}": v for k, v in cat_report.items() if k != "weight"}, cat_weight=cat_weight)
    return weight, {"weight": weight, **report}


def _weigh(loss, n_cells: int) -> tuple[float, dict]:
    if n_cells >= MIN_CELLS:
        weight, before, best = grid_weight(loss, tol=1e-12)
    else:
        weight, before = 0.0, loss(0.0)
        best = before
    n = max(n_cells, 1)
    report = {"best_weight": weight, "val_cells": n_cells, "val_loss_without": before / n, "val_loss_with": best / n}
    if best > (1 - MIN_GAIN) * before:  # not worth their time
        weight = 0.0
    return weight, report


def with_weight(fill: TreeFill, weight: float, cat_weight: float = 0.0) -> TreeFill:
    """``fill`` with every numeric column's trees blended with ``weight`` (a categorical column's
    classifiers with ``cat_weight``), set in place."""
    with torch.no_grad():
        fill.weight.fill_(weight)
        if fill.classified:
            fill.weight[fill.klass >= 0] = cat_weight
    fill._arrays = None  # the cached arrays hold the old weight
    return fill

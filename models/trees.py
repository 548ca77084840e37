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

__all__ = ["TreeFill", "TreeBlend", "fit_trees", "fit_weight", "with_weight", "ROUNDS", "MAX_ROWS", "MAX_COLUMNS",
           "MIN_CELLS", "MIN_GAIN"]

ROUNDS = 100  # boosting rounds per column (scikit-learn's default, learning rate 0.1)
MAX_LEAVES = 31  # leaves per tree (scikit-learn's default)
MAX_ROWS = 50_000  # training rows a column's trees see (a seeded draw beyond that)
# wider tables get no trees: one regressor per numeric column over all the others costs about
# the square of the width (spam's 57 columns: about 23 s on its 4,601 rows)
MAX_COLUMNS = 128
MIN_CELLS = 20  # held-out hidden cells the trees need to be weighed at all
# the held-out loss the trees must save (a share of it) to be kept: they cost an imputation
# about as much time again as the networks (letter: their best weight, 0.05, saved 0.03%)
MIN_GAIN = 0.01
_PAIRS = 1 << 21  # (row, tree) pairs walked at once


@dataclass
class TreeBlend:
    num: np.ndarray  # (n, n_num) the trees' prediction (scaled), 0 where none
    has: np.ndarray  # (n, n_num) bool: a cell the trees predicted (a hole in a column with trees)


class TreeFill(nn.Module):
    """Every kept column's trees as flat node arrays. ``columns``: the numeric columns (index in
    the table's numeric block) with trees; per column its ``baseline`` (the regressor's
    constant) and blend ``weight``; per tree its ``root`` node (a tree's nodes run from its root
    to the next tree's) and the position of its column in ``columns``; per node its split ``feature`` (a table column), ``threshold`` (a value <= it goes
    left), ``missing_left``, ``left``/``right`` children (a leaf points at itself) and ``value``
    (a leaf's contribution, learning rate included)."""

    def __init__(self, n_nodes: int, n_trees: int, n_columns: int, *, col_slices: list[tuple[int, int]], n_num: int):
        super().__init__()
        self.col_slices, self.n_num = [tuple(s) for s in col_slices], n_num
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
        return {"nodes": len(self.feature), "trees": len(self.root), "columns": len(self.columns)}

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
        if len(a["columns"]) and (a["columns"].min() < 0 or a["columns"].max() >= self.n_num):
            raise ValueError(f"trees: a column is not one of the table's {self.n_num} numeric columns")
        if len(a["tree_column"]) and (a["tree_column"].min() < 0 or a["tree_column"].max() >= len(a["columns"])):
            raise ValueError("trees: a tree belongs to no column")
        self._numpy()  # the walk's depth: a cycle is refused there

    def lookup(self, values: np.ndarray, given: np.ndarray) -> TreeBlend:
        """The trees' prediction of every hole (a numeric cell not given) in a column with trees."""
        a = self._numpy()
        n = len(values)
        num, has = np.zeros((n, self.n_num), dtype=np.float64), np.zeros((n, self.n_num), dtype=bool)
        if not n or not len(a["columns"]):
            return TreeBlend(num, has)
        X = column_values(values, self.col_slices, self.n_num).astype(np.float64)
        X[~given] = np.nan
        for c, j in enumerate(a["columns"]):
            rows = np.nonzero(~given[:, j])[0]
            if not len(rows):
                continue
            trees = np.nonzero(a["tree_column"] == c)[0]
            num[rows, j] = a["baseline"][c] + (_walk_compiled(a, X[rows], trees) if self.compiled else _walk(a, X[rows], trees))
            has[rows, j] = True
        return TreeBlend(num, has)

    def row_weights(self, blend: TreeBlend) -> np.ndarray:
        """(n, n_num): each cell's blend weight (0 where the trees have no prediction)."""
        a = self._numpy()
        w = np.zeros(self.n_num, dtype=np.float64)
        w[a["columns"]] = a["weight"]
        return np.where(blend.has, w, 0.0)


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


def fit_trees(values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, *, col_slices: list[tuple[int, int]],
              n_num: int, rows: np.ndarray, seed: int, rounds: int = ROUNDS) -> TreeFill | None:
    """One regressor per numeric column on ``rows``' observed cells of it (every column with at
    least ``MIN_CELLS`` of them and two distinct values), its blend weight still 0 (see
    ``fit_weight`` and ``with_weight``). None if no column qualifies."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    if len(rows) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS, replace=False))
    X = column_values(values[rows], col_slices, n_num).astype(np.float64)
    X[~observed[rows]] = np.nan
    parts: list[tuple[int, float, list[np.ndarray]]] = []
    for j in range(n_num):
        has = observed[rows, j]
        y = t_num[rows, j].astype(np.float64)[has]
        if has.sum() < MIN_CELLS or np.ptp(y) == 0:
            continue
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column's nanmin
            varies = np.nanmin(X[has], axis=0) < np.nanmax(X[has], axis=0)
        varies[j] = False  # the column itself is what is missing
        inputs = np.nonzero(varies)[0]  # a column with one value (or none) can split nothing
        if not len(inputs):
            continue
        reg = HistGradientBoostingRegressor(max_iter=rounds, learning_rate=0.1, max_leaf_nodes=MAX_LEAVES,
                                            early_stopping=False, random_state=seed).fit(X[has][:, inputs], y)
        trees = []
        for (p,) in reg._predictors:
            nodes = p.nodes.copy()
            nodes["feature_idx"] = np.where(nodes["is_leaf"] > 0, 0, inputs[nodes["feature_idx"]])
            trees.append(nodes)
        parts.append((j, float(np.ravel(reg._baseline_prediction)[0]), trees))
    if not parts:
        return None
    n_nodes = sum(len(nodes) for _, _, trees in parts for nodes in trees)
    n_trees = sum(len(trees) for _, _, trees in parts)
    fill = TreeFill(n_nodes, n_trees, len(parts), col_slices=col_slices, n_num=n_num)
    node_fields = {k: [] for k in ("feature", "threshold", "missing_left", "left", "right", "value")}
    roots, tree_column, offset = [], [], 0
    for c, (_, _, trees) in enumerate(parts):
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
            getattr(fill, k).copy_(torch.from_numpy(np.concatenate(chunks)))
        fill.root.copy_(torch.tensor(roots, dtype=torch.int64))
        fill.tree_column.copy_(torch.tensor(tree_column, dtype=torch.int64))
        fill.columns.copy_(torch.tensor([j for j, _, _ in parts], dtype=torch.int64))
        fill.baseline.copy_(torch.tensor([b for _, b, _ in parts], dtype=torch.float64))
    fill.check()
    return fill


def fit_weight(fill: TreeFill, pred_num: np.ndarray, blend: TreeBlend, truth: np.ndarray, hide: np.ndarray,
               loss_weights: np.ndarray) -> tuple[float, dict]:
    """The blend weight (``grid_weight``: steps of 1/20) with the lowest loss-weighted squared error of
    ``(1 - w) * pred_num + w * trees`` on the held-out hidden cells (``hide``: (n, n_num)) of the
    columns with trees, one weight for all of them: a column's own held-out cells (a few dozen
    in a table of thousands of rows) choose a weight mostly by chance (measured on spam: per
    column 0.0456, one weight 0.0442). A weight that saves less than ``MIN_GAIN`` of the loss is
    0. Returns the weight and a report (``best_weight``: the grid's, before that rule)."""
    cells = hide & blend.has
    lw = np.broadcast_to(np.asarray(loss_weights, dtype=np.float64), pred_num.shape)[cells]
    p, t, y = pred_num[cells].astype(np.float64), blend.num[cells], truth[cells].astype(np.float64)

    def loss(w: float) -> float:
        return float((lw * ((1 - w) * p + w * t - y) ** 2).sum())

    if cells.sum() >= MIN_CELLS:
        weight, before, best = grid_weight(loss, tol=1e-12)
    else:
        weight, before = 0.0, loss(0.0)
        best = before
    n = max(int(cells.sum()), 1)
    report = {"best_weight": weight, "val_cells": int(cells.sum()), "val_loss_without": before / n,
              "val_loss_with": best / n, "columns": int(len(fill.columns))}
    if best > (1 - MIN_GAIN) * before:  # not worth their time
        weight = 0.0
    return weight, {"weight": weight, **report}


def with_weight(fill: TreeFill, weight: float) -> TreeFill:
    """``fill`` with every column's trees blended with ``weight`` (set in place)."""
    with torch.no_grad():
        fill.weight.fill_(weight)
    fill._arrays = None  # the cached arrays hold the old weight
    return fill

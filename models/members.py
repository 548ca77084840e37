"""Every member of the model behind one contract, and the registry that drives the rest.

A member is fitted on the training rows, weighed on the held-out cells, applied at fill time,
saved as tensors in the weights file and built back from its manifest entry. Two kinds:

- ``kind = "mixture"``: a module with the networks' forward interface ``(values, mask) ->
  (mean, log-variance, logits, code)`` (the Gaussian, ``lakefill.models.gaussian``); ``candidate``
  fits it, and the mixture's weight grid (``train_ensemble``) gives it its share of the forward
  pass with the networks (0 leaves it out).
- ``kind = "blend"``: applied to the mixture's fill (the boosted trees, the donors); ``fit``
  fits and weighs it on the held-out cells (``grid_weight``), ``apply`` blends it in. The model
  (``Ensemble``) holds a kept blend as the attribute of its name; its buffers are the weights
  file's ``<name>.*`` tensors.

The networks are the model itself, not members: every model has them (``AEConfig`` sizes).

``register`` adds a member; the registry's order is the order blends apply in (the donors weigh
on the trees' fill). A member's name is at once its ``AEConfig.without`` entry (every registered
member is used unless named there), its ``--no-<name>`` flag of ``lakefill train`` (``help``),
its key in the manifest's ``architecture`` and ``metrics`` and in ``TrainResult.reports``.
Adding a member is one class and one ``register`` call; training, ``predict``, reverse
training, the artifact, the metrics and the command line loop over the registry. This module
imports numpy alone (the command line reads the registry): the members' own modules load
when they are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lakefill.models.grid import grid_weight

__all__ = ["Member", "Blend", "Mixture", "HeldOut", "register", "unregister", "members", "blends", "mixtures",
           "member_names", "grid_weight", "blend_trees", "blend_donors"]


@dataclass(frozen=True)
class HeldOut:
    """What every member is fitted and weighed on: the encoded training table, the held-out rows
    and their hidden observed cells (None: too few rows to hold any out), the loss weights and
    the seed."""
    values: np.ndarray
    observed: np.ndarray
    t_num: np.ndarray
    t_cat: np.ndarray
    val_idx: np.ndarray | None
    val_hide: np.ndarray | None
    num_weights: np.ndarray | None  # per numeric column, the confidence scale's weights
    loss_weights: np.ndarray  # per numeric column, the loss's weights (ones when none)
    seed: int

    @property
    def train_rows(self) -> np.ndarray:
        """The rows that are not held out."""
        idx = np.arange(len(self.values))
        return idx if self.val_idx is None else np.setdiff1d(idx, self.val_idx)


class Member:
    """One member of the model. ``name``: its config entry, flag, manifest key and metrics key;
    ``help``: what its ``--no-<name>`` flag turns off."""

    name = ""
    kind = ""
    help = ""

    def architecture(self, member):
        """The manifest's architecture entry (member None: not in the model)."""
        raise NotImplementedError

    def build(self, entry, layout: dict):
        """An empty member of the manifest's shape (None when the entry says none), to load the weights into."""
        raise NotImplementedError

    def check(self, member) -> None:
        """Refuse loaded buffers that do not make this member (default: nothing to check)."""


class Mixture(Member):
    """A member of the mixture's forward pass (its weight comes from the mixture's grid)."""

    kind = "mixture"

    def candidate(self, layout, data: HeldOut):
        """(module or None, report for the manifest's metrics or None): fitted on the training
        rows. ``layout``: the first network (its ``n_inputs``, ``col_slices``, ``n_num``,
        ``cat_sizes``). The mixture adds ``val_loss`` and ``weight`` to the report."""
        raise NotImplementedError

    def owns(self, module) -> bool:
        """Whether a module of the ensemble's ``members`` is this member's."""
        raise NotImplementedError


class Blend(Member):
    """A member blended into the mixture's fill. ``adapts``: kept in a model whose networks were
    adapted to a run (``lakefill.models.adapt``)."""

    kind = "blend"
    adapts = True

    def fit(self, ensemble, data: HeldOut) -> dict | None:
        """Fit on the training rows, weigh on the held-out cells, set ``ensemble.<name>`` when a
        weight is above 0; the report for the manifest's metrics (None: nothing to fit)."""
        raise NotImplementedError

    def refit(self, ensemble, data: HeldOut, report: dict) -> None:
        """After every member is weighed, for a blend that was kept (default: nothing)."""

    def apply(self, member, values: np.ndarray, given: np.ndarray, num: np.ndarray, probs: list[np.ndarray],
              var: np.ndarray | None, num_weights) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None, dict]:
        """The fill with this member blended in: (num, probs, var (None stays None), extras)."""
        raise NotImplementedError


class Gaussian(Mixture):
    """A multivariate normal fitted by EM on the encoded training rows (``lakefill.models.gaussian``):
    its conditional means carry a small table's linear structure. Skipped for inputs wider than
    ``GAUSSIAN_MAX_FEATURES`` and for tables without a numeric column."""

    name = "gaussian"
    help = ("do not offer the mixture a multivariate normal fitted by EM (by default it gets the weight the "
            "held-out cells give it, often 0 on large nonlinear tables)")

    def candidate(self, layout, data: HeldOut):
        from lakefill.models.gaussian import GAUSSIAN_MAX_FEATURES, GAUSSIAN_MAX_ROWS, GaussianMember, fit_gaussian

        if not layout.n_num:
            # one-hot blocks alone: each sums to one, so the covariance is singular by construction
            # and EM crawls for nothing (nursery: 50 iterations, 34 s on one core, weight 0)
            return None, {"skipped": "no numeric column", "used": False, "weight": 0.0}
        if data.val_idx is None or data.values.shape[1] > GAUSSIAN_MAX_FEATURES:
            return None, None
        train_rows = data.train_rows
        if len(train_rows) > GAUSSIAN_MAX_ROWS:  # a covariance is well estimated long before that
            pick = np.random.default_rng(data.seed).choice(len(train_rows), GAUSSIAN_MAX_ROWS, replace=False)
            train_rows = train_rows[np.sort(pick)]
        member = GaussianMember(n_inputs=layout.n_inputs, col_slices=layout.col_slices, n_num=layout.n_num,
                                cat_sizes=layout.cat_sizes)
        iterations = fit_gaussian(member, data.values[train_rows], data.observed[train_rows])
        return member.eval(), {"em_iterations": iterations}

    def owns(self, module) -> bool:
        from lakefill.models.gaussian import GaussianMember

        return isinstance(module, GaussianMember)

    def architecture(self, member):
        return member is not None

    def build(self, entry, layout):
        from lakefill.models.gaussian import GaussianMember

        return GaussianMember(**layout) if entry else None


class Trees(Blend):
    """The numeric columns' boosted trees (``lakefill.models.trees``): one weight for every
    column with trees, weighed with the trees fitted on the training rows; kept trees are then
    fitted again on all rows. They catch sharp rules between columns (a count that is 0 wherever
    its twin is) that the networks smooth over."""

    name = "trees"
    filled = False  # the holes are read as missing (NaN), which the splits route
    help = ("do not fit boosted trees (scikit-learn, 100 rounds per numeric column): by default they are blended "
            "into the numeric fill with the weight the held-out cells give them (0 leaves them out)")

    def fit(self, ensemble, data: HeldOut) -> dict | None:
        from lakefill.models.trees import MAX_COLUMNS as TREES_MAX_COLUMNS
        from lakefill.models.trees import fill_values, fit_trees, fit_weight, with_weight

        if not ensemble.n_num:
            return None
        if len(ensemble.col_slices) > TREES_MAX_COLUMNS:
            return {"weight": 0.0, "columns": 0, "used": False,
                    "skipped": f"{len(ensemble.col_slices)} columns, more than {TREES_MAX_COLUMNS}"}
        from lakefill.models.mixture import predict

        train_rows = data.train_rows
        fill = fit_trees(data.values, data.observed, data.t_num, col_slices=ensemble.col_slices, n_num=ensemble.n_num,
                         rows=train_rows, seed=data.seed, fill=self._inputs_fill(ensemble, data),
                         t_cat=data.t_cat if self.filled else None, cat_sizes=ensemble.cat_sizes)
        if fill is None:
            return {"weight": 0.0, "columns": 0, "used": False}
        given = data.observed[data.val_idx] & ~data.val_hide
        pred = predict(ensemble, data.values[data.val_idx], given)
        blend = fill.lookup(data.values[data.val_idx], given, fill_values(pred.num, pred.cat_probs) if self.filled else None)
        weight, report = fit_weight(fill, pred.num, blend, data.t_num[data.val_idx], data.val_hide[:, :ensemble.n_num],
                                    data.loss_weights, pred_probs=pred.cat_probs, truth_cat=data.t_cat[data.val_idx],
                                    hide_cat=data.val_hide[:, ensemble.n_num:])
        used = weight > 0 or report.get("cat_weight", 0.0) > 0
        if used:
            setattr(ensemble, self.name, with_weight(fill, weight, report.get("cat_weight", 0.0)))
        return {**report, "used": used}

    def refit(self, ensemble, data: HeldOut, report: dict) -> None:
        from lakefill.models.trees import fit_trees, with_weight

        trees = fit_trees(data.values, data.observed, data.t_num, col_slices=ensemble.col_slices, n_num=ensemble.n_num,
                          rows=np.arange(len(data.values)), seed=data.seed, fill=self._inputs_fill(ensemble, data),
                          t_cat=data.t_cat if self.filled else None, cat_sizes=ensemble.cat_sizes)
        setattr(ensemble, self.name, with_weight(trees, report["weight"], report.get("cat_weight", 0.0)))
        report["nodes"] = trees.sizes["nodes"]

    def _inputs_fill(self, ensemble, data: HeldOut) -> np.ndarray | None:
        """What the trees read for a row's holes: nothing (NaN) for the trees; the fill of the
        members before this one for a chained round."""
        return _fill_before(ensemble, data, self.name) if self.filled else None

    def apply(self, member, values, given, num, probs, var, num_weights):
        from lakefill.models.trees import fill_values

        blend = member.lookup(values, given, fill_values(num, probs) if member.filled else None)  # a chained round: the fill so far
        if member.classified:  # its classifiers' probabilities blended into the categorical fill
            w = member.cat_weights(blend)
            probs = [np.where(blend.cat_has[:, k:k + 1], (1 - w[:, k:k + 1]) * p + w[:, k:k + 1] * q, p).astype(p.dtype)
                     for k, (p, q) in enumerate(zip(probs, blend.cat_probs))]
        return blend_trees(member, blend, num), probs, var, {}  # the variance stays the networks'

    def architecture(self, member):
        return member.sizes if member is not None else None

    def build(self, entry, layout):
        from lakefill.models.trees import TreeFill

        return TreeFill(int(entry["nodes"]), int(entry["trees"]), int(entry["columns"]), col_slices=layout["col_slices"],
                        n_num=layout["n_num"], filled=bool(entry.get("filled", False)),
                        classified=bool(entry.get("classified", False)), cat_sizes=layout["cat_sizes"]) if entry else None

    def check(self, member) -> None:
        member.check()


class Chained(Trees):
    """A second round of boosted trees, as a chained imputer's (missForest's) next iteration:
    one regressor per numeric column that reads a row's holes as the fill so far (the mixture
    with the trees blended in), where the first round reads them as missing. Weighed on the
    held-out cells as the trees are (one weight; kept only when it saves ``MIN_GAIN`` of their
    loss), then fitted again on all rows."""

    name = "chained"
    filled = True
    adapts = False  # its trees learned the training rows' fill and cannot follow rows that drifted past them
    help = ("do not fit a second round of boosted trees on the rows as filled so far (missForest's next "
            "iteration): by default it is blended into the numeric fill with the weight the held-out cells give it")


def _fill_before(ensemble, data: HeldOut, name: str) -> np.ndarray:
    """The fill of every training row's cells (``fill_values``) by the mixture and the blends
    before ``name``: what a chained round reads for a row's holes, as it does at fill time."""
    from lakefill.models.mixture import predict
    from lakefill.models.trees import fill_values

    order = [b.name for b in blends()]
    kept = {n: getattr(ensemble, n, None) for n in order[order.index(name):]}
    try:  # ``name`` and the blends after it off (a refit runs after every blend is weighed and set)
        for n in kept:
            setattr(ensemble, n, None)
        pred = predict(ensemble, data.values, data.observed)
    finally:
        for n, member in kept.items():
            setattr(ensemble, n, member)
    return fill_values(pred.num, pred.cat_probs)


class Donors(Blend):
    """The training rows as donors (``lakefill.models.donors``): one weight per evidence band."""

    name = "donors"
    help = ("do not keep training rows in the model: by default a row that is a copy of a training row (a "
            "duplicate record with other holes) takes that row's cells, with the weight the held-out cells give "
            "them, and the model file holds up to 200,000 training rows")

    def fit(self, ensemble, data: HeldOut) -> dict | None:
        """Build the donor index on the training rows and fit its blend weights on the held-out
        rows' hidden cells (a row is never its own donor): per evidence band, ``grid_weight`` on
        that band's cells (squared error / cross-entropy as in training); a band with no
        held-out cell takes the weight of the band below (its evidence is stronger). The index
        joins the model only if a weight is above 0. The confidence scale stays the networks'."""
        from lakefill.models.donors import BANDS as DONOR_BANDS
        from lakefill.models.donors import MAX_ROWS as DONOR_MAX_ROWS
        from lakefill.models.donors import MIN_BITS as DONOR_MIN_BITS
        from lakefill.models.donors import DonorIndex
        from lakefill.models.mixture import predict

        values, observed, val_idx, val_hide = data.values, data.observed, data.val_idx, data.val_hide
        rows = np.arange(len(values))
        if len(rows) > DONOR_MAX_ROWS:
            rows = np.sort(np.random.default_rng(data.seed).choice(len(values), DONOR_MAX_ROWS, replace=False))
        position = np.full(len(values), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        index = DonorIndex.build(values[rows], observed[rows], col_slices=ensemble.col_slices, n_num=ensemble.n_num,
                                 cat_sizes=ensemble.cat_sizes)
        given = observed[val_idx] & ~val_hide
        pred = predict(ensemble, values[val_idx], given, num_weights=data.num_weights)
        fill = index.lookup(values[val_idx], given, exclude=position[val_idx])
        n_num = ensemble.n_num
        lw = data.loss_weights
        nw = np.ones(n_num) if data.num_weights is None else np.asarray(data.num_weights, dtype=np.float64)
        truth_num = data.t_num[val_idx].astype(np.float64)
        truth_cat = data.t_cat[val_idx]
        bands = []
        for band in range(len(index.weight)):
            in_band = (fill.band == band)[:, None]
            h_num = val_hide[:, :n_num] & fill.num_has & in_band
            h_cat = val_hide[:, n_num:] & fill.cat_has & (truth_cat >= 0) & in_band

            def loss(w: float) -> float:
                total = float((lw * ((1 - w) * pred.num + w * fill.num - truth_num) ** 2)[h_num].sum())
                for k, (p, q) in enumerate(zip(pred.cat_probs, fill.cat_probs)):
                    r = np.nonzero(h_cat[:, k])[0]
                    total -= float(np.log(np.maximum((1 - w) * p[r, truth_cat[r, k]] + w * q[r, truth_cat[r, k]],
                                                     1e-12)).sum())
                return total

            weight, before, best = grid_weight(loss)
            error = float(((fill.num - truth_num) ** 2 * nw)[h_num].mean()) if h_num.any() else 0.0
            cells = int(h_num.sum() + h_cat.sum())
            if not cells and band > 0:  # nothing held out to measure: the evidence is stronger than the band below's
                weight, error = float(index.weight[band - 1]), float(index.error[band - 1])
            index.weight[band] = weight
            index.error[band] = error
            bands.append({"min_bits": ([DONOR_MIN_BITS] + list(DONOR_BANDS))[band], "weight": weight,
                          "val_cells": cells, "val_loss_without": before, "val_loss_with": best, "error": error})
        if float(index.weight.max()) > 0:
            ensemble.donors = index
        return {"rows": index.n_rows, "val_cells_hidden": int(val_hide.sum()), "bands": bands,
                "used": ensemble.donors is not None}

    def apply(self, member, values, given, num, probs, var, num_weights):
        fill = member.lookup(values, given)
        w = member.row_weights(fill)
        rows = (w[:, 0] > 0) & (fill.num_has.any(axis=1) | fill.cat_has.any(axis=1))
        if var is not None:  # the donors' held-out error enters the variance where they fill
            e = member.row_errors(fill)
            nw = num_weights if num_weights is not None else 1.0
            var = np.where(fill.num_has, (1 - w) ** 2 * var + w ** 2 * e / np.maximum(nw, 1e-12), var).astype(np.float32)
        num, probs = blend_donors(member, fill, num, probs)
        return num, probs, var, {"donor_rows": rows}

    def architecture(self, member):
        return member.n_rows if member is not None else 0

    def build(self, entry, layout):
        from lakefill.models.donors import DonorIndex

        return DonorIndex(int(entry), layout["col_slices"], layout["n_num"], layout["cat_sizes"]) if entry else None


_REGISTRY: dict[str, Member] = {}


def register(member: Member) -> Member:
    """Add a member (an instance of a ``Mixture`` or ``Blend`` subclass); blends apply in the
    order they were registered. Returns it."""
    if not isinstance(member, (Mixture, Blend)):
        raise TypeError(f"a member is a Mixture or a Blend, got {type(member).__name__}")
    name = member.name
    if not name.isidentifier() or name in ("members", "weights", "sizes", "networks"):
        raise ValueError(f"member name {name!r} must be an identifier and not one of the model's own attributes")
    if name in _REGISTRY:
        raise ValueError(f"a member named {name!r} is already registered")
    _REGISTRY[name] = member
    return member


def unregister(name: str) -> None:
    """Remove a member (a test's, or a plugin's that is switched off)."""
    _REGISTRY.pop(name, None)


def members() -> list[Member]:
    """Every registered member, in the registry's order."""
    return list(_REGISTRY.values())


def member_names() -> list[str]:
    return list(_REGISTRY)


def mixtures() -> list[Mixture]:
    return [m for m in _REGISTRY.values() if m.kind == "mixture"]


def blends() -> list[Blend]:
    """The blends in the order they apply (the donors weigh on the trees' fill)."""
    return [m for m in _REGISTRY.values() if m.kind == "blend"]


for _member in (Gaussian(), Trees(), Chained(), Donors()):
    register(_member)


def blend_trees(trees, blend, num: np.ndarray) -> np.ndarray:
    """The networks' numeric fill blended with the boosted trees' where a column has them."""
    w = trees.row_weights(blend)
    return ((1 - w) * num + w * blend.num).astype(np.float32)


def blend_donors(donors, fill, num: np.ndarray, cat_probs: list[np.ndarray]):
    """The networks' fill blended with the donors' where a row has donors: (num, cat_probs)."""
    w = donors.row_weights(fill)
    num = np.where(fill.num_has, (1 - w) * num + w * fill.num, num).astype(np.float32)
    cat_probs = [np.where(fill.cat_has[:, k:k + 1], (1 - w) * p + w * q, p).astype(p.dtype)
                 for k, (p, q) in enumerate(zip(cat_probs, fill.cat_probs))]
    return num, cat_probs

"""The masked autoencoder for mixed tables, its training and its direct (one-pass) imputation.

Input: the encoded row with missing cells blanked (zeros) plus the per-column missing-mask.
Output: for numeric columns a mean and a log-variance, for categorical columns logits over the
known values. Training hides extra observed cells at random and scores only those (squared
error for numerics, cross-entropy for categories): the loss never touches a missing cell.
Inputs are robust-scaled (median, IQR); each numeric column's squared error is weighted so that
it counts on the column's min-max scale (``loss_scale="range"``): a heavy-tailed column's
outliers, huge in robust units, do not drive the training. Opt-in, ``AEConfig.squash``
log-compresses the numeric inputs beyond +-squash before the first layer (outputs unchanged).
The log-variance head is trained on the detached mean (it does not pull the mean), and gives
the per-cell uncertainty that row confidence is built from.
The model is an ensemble of networks of different sizes (``AEConfig.extra_sizes``) trained on
the same split, plus a multivariate normal fitted by EM (``GaussianMember``, ``AEConfig.gaussian``);
their means and probabilities are mixed with weights fitted on held-out cells (``Ensemble``,
``train_ensemble``). Where a row to fill is a copy of a training row (``lakefill.models.donors``,
``AEConfig.donors``), ``predict`` blends the copy's cells in, with a weight fitted the same way;
before that, the numeric columns' boosted trees (``lakefill.models.trees``, ``AEConfig.trees``) with a
weight fitted the same way.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lakefill.models._config import AEConfig
from lakefill.models.donors import BANDS as DONOR_BANDS
from lakefill.models.donors import MAX_ROWS as DONOR_MAX_ROWS
from lakefill.models.donors import MIN_BITS as DONOR_MIN_BITS
from lakefill.models.donors import DonorFill, DonorIndex
from lakefill.models.trees import MAX_COLUMNS as TREES_MAX_COLUMNS
from lakefill.models.trees import TreeBlend, TreeFill, fit_trees, fit_weight, with_weight
from torch import nn
from torch.nn import functional as F

__all__ = ["AEConfig", "TrainPlan", "Budget", "MaskedAutoencoder", "GaussianMember", "TrainResult", "train_autoencoder", "train_ensemble",
           "Ensemble", "fit_gaussian", "predict", "Prediction", "direct_fill_inputs", "blend_donors", "blend_trees"]

GAUSSIAN_MAX_FEATURES = 128  # wider inputs: no Gaussian candidate (its cost grows with the cube of the width)
# EM runs on at most this many training rows (a seeded draw): its cost is rows x width^3 per
# iteration, and a covariance of 128 features is well estimated long before (bank: 34 s at 20,000)
GAUSSIAN_MAX_ROWS = 5_000


def _feature_col(n_inputs: int, col_slices: list[tuple[int, int]]) -> torch.Tensor:
    """Each input feature's column: expands a per-column mask to the input features."""
    index = torch.zeros(n_inputs, dtype=torch.long)
    for j, (a, b) in enumerate(col_slices):
        index[a:b] = j
    return index


class MaskedAutoencoder(nn.Module):
    def __init__(self, *, n_inputs: int, col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int],
                 hidden: int, depth: int, code: int, squash: float = 0.0):
        super().__init__()
        self.n_inputs, self.n_num, self.cat_sizes = n_inputs, n_num, list(cat_sizes)
        self.size = (hidden, depth, code)
        self.squash = float(squash)  # numeric inputs beyond +-squash are log-compressed (0: off)
        self.col_slices = [tuple(s) for s in col_slices]
        n_cols = len(col_slices)
        layers: list[nn.Module] = [nn.Linear(n_inputs + n_cols, hidden), nn.SiLU()]
        self.input_layer = nn.Sequential(*layers)
        enc: list[nn.Module] = []
        for _ in range(depth - 1):
            enc += [nn.Linear(hidden, hidden), nn.SiLU()]
        enc.append(nn.Linear(hidden, code))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Linear(code, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            dec += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.decoder = nn.Sequential(*dec)
        self.head_mu = nn.Linear(hidden, n_num) if n_num else None
        self.head_logvar = nn.Linear(hidden, n_num) if n_num else None
        self.head_cat = nn.Linear(hidden, sum(cat_sizes)) if cat_sizes else None
        # a linear path from the input to the outputs: linear relations between columns are
        # learned at once, the deep path learns the rest (helps small tables most)
        self.skip = nn.Linear(n_inputs + n_cols, n_num + sum(cat_sizes))
        self.register_buffer("feature_col", _feature_col(n_inputs, self.col_slices), persistent=False)

    def forward(self, values: torch.Tensor, mask: torch.Tensor, *, input_dropout: float = 0.0,
                generator: torch.Generator | None = None, dropout_noise: torch.Tensor | None = None):
        """values (n, n_inputs) with hidden cells zeroed by the caller; mask (n, n_cols) 1 = given.
        ``dropout_noise``: uniforms of the hidden layer's shape to draw the dropout from (else ``generator``)."""
        x = torch.cat([self.squash_inputs(values), mask], dim=1)
        h = self.input_layer(x)
        if input_dropout > 0:
            u = dropout_noise if dropout_noise is not None else torch.rand(h.shape, generator=generator, device=h.device)
            keep = u >= input_dropout
            h = h * keep / (1 - input_dropout)
        z = self.encoder(h)
        d = self.decoder(z)
        skip = self.skip(x)
        mu = self.head_mu(d) + skip[:, : self.n_num] if self.head_mu is not None else d.new_zeros(len(d), 0)
        logvar = self.head_logvar(d).clamp(-12, 8) if self.head_logvar is not None else d.new_zeros(len(d), 0)
        logits = self.head_cat(d) + skip[:, self.n_num:] if self.head_cat is not None else d.new_zeros(len(d), 0)
        return mu, logvar, logits, z

    @property
    def dropout_width(self) -> int:
        """Width of the layer the input dropout acts on (the shape of ``dropout_noise``'s rows)."""
        return self.input_layer[0].out_features

    def squash_inputs(self, values: torch.Tensor) -> torch.Tensor:
        """The numeric features as the first layer sees them: z within +-c as it is, beyond it
        c + log(1 + |z| - c) with z's sign (continuous, differentiable, monotone)."""
        c = self.squash
        if not c or not self.n_num:
            return values
        z = values[:, : self.n_num]
        excess = (z.abs() - c).clamp(min=0)
        z = torch.where(excess > 0, torch.sign(z) * (c + torch.log1p(excess)), z)
        return torch.cat([z, values[:, self.n_num:]], dim=1)

    def blank(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero the input features of every column whose mask is 0."""
        return values * mask[:, self.feature_col]

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(logits, self.cat_sizes, dim=1)) if self.cat_sizes else []


class GaussianMember(nn.Module):
    """A multivariate normal over the encoded input features (mean and covariance fitted by EM on
    the observed cells, ``fit_gaussian``), with the network's interface: each cell is predicted
    by its conditional mean given the row's given cells (a category's probabilities are the
    conditional mean of its one-hot block), with its conditional variance. It captures the linear
    structure a small table can hold more reliably than a network trained on a few hundred rows;
    ``train_ensemble`` mixes it in only with the weight the held-out cells give it. Differentiable
    in the input (reverse training works through it); it has no bottleneck code (width 0)."""

    size = None  # not a network
    dropout_width = 0

    def __init__(self, *, n_inputs: int, col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int]):
        super().__init__()
        self.n_inputs, self.n_num, self.cat_sizes = n_inputs, n_num, list(cat_sizes)
        self.col_slices = [tuple(s) for s in col_slices]
        self.register_buffer("mean", torch.zeros(n_inputs, dtype=torch.float64))
        self.register_buffer("cov", torch.eye(n_inputs, dtype=torch.float64))
        self.register_buffer("feature_col", _feature_col(n_inputs, self.col_slices), persistent=False)

    def forward(self, values: torch.Tensor, mask: torch.Tensor, *, input_dropout: float = 0.0,
                generator: torch.Generator | None = None, dropout_noise: torch.Tensor | None = None):
        m = mask[:, self.feature_col].to(torch.float64)
        x, mean = values.to(torch.float64), self.mean
        n = len(x)
        pred, var = torch.where(m > 0, x, mean), torch.zeros_like(x)
        counts = (1 - m).sum(1).long()
        if n and int(counts.max()):
            # with the precision P = cov^-1, the missing block's law given the rest is
            # N(mean_m - P_mm^-1 P_mo (x_o - mean_o), P_mm^-1): one k x k factorisation per row.
            # Rows are grouped by their count k of missing features (no padding), so a row's
            # result does not depend on the other rows of its batch.
            prec = torch.cholesky_inverse(torch.linalg.cholesky(self.cov))
            r_all = ((x - mean) * m) @ prec
            order_all = torch.argsort(m, dim=1, stable=True)  # each row's missing features first
            for k in torch.unique(counts).tolist():
                if k == 0:
                    continue
                rows = torch.nonzero(counts == k).squeeze(1)
                order = order_all[rows, :k]
                r = torch.gather(r_all[rows], 1, order)
                chol, _ = torch.linalg.cholesky_ex(prec[order[:, :, None], order[:, None, :]])
                shift = torch.cholesky_solve(r[:, :, None], chol)[:, :, 0]
                eye = torch.eye(k, dtype=x.dtype, device=x.device).expand(len(rows), k, k)
                inv_l = torch.linalg.solve_triangular(chol, eye, upper=False)
                pred = pred.index_put((rows[:, None], order), mean[order] - shift)
                var = var.index_put((rows[:, None], order), (inv_l ** 2).sum(1))  # the block inverse's diagonal
        var = var.clamp(min=math.exp(-12))
        mu = pred[:, : self.n_num].to(values.dtype)
        logvar = torch.log(var[:, : self.n_num]).clamp(-12, 8).to(values.dtype)
        blocks = [torch.log(pred[:, a:a + k].clamp(1e-4, 1.0)) for (a, _), k in zip(self.col_slices[self.n_num:], self.cat_sizes)]
        logits = torch.cat(blocks, dim=1).to(values.dtype) if blocks else values.new_zeros(len(values), 0)
        return mu, logvar, logits, values.new_zeros(len(values), 0)

    blank = MaskedAutoencoder.blank
    split_logits = MaskedAutoencoder.split_logits


@torch.no_grad()
def fit_gaussian(member: GaussianMember, values: np.ndarray, observed: np.ndarray, *, max_iter: int = 50,
                 shrink: float = 1e-3, tol: float = 1e-5, chunk: int = 4096) -> int:
    """EM for a multivariate normal on the encoded rows' observed features (``observed``: per
    column). Each variance gets ``shrink`` times itself added (and a small floor), so the
    covariance stays well conditioned when columns are collinear or constant. Sets the
    member's buffers; returns the iterations run. Deterministic (no randomness)."""
    X = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    M = torch.from_numpy(np.ascontiguousarray(observed))[:, member.feature_col].to(torch.float64)
    n, dim = X.shape
    count = M.sum(0)
    mean = (X * M).sum(0) / count.clamp(min=1)
    filled = torch.where(M > 0, X, mean)
    cov = _regularised(torch.cov(filled.T, correction=0).reshape(dim, dim), shrink)
    it = 0
    for it in range(1, max_iter + 1):
        total, outer, cond = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), \
            torch.zeros(dim, dim, dtype=torch.float64)
        for s in range(0, n, chunk):
            x, m = X[s:s + chunk], M[s:s + chunk]
            d = (x - mean) * m
            a = cov * m[:, :, None] * m[:, None, :] + torch.diag_embed(1 - m)
            chol, _ = torch.linalg.cholesky_ex(a)
            sol = torch.cholesky_solve(torch.cat([d[:, :, None], m[:, :, None] * cov], dim=2), chol)
            xh = torch.where(m > 0, x, mean + sol[:, :, 0] @ cov)
            # conditional covariance of the missing features: cov - cov P cov, P = M A^-1 M
            miss = 1 - m
            c = (cov - (m[:, :, None] * cov).transpose(1, 2) @ sol[:, :, 1:]) * miss[:, :, None] * miss[:, None, :]
            total += xh.sum(0)
            outer += xh.T @ xh
            cond += c.sum(0)
        new_mean = total / n
        new_cov = _regularised((outer + cond) / n - torch.outer(new_mean, new_mean), shrink)
        delta = max(float((new_mean - mean).abs().max()), float((new_cov - cov).abs().max() / cov.diagonal().max()))
        mean, cov = new_mean, new_cov
        if delta < tol:
            break
    member.mean.copy_(mean)
    member.cov.copy_(cov)
    return it


def _regularised(cov: torch.Tensor, shrink: float) -> torch.Tensor:
    cov = (cov + cov.T) / 2
    diag = cov.diagonal()
    floor = 1e-6 * float(diag.mean()) if float(diag.mean()) > 0 else 1e-6
    return cov + torch.diag(shrink * diag + floor)


class Ensemble(nn.Module):
    """Networks of different sizes trained on the same table (and, where it earns a weight, a
    ``GaussianMember``), used as one model with the network's interface: a mixture with fixed
    weights (fitted on held-out cells, see ``train_ensemble``). Numeric mean = the members'
    weighted mean, variance = the mixture's (their variances plus their means' spread:
    disagreement lowers confidence), category
    probabilities = the weighted mean (returned as log-probabilities: softmax gives them back),
    bottleneck code = the members' codes side by side. One member is that member, unchanged.
    ``trees`` (a fitted ``lakefill.models.trees.TreeFill``, or None) and ``donors`` (a fitted
    ``DonorIndex``, or None) are not part of the forward pass: ``predict`` blends them into the
    mixture's fill, the trees first."""

    def __init__(self, members: list[MaskedAutoencoder | GaussianMember], weights: list[float] | None = None,
                 donors: DonorIndex | None = None, trees: TreeFill | None = None):
        super().__init__()
        if not any(isinstance(m, MaskedAutoencoder) for m in members):
            raise ValueError("an Ensemble needs at least one network")
        first = members[0]
        for m in members[1:]:
            if (m.n_inputs, m.col_slices, m.n_num, m.cat_sizes) != (first.n_inputs, first.col_slices, first.n_num, first.cat_sizes):
                raise ValueError("the ensemble's networks must share the table's layout (inputs, columns)")
        w = torch.full((len(members),), 1.0 / len(members)) if weights is None else torch.tensor(weights, dtype=torch.float32)
        if w.shape != (len(members),) or not torch.all(w > 0) or abs(float(w.sum()) - 1) > 1e-5:
            raise ValueError(f"ensemble weights must be {len(members)} positive numbers summing to 1, got {weights}")
        self.members = nn.ModuleList(members)
        self.n_inputs, self.n_num, self.cat_sizes, self.col_slices = first.n_inputs, first.n_num, first.cat_sizes, first.col_slices
        self.register_buffer("weights", w)  # saved with the weights file
        self.register_buffer("feature_col", first.feature_col.clone(), persistent=False)
        self.trees = trees
        self.donors = donors

    @property
    def sizes(self) -> list[tuple[int, int, int]]:
        """The networks' sizes (the Gaussian member, if any, is not a network)."""
        return [m.size for m in self.members if isinstance(m, MaskedAutoencoder)]

    @property
    def has_gaussian(self) -> bool:
        return any(isinstance(m, GaussianMember) for m in self.members)

    @property
    def dropout_width(self) -> int:
        return sum(m.dropout_width for m in self.members)

    def forward(self, values: torch.Tensor, mask: torch.Tensor, *, input_dropout: float = 0.0,
                generator: torch.Generator | None = None, dropout_noise: torch.Tensor | None = None):
        outs, start = [], 0
        for m in self.members:  # each member draws its dropout from its own slice of the noise
            noise = dropout_noise[:, start:start + m.dropout_width] if dropout_noise is not None else None
            start += m.dropout_width
            outs.append(m(values, mask, input_dropout=input_dropout, generator=generator, dropout_noise=noise))
        if len(outs) == 1:
            return outs[0]
        return mix(self, [o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs], self.weights) \
            + (torch.cat([o[3] for o in outs], dim=1),)

    blank = MaskedAutoencoder.blank
    split_logits = MaskedAutoencoder.split_logits


def mix(model, mus: list[torch.Tensor], logvars: list[torch.Tensor], logits: list[torch.Tensor], weights: torch.Tensor):
    """The weighted mixture of several networks' outputs: (mean, log-variance, log-probabilities)."""
    w = weights.to(mus[0].device).view(-1, 1, 1)
    mu_k = torch.stack(mus)
    mu = (w * mu_k).sum(0)
    var = (w * (torch.exp(torch.stack(logvars)) + (mu_k - mu) ** 2)).sum(0)
    logvar = torch.log(var.clamp(min=math.exp(-12)))
    log_w = torch.log(w)
    blocks = zip(*(model.split_logits(lg) for lg in logits))
    log_p = torch.cat([torch.logsumexp(log_w + torch.stack([F.log_softmax(lg, dim=1) for lg in b]), 0) for b in blocks],
                      dim=1) if model.cat_sizes else logits[0]
    return mu, logvar, log_p


def cell_losses(model: MaskedAutoencoder, mu, logvar, logits, t_num, t_cat, score_mask, num_w=None):
    """Per-cell losses (n, n_cols) for the cells in ``score_mask``; zero elsewhere. ``num_w``:
    optional per-numeric-column weights of the squared error.

    Returns (mean loss, variance loss) cell matrices: squared error (numeric) / cross-entropy
    (categorical), and the Gaussian NLL of the detached mean for the log-variance head.
    """
    n = t_num.shape[0]
    loss = torch.zeros(n, len(model.col_slices), device=t_num.device)
    var_loss = torch.zeros_like(loss)
    if model.n_num:
        se = (mu - t_num) ** 2
        loss[:, : model.n_num] = se if num_w is None else se * num_w
        var_loss[:, : model.n_num] = 0.5 * (logvar + (mu.detach() - t_num) ** 2 * torch.exp(-logvar))
    if model.cat_sizes:  # every column's cross-entropy at once: the blocks padded to the widest
        index, pad = _block_layout(tuple(model.cat_sizes), logits.device)
        log_p = F.log_softmax(logits[:, index].masked_fill(pad, -1e9), dim=2)
        ce = -log_p.gather(2, t_cat.clamp(min=0)[:, :, None])[:, :, 0]
        loss[:, model.n_num:] = torch.where(t_cat >= 0, ce, torch.zeros_like(ce))
    return loss * score_mask, var_loss * score_mask


_LAYOUTS: dict = {}


def _block_layout(cat_sizes: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, pad) for the categorical logits: row k of ``index`` holds block k's logit
    positions, padded to the widest block (``pad`` marks the padding)."""
    key = (cat_sizes, str(device))
    if key not in _LAYOUTS:
        widest, start = max(cat_sizes), 0
        index = torch.zeros(len(cat_sizes), widest, dtype=torch.long)
        pad = torch.ones(len(cat_sizes), widest, dtype=torch.bool)
        for k, size in enumerate(cat_sizes):
            index[k, :size] = torch.arange(start, start + size)
            pad[k, :size] = False
            start += size
        _LAYOUTS[key] = (index.to(device), pad.to(device))
    return _LAYOUTS[key]


@dataclass
class TrainResult:
    model: MaskedAutoencoder | Ensemble
    epochs_run: int
    best_epoch: int
    val_loss: float
    history: list[float] = field(default_factory=list)
    error_reference: float = 1.0  # median predicted row error on validation rows (confidence scale)
    val_idx: np.ndarray | None = None  # the held-out rows (None: too few rows to hold any out)
    val_hide: np.ndarray | None = None  # their observed cells hidden for the held-out loss
    members: list[dict] = field(default_factory=list)  # an ensemble's networks: size, held-out loss, epochs
    gaussian: dict | None = None  # the Gaussian candidate: weight, held-out loss, EM iterations (None: not fitted)
    donors: dict | None = None  # the donor index: rows, weight, held-out cells it had, loss without / with it
    trees: dict | None = None  # the boosted trees: weight, held-out cells, loss without / with them (None: not fitted)


def _loss_weights(cfg: AEConfig, num_weights: np.ndarray | None, n_num: int) -> torch.Tensor | None:
    """Per numeric column, the weight of its squared error in the loss (mean 1), or None."""
    if cfg.loss_scale != "range" or num_weights is None or not n_num:
        return None
    w = np.asarray(num_weights, dtype=np.float64)
    if w.shape != (n_num,) or not np.all(np.isfinite(w)) or not w.mean() > 0:
        raise ValueError(f"num_weights must be {n_num} finite non-negative numbers, not all 0")
    return torch.from_numpy((w / w.mean()).astype(np.float32))


def _hide_mask(observed: torch.Tensor, cfg: AEConfig, gen: torch.Generator) -> torch.Tensor:
    """Which observed cells to hide in this batch (1 = hide)."""
    n, c = observed.shape
    rate = torch.rand(n, 1, generator=gen) * cfg.max_hide
    hide = (torch.rand(n, c, generator=gen) < rate) & observed
    if cfg.block_hide > 0 and c > 1:
        use_block = torch.rand(n, generator=gen) < cfg.block_hide
        width = (torch.rand(n, generator=gen) * cfg.max_hide * c).long().clamp(min=1)
        start = (torch.rand(n, generator=gen) * (c - width + 1).float()).long()
        cols = torch.arange(c).unsqueeze(0)
        block = (cols >= start.unsqueeze(1)) & (cols < (start + width).unsqueeze(1)) & observed
        hide = torch.where(use_block.unsqueeze(1), block, hide)
    # make sure each row with 2+ observed cells hides at least one
    none = (hide.sum(1) == 0) & (observed.sum(1) >= 2)
    if none.any():
        scores = torch.rand(n, c, generator=gen) * observed
        pick = F.one_hot(scores.argmax(1), c).bool()
        hide = torch.where(none.unsqueeze(1), pick & observed, hide)
    return hide


@dataclass(frozen=True)
class TrainPlan:
    """How one network is trained on ``n_train`` rows: batch size, steps per epoch, epochs (a
    cap: early stopping may end sooner) and the patience in epochs."""
    batch_size: int
    steps_per_epoch: int
    epochs: int
    patience: int

    @classmethod
    def of(cls, cfg: AEConfig, n_train: int) -> TrainPlan:
        # small tables: smaller batches and more epochs, so that training always gets enough steps
        batch_size = int(min(cfg.batch_size, max(32, n_train // 16)))
        steps_per_epoch = max(1, math.ceil(n_train / batch_size))
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
        if cfg.max_steps:  # large tables: the steps stop growing with the rows
            epochs = max(1, min(epochs, cfg.max_steps // steps_per_epoch))
        patience = max(cfg.patience, math.ceil(cfg.patience * epochs / cfg.epochs))
        return cls(batch_size, steps_per_epoch, epochs, patience)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def work(self, size: tuple[int, int, int], n_inputs: int) -> float:
        """Multiply-adds of the planned training (a network's cost per row times rows seen)."""
        hidden, depth, code = size
        per_row = 2 * (n_inputs * hidden + 2 * (depth - 1) * hidden * hidden + 2 * hidden * code) + n_inputs * n_inputs
        return float(per_row) * self.steps * self.batch_size


class Budget:
    """The wall-clock budget of a training run (``AEConfig.time_budget`` seconds; 0: none): the
    networks share ``NETWORK_SHARE`` of it by their planned work, the members after them the rest."""

    NETWORK_SHARE = 0.85

    def __init__(self, seconds: float):
        self.seconds = float(seconds or 0)
        self.start = time.perf_counter()

    @property
    def limited(self) -> bool:
        return self.seconds > 0

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start) if self.limited else math.inf

    def for_network(self, work: float, work_left: float) -> float | None:
        """Seconds for the next network: its share of what is left for the networks (None: no budget)."""
        if not self.limited:
            return None
        networks_left = self.left() - (1 - self.NETWORK_SHARE) * self.seconds
        return max(0.0, networks_left) * work / max(work_left, 1e-9)


def train_autoencoder(values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, t_cat: np.ndarray, *,
                      col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int], config: AEConfig,
                      num_weights: np.ndarray | None = None, progress: bool = False, seconds: float | None = None,
                      bar=None) -> TrainResult:
    """Train on observed cells only; early stopping on held-out rows' hidden observed cells.
    ``seconds``: a time limit; the schedule is then planned to fit it (the steps are cut to what
    the measured step time allows) and training stops at the limit whatever happens (the best
    epoch so far is kept). ``bar``: a progress bar to advance by steps (else its own if ``progress``)."""
    cfg = config
    gen = torch.Generator().manual_seed(cfg.random_state)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(cfg.random_state)
        model = MaskedAutoencoder(n_inputs=values.shape[1], col_slices=col_slices, n_num=n_num, cat_sizes=cat_sizes,
                                  hidden=cfg.hidden, depth=cfg.depth, code=cfg.code, squash=cfg.squash)
    X = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    M = torch.from_numpy(np.ascontiguousarray(observed, dtype=bool))
    TN = torch.from_numpy(np.ascontiguousarray(t_num, dtype=np.float32))
    TC = torch.from_numpy(np.ascontiguousarray(t_cat, dtype=np.int64))
    n = len(X)
    perm = torch.randperm(n, generator=gen)
    n_val = _held_out(cfg, n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    val_gen = torch.Generator().manual_seed(cfg.random_state + 1)
    num_w = _loss_weights(cfg, num_weights, n_num)
    val_hide = _hide_mask(M[val_idx], AEConfig(max_hide=0.4, random_state=cfg.random_state), val_gen) if n_val else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = TrainPlan.of(cfg, len(train_idx))
    batch_size, steps_per_epoch, epochs, patience = plan.batch_size, plan.steps_per_epoch, plan.epochs, plan.patience

    def step(b: torch.Tensor, model, opt, gen) -> torch.Tensor:
        m = M[b]
        hide = _hide_mask(m, cfg, gen)
        given = (m & ~hide).float()
        mu, logvar, logits, _ = model(model.blank(X[b], given), given)
        loss, var_loss = cell_losses(model, mu, logvar, logits, TN[b], TC[b], hide.float(), num_w)
        total = (loss.sum() + var_loss.sum()) / hide.float().sum().clamp(min=1)
        if cfg.recon_weight > 0:  # optional: also reproduce the given cells
            recon, _ = cell_losses(model, mu, logvar, logits, TN[b], TC[b], given)
            total = total + cfg.recon_weight * recon.sum() / given.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return total

    deadline = None
    if seconds is not None:  # time a few steps on a copy (the run itself is untouched), fit the epochs to the time
        deadline = time.perf_counter() + seconds
        trial, trial_gen = copy.deepcopy(model), torch.Generator().manual_seed(cfg.random_state + 2)
        trial_opt = torch.optim.AdamW(trial.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        t0, probes = time.perf_counter(), min(10, steps_per_epoch)
        for s in range(probes):
            step(train_idx[s * batch_size:(s + 1) * batch_size], trial, trial_opt, trial_gen)
        per_epoch = (time.perf_counter() - t0) / probes * steps_per_epoch * 1.1  # + the held-out check
        fits = int(max(0.0, deadline - time.perf_counter()) // max(per_epoch, 1e-9))
        if fits < epochs:
            epochs = max(1, fits)
            patience = max(1, math.ceil(patience * epochs / plan.epochs))
            if bar is not None:
                bar.total -= plan.steps - epochs * steps_per_epoch
                bar.refresh()
    # a short run (a few epochs on a small table, as --epochs allows) still needs a warm-up step and
    # an annealing step, or the one-cycle schedule divides by zero; runs of 20+ steps are unchanged
    total_steps = max(3, epochs * steps_per_epoch)
    pct_start = 0.1 if total_steps >= 20 else min(0.5, max(0.1, 2.0 / total_steps))
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct_start)
    else:
        sched = _PlateauSchedule(opt, cfg.lr, epochs, steps_per_epoch, patience=cfg.plateau_patience,
                                 decay_share=cfg.decay_share)
    best, best_state, best_epoch, bad_epochs, history = math.inf, None, 0, 0, []
    own_bar = bar is None and progress
    if own_bar:
        bar = _progress(epochs * steps_per_epoch, True)
    epoch, out_of_time = 0, False
    for epoch in range(1, epochs + 1):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for s in range(steps_per_epoch):
            b = order[s * batch_size:(s + 1) * batch_size]
            if len(b) == 0:
                continue
            total = step(b, model, opt, gen)
            sched.step()
            if deadline is not None and time.perf_counter() > deadline:
                out_of_time = True
                break
        if n_val:
            val = _val_loss(model, X[val_idx], M[val_idx], TN[val_idx], TC[val_idx], val_hide, num_w)
        else:
            val = float(total.detach())
        history.append(val)
        if bar is not None:
            bar.set_postfix(network="x".join(map(str, model.size)), val_loss=f"{val:.4f}")
            bar.update(steps_per_epoch)
        improved = val < best - 1e-5
        if improved:
            best, best_state, best_epoch, bad_epochs = val, copy.deepcopy(model.state_dict()), epoch, 0
        if cfg.schedule == "plateau":
            if sched.end_of_epoch(epoch, val):
                break
        elif not improved and epoch > cfg.patience_after * epochs:
            bad_epochs += 1
            if bad_epochs >= patience:
                break
        if out_of_time:
            break
    if bar is not None and epoch < epochs:  # stopped early: the bar's remaining steps will not come
        bar.total -= (epochs - epoch) * steps_per_epoch
        bar.refresh()
    if own_bar:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if not n_val:
        return TrainResult(model, epoch, best_epoch, best, history)
    vi, vh = val_idx.numpy(), val_hide.numpy()
    ref = _error_reference(model, values[vi], observed[vi] & ~vh, vh, num_weights)
    return TrainResult(model, epoch, best_epoch, best, history, ref, vi, vh)


class _PlateauSchedule:
    """Warm-up, a constant rate, then a cosine decay to (almost) 0 that starts when the held-out
    loss has not improved by 0.1% for ``patience`` epochs (or when the rest of the epochs is
    just the decay) and lasts ``decay_share`` of the epochs run before it (at least 5): a table
    the network has learned early stops early, one still learning uses every epoch."""

    def __init__(self, opt, lr: float, epochs: int, steps_per_epoch: int, *, patience: int, decay_share: float):
        self.opt, self.lr, self.epochs, self.spe = opt, lr, epochs, steps_per_epoch
        self.patience, self.decay_share = patience, decay_share
        self.warmup = max(1, min(int(0.05 * epochs * steps_per_epoch), 10 * steps_per_epoch))
        self.step_no, self.best, self.since = 0, math.inf, 0
        self.decay_from = self.decay_len = None  # steps: set when the decay starts
        self._set(lr / 25)

    def _set(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.step_no += 1
        if self.decay_from is not None:
            t = min(1.0, (self.step_no - self.decay_from) / self.decay_len)
            self._set(self.lr * (0.5 * (1 + math.cos(math.pi * t))) + self.lr * 1e-4)
        elif self.step_no < self.warmup:
            self._set(self.lr / 25 + (self.lr - self.lr / 25) * self.step_no / self.warmup)
        else:
            self._set(self.lr)

    def end_of_epoch(self, epoch: int, val: float) -> bool:
        """Record the epoch's held-out loss; True when the decay is over (training stops)."""
        if self.decay_from is not None:
            return self.step_no >= self.decay_from + self.decay_len
        if val < self.best * (1 - 1e-3):
            self.best, self.since = val, 0
        else:
            self.since += 1
        decay_epochs = max(5, math.ceil(self.decay_share * epoch))
        if self.since >= self.patience or epoch + decay_epochs >= self.epochs:
            decay_epochs = max(1, min(decay_epochs, self.epochs - epoch))
            self.decay_from, self.decay_len = self.step_no, decay_epochs * self.spe
        return False


def _held_out(cfg: AEConfig, n: int) -> int:
    """How many of n rows are held out for early stopping and the mixture's weights (none under 20)."""
    return max(1, round(cfg.val_fraction * n)) if n >= 20 else 0


def _error_reference(model, values, given, hide, num_weights) -> float:
    """The median predicted error of the held-out hidden cells: the scale of row confidence."""
    err = predict(model, values, given, num_weights=num_weights).cell_error[hide]
    return float(np.median(err)) if err.size and np.median(err) > 0 else 1.0


def train_ensemble(values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, t_cat: np.ndarray, *,
                   col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int], config: AEConfig,
                   num_weights: np.ndarray | None = None, progress: bool = False) -> TrainResult:
    """Train one network per size of ``config`` (``config.member_configs()``: same seed, same
    held-out rows and hidden cells, each exactly as it would train alone) and, with
    ``config.gaussian``, fit a ``GaussianMember`` on the same training rows; then fit the mixture
    weights that minimise the loss on the held-out hidden cells (a grid of step 1/20 over the
    weight simplex; the networks together always keep a share). A member whose weight is 0 is
    left out of the model. Returns the Ensemble with its own held-out loss and confidence scale."""
    budget = Budget(config.time_budget)
    n_train = len(values) - _held_out(config, len(values))
    configs = config.member_configs()
    plans = [TrainPlan.of(cfg, n_train) for cfg in configs]
    work = [plan.work(cfg.size, values.shape[1]) for cfg, plan in zip(configs, plans)]
    # one bar over every network's planned steps: its rate and ETA are the whole training's
    bar = _progress(sum(plan.steps for plan in plans), progress, desc=f"training {len(configs)} network(s)")
    results = []
    for k, cfg in enumerate(configs):
        results.append(train_autoencoder(values, observed, t_num, t_cat, col_slices=col_slices, n_num=n_num,
                                         cat_sizes=cat_sizes, config=cfg, num_weights=num_weights, bar=bar,
                                         seconds=budget.for_network(work[k], sum(work[k:]))))
    if bar is not None:
        bar.close()
    first = results[0]
    candidates = [r.model for r in results]
    gaussian = None
    skipped = {"skipped": "time budget spent", "used": False, "weight": 0.0}
    if config.gaussian and budget.left() <= 0:
        gaussian = dict(skipped)
    elif config.gaussian and first.val_idx is not None and values.shape[1] <= GAUSSIAN_MAX_FEATURES:
        train_rows = np.setdiff1d(np.arange(len(values)), first.val_idx)
        if len(train_rows) > GAUSSIAN_MAX_ROWS:  # a covariance is well estimated long before that
            pick = np.random.default_rng(config.random_state).choice(len(train_rows), GAUSSIAN_MAX_ROWS, replace=False)
            train_rows = train_rows[np.sort(pick)]
        member = GaussianMember(n_inputs=values.shape[1], col_slices=col_slices, n_num=n_num, cat_sizes=cat_sizes)
        iterations = fit_gaussian(member, values[train_rows], observed[train_rows])
        candidates.append(member.eval())
        gaussian = {"em_iterations": iterations}
    weights = [1.0] + [0.0] * (len(candidates) - 1)
    val_loss, ref = first.val_loss, first.error_reference
    if len(candidates) > 1 and first.val_idx is not None:  # too few rows to hold out: the first network alone
        vi, vh = first.val_idx, first.val_hide
        X = torch.from_numpy(np.ascontiguousarray(values[vi], dtype=np.float32))
        G = torch.from_numpy(observed[vi] & ~vh).float()
        TN = torch.from_numpy(np.ascontiguousarray(t_num[vi], dtype=np.float32))
        TC = torch.from_numpy(np.ascontiguousarray(t_cat[vi], dtype=np.int64))
        H = torch.from_numpy(vh).float()
        num_w = _loss_weights(config, num_weights, n_num)
        with torch.no_grad():
            outs = [m.eval()(m.blank(X, G), G) for m in candidates]
            if isinstance(candidates[-1], GaussianMember):
                loss, _ = cell_losses(first.model, outs[-1][0], outs[-1][1], outs[-1][2], TN, TC, H, num_w)
                gaussian["val_loss"] = float(loss.sum() / H.sum().clamp(min=1))
            best = math.inf
            for w in _simplex(len(candidates), 20):
                if not any(w[: len(results)]):  # the networks always keep a share
                    continue
                mu, logvar, log_p = mix(first.model, [o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs],
                                        torch.tensor(w))
                loss, _ = cell_losses(first.model, mu, logvar, log_p, TN, TC, H, num_w)
                total = float(loss.sum() / H.sum().clamp(min=1))
                if total < best - 1e-9:
                    best, weights = total, list(w)
        val_loss = best
    keep = [k for k, w in enumerate(weights) if w > 0]
    ensemble = Ensemble([candidates[k] for k in keep], [weights[k] for k in keep]).eval()
    if len(keep) > 1:
        ref = _error_reference(ensemble, values[first.val_idx], observed[first.val_idx] & ~first.val_hide,
                               first.val_hide, num_weights)
    elif keep != [0]:  # the mixture is one other network alone
        ref = results[keep[0]].error_reference
    members = [{"hidden": r.model.size[0], "depth": r.model.size[1], "code": r.model.size[2], "weight": w,
                "val_loss": r.val_loss, "epochs_run": r.epochs_run, "best_epoch": r.best_epoch}
               for r, w in zip(results, weights)]
    if isinstance(candidates[-1], GaussianMember):
        gaussian["weight"] = weights[-1]
    loss_weights = _loss_weights(config, num_weights, n_num)
    trees = None
    if config.trees and budget.left() <= 0:
        trees = dict(skipped)
    elif config.trees and first.val_idx is not None and n_num:
        trees = _fit_trees(ensemble, values, observed, t_num, first.val_idx, first.val_hide,
                           loss_weights=loss_weights, seed=config.random_state)
    donors = None
    if config.donors and budget.left() <= 0:
        donors = dict(skipped)
    elif config.donors and first.val_idx is not None:
        donors = _fit_donors(ensemble, values, observed, t_num, t_cat, first.val_idx, first.val_hide,
                             num_weights=num_weights, loss_weights=loss_weights, seed=config.random_state)
    if ensemble.trees is not None:  # kept: fitted again on all rows, now that nothing else is weighed
        ensemble.trees = with_weight(fit_trees(values, observed, t_num, col_slices=ensemble.col_slices,
                                               n_num=ensemble.n_num, rows=np.arange(len(values)),
                                               seed=config.random_state), trees["weight"])
        trees["nodes"] = ensemble.trees.sizes["nodes"]
    return TrainResult(ensemble, max(r.epochs_run for r in results), first.best_epoch, val_loss,
                       first.history, ref, first.val_idx, first.val_hide, members, gaussian, donors, trees)


def _fit_trees(ensemble: Ensemble, values, observed, t_num, val_idx, val_hide, *, loss_weights, seed: int) -> dict:
    """Fit the numeric columns' boosted trees on the training rows and their blend weight on the
    held-out rows' hidden cells (``lakefill.models.trees.fit_weight``); with a weight above 0 they join
    the model as ``ensemble.trees`` (the donors are weighed with these, which never saw a
    held-out cell; ``train_ensemble`` then fits them again on all rows)."""
    if len(ensemble.col_slices) > TREES_MAX_COLUMNS:
        return {"weight": 0.0, "columns": 0, "used": False,
                "skipped": f"{len(ensemble.col_slices)} columns, more than {TREES_MAX_COLUMNS}"}
    train_rows = np.setdiff1d(np.arange(len(values)), val_idx)
    fill = fit_trees(values, observed, t_num, col_slices=ensemble.col_slices, n_num=ensemble.n_num, rows=train_rows,
                     seed=seed)
    if fill is None:
        return {"weight": 0.0, "columns": 0, "used": False}
    given = observed[val_idx] & ~val_hide
    pred = predict(ensemble, values[val_idx], given)
    lw = np.ones(ensemble.n_num) if loss_weights is None else loss_weights.numpy().astype(np.float64)
    weight, report = fit_weight(fill, pred.num, fill.lookup(values[val_idx], given), t_num[val_idx],
                                val_hide[:, :ensemble.n_num], lw)
    if weight > 0:
        ensemble.trees = with_weight(fill, weight)
    return {**report, "used": weight > 0}


def _fit_donors(ensemble: Ensemble, values, observed, t_num, t_cat, val_idx, val_hide, *, num_weights, loss_weights,
                seed: int) -> dict:
    """Build the donor index on the training rows and fit its blend weights on the held-out
    rows' hidden cells (a row is never its own donor): per evidence band, the weight in steps of
    1/20 with the lowest loss on that band's cells (squared error / cross-entropy as in
    training); a band with no held-out cell takes the weight of the band below (its evidence is
    stronger). The index joins the model only if a weight is above 0. The confidence scale
    stays the networks'."""
    rows = np.arange(len(values))
    if len(rows) > DONOR_MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(len(values), DONOR_MAX_ROWS, replace=False))
    position = np.full(len(values), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    index = DonorIndex.build(values[rows], observed[rows], col_slices=ensemble.col_slices, n_num=ensemble.n_num,
                             cat_sizes=ensemble.cat_sizes)
    given = observed[val_idx] & ~val_hide
    pred = predict(ensemble, values[val_idx], given, num_weights=num_weights)
    fill = index.lookup(values[val_idx], given, exclude=position[val_idx])
    n_num = ensemble.n_num
    lw = np.ones(n_num) if loss_weights is None else loss_weights.numpy().astype(np.float64)
    nw = np.ones(n_num) if num_weights is None else np.asarray(num_weights, dtype=np.float64)
    truth_num = t_num[val_idx].astype(np.float64)
    truth_cat = t_cat[val_idx]
    bands = []
    for band in range(len(index.weight)):
        in_band = (fill.band == band)[:, None]
        h_num = val_hide[:, :n_num] & fill.num_has & in_band
        h_cat = val_hide[:, n_num:] & fill.cat_has & (truth_cat >= 0) & in_band

        def loss(w: float) -> float:
            total = float((lw * ((1 - w) * pred.num + w * fill.num - truth_num) ** 2)[h_num].sum())
            for k, (p, q) in enumerate(zip(pred.cat_probs, fill.cat_probs)):
                r = np.nonzero(h_cat[:, k])[0]
                total -= float(np.log(np.maximum((1 - w) * p[r, truth_cat[r, k]] + w * q[r, truth_cat[r, k]], 1e-12)).sum())
            return total

        weight, before = 0.0, loss(0.0)
        best = before
        for step in range(1, 21):
            value = loss(step / 20)
            if value < best - 1e-9:
                weight, best = step / 20, value
        error = float(((fill.num - truth_num) ** 2 * nw)[h_num].mean()) if h_num.any() else 0.0
        cells = int(h_num.sum() + h_cat.sum())
        if not cells and band > 0:  # nothing held out to measure: the evidence is stronger than the band below's
            weight, error = float(index.weight[band - 1]), float(index.error[band - 1])
        index.weight[band] = weight
        index.error[band] = error
        bands.append({"min_bits": ([DONOR_MIN_BITS] + list(DONOR_BANDS))[band], "weight": weight,
                      "val_cells": cells, "val_loss_without": before, "val_loss_with": best,
                      "error": error})
    if float(index.weight.max()) > 0:
        ensemble.donors = index
    return {"rows": index.n_rows, "val_cells_hidden": int(val_hide.sum()), "bands": bands,
            "used": ensemble.donors is not None}


def _simplex(k: int, steps: int):
    """Every k-vector of multiples of 1/steps summing to 1, the first member's largest share first."""
    def parts(k, left):
        if k == 1:
            yield (left,)
            return
        for a in range(left, -1, -1):
            for rest in parts(k - 1, left - a):
                yield (a,) + rest
    for p in parts(k, steps):
        yield tuple(a / steps for a in p)


@torch.no_grad()
def _val_loss(model, X, M, TN, TC, hide, num_w=None) -> float:
    model.eval()
    given = (M & ~hide).float()
    mu, logvar, logits, _ = model(model.blank(X, given), given)
    loss, _ = cell_losses(model, mu, logvar, logits, TN, TC, hide.float(), num_w)
    return float(loss.sum() / hide.float().sum().clamp(min=1))


def _progress(total: int, enabled: bool, desc: str = "training"):
    """A bar over optimiser steps on stderr (its rate and ETA), or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, unit_scale=True)


@dataclass
class Prediction:
    num: np.ndarray  # (n, n_num) scaled means
    num_var: np.ndarray  # (n, n_num) predicted variances (scaled units)
    cat_probs: list[np.ndarray]  # per categorical column (n, k)
    cell_error: np.ndarray  # (n, n_cols) expected error of each cell's prediction (see below)
    code: np.ndarray  # (n, code) bottleneck
    donor_rows: np.ndarray | None = None  # (n,) bool: a copy of the row (lakefill.models.donors) weighed on its fill


@torch.no_grad()
def predict(model: MaskedAutoencoder | Ensemble, values: np.ndarray, given: np.ndarray, *, batch_size: int = 8192,
            num_weights: np.ndarray | None = None) -> Prediction:
    """One pass: every cell predicted from the ``given`` cells. ``cell_error`` is the predicted
    variance (numeric, times ``num_weights`` if given) or 1 - max probability (categorical)."""
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for s in range(0, len(values), batch_size):
        X = torch.from_numpy(np.ascontiguousarray(values[s:s + batch_size], dtype=np.float32)).to(dev)
        G = torch.from_numpy(np.ascontiguousarray(given[s:s + batch_size], dtype=np.float32)).to(dev)
        outs.append([t.cpu() for t in model(model.blank(X, G), G)])
    if not outs:
        outs.append([t.cpu() for t in model(torch.zeros(0, values.shape[1], device=dev), torch.zeros(0, given.shape[1], device=dev))])
    mu = torch.cat([o[0] for o in outs]).numpy()
    var = torch.exp(torch.cat([o[1] for o in outs])).numpy()
    logits = torch.cat([o[2] for o in outs])
    probs = [torch.softmax(lg, dim=1).numpy() for lg in model.split_logits(logits)]
    code = torch.cat([o[3] for o in outs]).numpy()
    err = np.zeros((len(values), len(model.col_slices)), dtype=np.float64)
    if model.n_num:
        err[:, : model.n_num] = var * (num_weights if num_weights is not None else 1.0)
    trees = getattr(model, "trees", None)
    if trees is not None and len(values):
        mu = blend_trees(trees, trees.lookup(values, given), mu)  # the variance stays the networks'
    donors = getattr(model, "donors", None)
    donor_rows = None
    if donors is not None and len(values):
        fill = donors.lookup(values, given)
        w, e = donors.row_weights(fill), donors.row_errors(fill)
        donor_rows = (w[:, 0] > 0) & (fill.num_has.any(axis=1) | fill.cat_has.any(axis=1))
        mu, probs = blend_donors(donors, fill, mu, probs)
        nw = num_weights if num_weights is not None else 1.0
        var = np.where(fill.num_has, (1 - w) ** 2 * var + w ** 2 * e / np.maximum(nw, 1e-12), var).astype(np.float32)
        err[:, : model.n_num] = var * nw
    for k, p in enumerate(probs):
        err[:, model.n_num + k] = 1.0 - p.max(axis=1)
    return Prediction(mu, var, probs, err, code, donor_rows)


def blend_trees(trees: TreeFill, blend: TreeBlend, num: np.ndarray) -> np.ndarray:
    """The networks' numeric fill blended with the boosted trees' where a column has them."""
    w = trees.row_weights(blend)
    return ((1 - w) * num + w * blend.num).astype(np.float32)


def blend_donors(donors: DonorIndex, fill: DonorFill, num: np.ndarray, cat_probs: list[np.ndarray]):
    """The networks' fill blended with the donors' where a row has donors: (num, cat_probs)."""
    w = donors.row_weights(fill)
    num = np.where(fill.num_has, (1 - w) * num + w * fill.num, num).astype(np.float32)
    cat_probs = [np.where(fill.cat_has[:, k:k + 1], (1 - w) * p + w * q, p).astype(p.dtype)
                 for k, (p, q) in enumerate(zip(cat_probs, fill.cat_probs))]
    return num, cat_probs


def direct_fill_inputs(model: MaskedAutoencoder | Ensemble, values: np.ndarray, observed: np.ndarray, pred: Prediction) -> np.ndarray:
    """The encoded rows with each missing cell set to the direct pass's prediction, in input
    space (numbers: the mean; categories: the probabilities, 0 in the unknown slot). This is
    where reverse training starts from."""
    init = values.copy()
    for j, (a, b) in enumerate(model.col_slices):
        miss = ~observed[:, j]
        if j < model.n_num:
            init[miss, a] = pred.num[miss, j]
        else:
            init[miss, a:b - 1] = pred.cat_probs[j - model.n_num][miss]
            init[miss, b - 1] = 0.0
    return init


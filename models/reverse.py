"""Reverse training: the trained weights are frozen; the missing input cells of each row become
the free parameters and are optimised so that the network reproduces the row's observed cells.

A masked autoencoder predicts a hidden cell from the cells it is given, so "reproduce the
observed cells" means: at each step a random part of the row's observed cells is hidden, the
missing cells are fed at their current values (as if observed), and the hidden observed cells
are scored (squared error / cross-entropy). The loss adds a spherical regulariser that keeps
the bottleneck code near the radius of the row's direct-pass code, and dropout after the input
layer. All rows of a batch are optimised at once, each with its own loss (the total is a sum
of per-row losses and Adam's steps are per parameter, so rows do not interact).

Per-row stopping rule: a share (10%, at least one) of each row's observed cells is held back (never given,
never scored by the objective). Every few steps the held-back cells are predicted from the
current fill; each row keeps the fill with the lowest held-back error seen, and uses it only if
that error is at least ``min_gain`` (20%) below the direct fill's; otherwise the row keeps its
direct fill. Few checks and a margin keep the choice from chasing noise in a handful of cells.
Early stop (``prune_at``): at that step every row's held-back error is checked once more, and a
row whose error is not below its starting fill's stops there (it keeps its best fill so far):
about half the rows go the wrong way from the first steps, and the optimisation runs on
the others only (the batch shrinks; a row's path does not depend on which rows stopped).

The clean pass: the missing cells are split in two halves; each half is predicted from the
observed cells plus the refined values of the other half (a row with one missing cell keeps
the prediction from its observed cells alone).

Determinism: every random draw (held-back cells, hidden cells, dropout, the clean pass's
halves) comes from a counter-based hash of (seed, row key, step, cell), not from a stream
shared by the batch. A row gets the same draws whatever other rows share its batch, so Beam,
Spark and the local job, which batch rows differently, refine a row the same way. The row key
is the row's ``_lf_row_id`` when the caller passes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lakefill.models import members as registry
from lakefill.models.mixture import Ensemble, direct_fill_inputs, predict
from lakefill.models.network import MaskedAutoencoder, cell_losses

__all__ = ["ReverseConfig", "ReverseResult", "RowRandom", "held_back", "reverse_impute"]


@dataclass(frozen=True)
class ReverseConfig:
    # 10 steps, the rows whose held-back error has not gone down after 5 stopping there
    # (``prune_at``): on letter, spam, wine_red, breast and bank at 20% MCAR
    # (benchmarks/reverse_steps.py, results reverse_steps_prune*_<table>.json) the kept fills' RMSE
    # on every set of 89+ re-worked rows was within 0.00025 of 20 steps' without the early stop
    # (which was within 0.0015 of 60 steps'), at 2-2.5x the rows/s
    steps: int = 10
    lr: float = 0.05
    hide: float = 0.3
    holdout: float = 0.1  # share of each row's observed cells held back for the stopping rule (>= 1 cell)
    check_every: int = 20  # how often the held-back error is checked (each check is a candidate)
    # at this step the rows whose held-back error has not gone down stop (0: never)
    prune_at: int = 5
    min_gain: float = 0.2  # keep a refinement only if it cuts the held-back error by this share
    sphere_weight: float = 0.01
    input_dropout: float = 0.1
    # "masked": each step hides a random part of the observed cells and scores those (a masked
    # autoencoder predicts a cell from the others); "reproduce": the source's objective for a
    # plain autoencoder, every cell given and every observed cell scored, and the clean pass is
    # one pass with every cell given
    objective: str = "masked"
    random_state: int = 0

    def __post_init__(self):
        if self.objective not in ("masked", "reproduce"):
            raise ValueError(f"ReverseConfig.objective must be 'masked' or 'reproduce', got {self.objective!r}")
        if self.steps < 0 or self.check_every < 1 or self.prune_at < 0:
            raise ValueError("ReverseConfig.steps must be >= 0 (0: the direct fill, or the adapted model's, is "
                             "only checked), check_every >= 1 and prune_at >= 0")
        if not 0 < self.hide < 1 or not 0 <= self.input_dropout < 1:
            raise ValueError("ReverseConfig.hide must be in (0, 1) and input_dropout in [0, 1)")
        if not 0 <= self.holdout < 0.5:
            raise ValueError(f"ReverseConfig.holdout must be in [0, 0.5), got {self.holdout}")


@dataclass
class ReverseResult:
    values: np.ndarray  # (n, n_inputs) the rows with their missing cells refined (inputs space)
    num: np.ndarray  # (n, n_num) clean-pass numeric predictions (scaled)
    cat_probs: list[np.ndarray]
    improved: np.ndarray  # (n,) bool: the row's held-back error went down, the refined fill is used
    holdout_error_before: np.ndarray
    holdout_error_after: np.ndarray
    steps_run: np.ndarray | None = None  # (n,) the steps each row was optimised for (fewer: the early stop)


_M31 = (1 << 31) - 1


class RowRandom:
    """Uniform draws in [0, 1) keyed by (seed, row key, salt, position): batch-independent."""

    def __init__(self, keys: np.ndarray, seed: int, device: torch.device | str = "cpu"):
        self.device = device
        k = torch.from_numpy(np.array(keys, dtype=np.int64)) & _M31
        self._rows = _mix(_mix(k ^ (seed & _M31)) ^ (_mix(torch.tensor(seed // (1 << 31) & _M31)) + 0x5bd1e995 & _M31))

    def rows(self, index: torch.Tensor) -> "RowRandom":
        """The same draws for the rows at ``index`` only (a row's draws do not depend on the others)."""
        sub = RowRandom.__new__(RowRandom)
        sub.device, sub._rows = self.device, self._rows[index.cpu()]
        return sub

    def uniform(self, salt: int, width: int) -> torch.Tensor:
        # the (rows, width) part runs in int32: every product and sum is masked to its low 31
        # bits, which wrap-around arithmetic mod 2**32 gives exactly as int64 would (same
        # draws, about 3x faster on CPUs without a vector int64 multiply)
        cols = torch.arange(width, dtype=torch.int32)
        s = _mix(torch.tensor((salt * 0x27d4eb2d + 0x165667b1) & _M31))
        rows = _mix(self._rows.unsqueeze(1) ^ s).to(torch.int32)
        x = _mix((rows + cols.unsqueeze(0) * _i32(0x9e3779b1)) & _M31)
        return (x.float() * (1.0 / (1 << 31))).to(self.device)  # x < 2**31: float32 rounding then an exact scale


def _i32(c: int) -> int:
    """The int32 with the low 32 bits of ``c`` (a multiplier for wrap-around int32 arithmetic)."""
    c &= 0xFFFFFFFF
    return c - (1 << 32) if c >= 1 << 31 else c


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (xorshift-multiply) on int64 or int32 tensors: each product is
    masked to 31 bits, so int64 never overflows and int32's wrap-around gives the same bits."""
    x = ((x ^ (x >> 15)) * _i32(0x2C1B3C6D)) & _M31
    x = ((x ^ (x >> 12)) * _i32(0x297A2D39)) & _M31
    return x ^ (x >> 15)


def reverse_impute(model: MaskedAutoencoder | Ensemble, values: np.ndarray, observed: np.ndarray, t_num: np.ndarray,
                   t_cat: np.ndarray, init: np.ndarray, *, config: ReverseConfig = ReverseConfig(),
                   row_keys: np.ndarray | None = None, adapted=None) -> ReverseResult:
    """Refine the missing cells of a batch of rows.

    values/observed/t_num/t_cat: the encoded rows (see TableCodec.encode); init: the same rows
    with their missing cells filled by the direct pass (input space, see ``lakefill.models.mixture.direct_fill_inputs``).
    row_keys: a stable integer per row (its row id) that seeds the row's random draws; by
    default the row's position in the batch.
    adapted: the model with its networks adapted to the run's rows (``lakefill.models.adapt``):
    the rows start from its direct fill and are optimised through it, and each row's held-back
    check compares the result with ``model``'s direct fill (``init``) through ``model``.
    """
    cfg = config
    keys = np.arange(len(values)) if row_keys is None else np.asarray(row_keys)
    if len(keys) != len(values):
        raise ValueError(f"row_keys has {len(keys)} entries for {len(values)} rows")
    gen = RowRandom(keys, cfg.random_state, next(model.parameters()).device)
    reference = None
    for m in (model, adapted):
        if m is not None:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
    if adapted is not None:
        reference = (model, init)
        init = direct_fill_inputs(adapted, values, observed, predict(adapted, values, observed))
        model = adapted
    with torch.enable_grad():  # callers often run inference under no_grad
        result = _run(model, values, observed, t_num, t_cat, init, cfg, gen, reference)
    for blend in registry.blends():  # the trees and a row's copies weigh on the refined fill as on the direct one
        member = getattr(model, blend.name, None)
        if member is not None and len(values):
            result.num, result.cat_probs, _, _ = blend.apply(member, values, observed, result.num, result.cat_probs,
                                                             None, None)
    return result


def _run(model, values, observed, t_num, t_cat, init, cfg, gen, reference=None) -> ReverseResult:
    n, c = observed.shape
    dev = gen.device
    X = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(dev)
    M = torch.from_numpy(np.ascontiguousarray(observed, dtype=bool)).to(dev)
    TN = torch.from_numpy(np.ascontiguousarray(t_num, dtype=np.float32)).to(dev)
    TC = torch.from_numpy(np.ascontiguousarray(t_cat, dtype=np.int64)).to(dev)
    missing = ~M
    fcol = model.feature_col
    miss_feat = missing[:, fcol]  # (n, n_inputs)
    held = held_back(M, gen, cfg.holdout)
    fit_obs = M & ~held
    # free parameters: numeric missing inputs as values, categorical ones as logits
    u = torch.from_numpy(np.ascontiguousarray(init, dtype=np.float32)).to(dev).clone()
    cat_feat = torch.zeros(X.shape[1], dtype=torch.bool, device=dev)
    for (a, b) in model.col_slices[model.n_num:]:
        cat_feat[a:b] = True
    u = torch.where(cat_feat.unsqueeze(0), torch.log(u.clamp(min=1e-4)), u)
    u = u.detach().requires_grad_(True)
    opt = _Adam(u, cfg.lr)
    with torch.no_grad():
        r0 = model(_inputs(model, X, u, miss_feat, cat_feat), (fit_obs | missing).float())[3].norm(dim=1).clamp(min=1e-6)  # per row: batch-independent
    best_u = u.detach().clone()
    best_err = _holdout_error(model, X, u.detach(), miss_feat, cat_feat, fit_obs, missing, held, TN, TC)
    err0 = best_err.clone()
    if reference is not None:  # the trained model's direct fill, checked through the trained model
        ref_model, ref_init = reference
        ur = torch.from_numpy(np.ascontiguousarray(ref_init, dtype=np.float32)).to(dev)
        ur = torch.where(cat_feat.unsqueeze(0), torch.log(ur.clamp(min=1e-4)), ur)
        err0 = _holdout_error(ref_model, X, ur, miss_feat, cat_feat, fit_obs, missing, held, TN, TC)
    hidden_width = model.dropout_width
    reproduce = cfg.objective == "reproduce"
    start_err = best_err.clone()
    steps_run = torch.full((n,), cfg.steps, dtype=torch.int64)
    rows = None  # the rows still optimised (None: all); every per-step tensor below is theirs
    g, x, tn, tc, mf, fo, ms, hb, r = gen, X, TN, TC, miss_feat, fit_obs, missing, held, r0
    for step in range(1, cfg.steps + 1):
        if reproduce:  # every cell given (held-back ones too: a plain network has no mask), observed ones scored
            hide, given = fo, torch.ones_like(fo)
        else:
            hide = (g.uniform(3 * step, c) < cfg.hide) & fo
            given = (fo & ~hide) | ms
        inp = _inputs(model, x, u, mf, cat_feat)
        noise = g.uniform(3 * step + 1, hidden_width) if cfg.input_dropout > 0 else None
        mu, logvar, logits, z = model(model.blank(inp, given.float()), given.float(), input_dropout=cfg.input_dropout,
                                      dropout_noise=noise)
        loss, _ = cell_losses(model, mu, logvar, logits, tn, tc, hide.float())
        per_row = loss.sum(1) / hide.float().sum(1).clamp(min=1)
        sphere = ((z.norm(dim=1) - r) / r) ** 2
        total = (per_row + cfg.sphere_weight * sphere).sum()
        u.grad = None
        total.backward()
        opt.step(u, u.grad * mf)  # only the missing cells move
        if step % cfg.check_every == 0 or step == cfg.steps or step == cfg.prune_at:
            err = _holdout_error(model, x, u.detach(), mf, cat_feat, fo, ms, hb, tn, tc)
            at = slice(None) if rows is None else rows
            better = err < best_err[at] - 1e-9
            best_err[at] = torch.where(better, err, best_err[at])
            best_u[at] = torch.where(better.unsqueeze(1), u.detach(), best_u[at])
            if step == cfg.prune_at and step < cfg.steps and cfg.holdout > 0:  # the early stop (once: rows is None)
                going = err < start_err - 1e-9
                if not going.all():
                    rows = torch.nonzero(going).squeeze(1)
                    steps_run[~going.cpu()] = step
                    g = gen.rows(rows)
                    x, tn, tc, mf, fo, ms, hb, r = (t[rows] for t in (X, TN, TC, miss_feat, fit_obs, missing, held, r0))
                    u = u.detach()[rows].requires_grad_(True)
                    opt = opt.rows(rows)
                    if not len(rows):
                        break
    if cfg.holdout > 0:  # a row without held-back cells (too few observed) keeps its direct fill
        improved = best_err < (1.0 - cfg.min_gain) * err0 - 1e-9
    else:  # nothing held back (holdout 0, as in the source): no safety net, every row takes its refinement
        improved, best_u = torch.ones(n, dtype=torch.bool, device=dev), u.detach()
    refined = _inputs(model, X, best_u, miss_feat, cat_feat).detach()
    num, probs = _clean_pass(model, refined, M, gen, whole=reproduce)
    after = torch.where(improved, best_err, err0)
    return ReverseResult(refined.cpu().numpy(), num, probs, improved.cpu().numpy(), err0.cpu().numpy(), after.cpu().numpy(),
                         steps_run.cpu().numpy())


class _Adam:
    """Adam (torch.optim.Adam's update, defaults: betas 0.9 and 0.999, eps 1e-8) on one tensor of
    free parameters, written out: its moments are per parameter, so the rows that go on after the
    early stop keep theirs (``rows``), and a process's first step does not pay torch.optim's
    first-use cost (~0.9 s of imports on this machine, once per worker process)."""

    def __init__(self, u: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m, self.v = torch.zeros_like(u), torch.zeros_like(u)

    @torch.no_grad()
    def step(self, u: torch.Tensor, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
        u.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))

    def rows(self, index: torch.Tensor) -> "_Adam":
        """The same optimiser for the rows at ``index`` only (their moments, the same step count)."""
        out = _Adam.__new__(_Adam)
        out.lr, out.betas, out.eps, out.t = self.lr, self.betas, self.eps, self.t
        out.m, out.v = self.m[index].clone(), self.v[index].clone()
        return out


def held_back(M: torch.Tensor, gen: RowRandom, holdout: float) -> torch.Tensor:
    """The observed cells each row holds back for the stopping rule: ``holdout`` of them (at
    least one), only where 2 or more observed cells remain. Keyed by the row (``gen``), so the
    adaptation (``lakefill.models.adapt``) can leave out exactly the cells refinement checks on."""
    held = torch.zeros_like(M)
    if holdout > 0:
        n_obs = M.sum(1)
        k = torch.where(n_obs >= 3, (holdout * n_obs).ceil().clamp(min=1), torch.zeros_like(n_obs))
        k = torch.minimum(k, (n_obs - 2).clamp(min=0))
        scores = gen.uniform(1, M.shape[1]) + (~M) * 10.0  # observed cells rank first
        rank = scores.argsort(dim=1).argsort(dim=1)
        held = (rank < k.unsqueeze(1)) & M
    return held


def _inputs(model, X, u, miss_feat, cat_feat):
    """Observed features from X, missing ones from u (softmax over each categorical block)."""
    filled = u
    if cat_feat.any():
        parts = []
        for j, (a, b) in enumerate(model.col_slices):
            block = u[:, a:b]
            parts.append(torch.softmax(block, dim=1) if j >= model.n_num else block)
        filled = torch.cat(parts, dim=1)
    return torch.where(miss_feat, filled, X)


@torch.no_grad()
def _holdout_error(model, X, u, miss_feat, cat_feat, fit_obs, missing, held, TN, TC) -> torch.Tensor:
    if not held.any():
        return torch.zeros(len(X), device=X.device)
    given = (fit_obs | missing).float()
    inp = _inputs(model, X, u, miss_feat, cat_feat)
    mu, logvar, logits, _ = model(model.blank(inp, given), given)
    loss, _ = cell_losses(model, mu, logvar, logits, TN, TC, held.float())
    return loss.sum(1) / held.float().sum(1).clamp(min=1)


@torch.no_grad()
def _clean_pass(model, refined, M, gen, whole: bool = False):
    """``whole``: one pass with every cell given (a plain autoencoder's clean pass)."""
    missing = ~M
    n, c = M.shape
    half = (gen.uniform(2, c) < 0.5) & missing
    other = missing & ~half
    mu_out = torch.zeros(n, model.n_num, device=refined.device)
    logits_out = torch.zeros(n, sum(model.cat_sizes), device=refined.device)
    for part in ((missing,) if whole else (half, other)):
        # the observed cells and the other half's refined values (whole: the refined cells too)
        given = torch.ones_like(refined[:, :c]) if whole else (~part).float()
        mu, _, logits, _ = model(model.blank(refined, given), given)
        mu_out = torch.where(part[:, : model.n_num], mu, mu_out)
        cat_part = torch.cat([part[:, model.n_num + k: model.n_num + k + 1].expand(-1, s)
                              for k, s in enumerate(model.cat_sizes)], dim=1) if model.cat_sizes else logits[:, :0].bool()
        logits_out = torch.where(cat_part, logits, logits_out)
    probs = [torch.softmax(lg, dim=1).cpu().numpy() for lg in model.split_logits(logits_out)]
    return mu_out.cpu().numpy(), probs

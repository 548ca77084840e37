"""Adaptation: a copy of the trained networks fine-tuned on the observed cells of the rows a run
brings (test-time training), for the side stage to fill its low-confidence rows with.

A model is trained once and broadcast; the partitions it meets later drift. Their observed
cells are data from the new distribution: the networks' own objective (hide a random part of a
row's observed cells, predict them) on those rows moves the weights toward it. Measured under
protocol E (docs/benchmarks.md), this is what makes the side stage pay; optimising a row's
inputs against frozen weights (reverse training alone) cannot learn what the weights never saw.

Rules that keep it honest and repeatable:

- The cells a row holds back for refinement's check (``lakefill.models.reverse.held_back``,
  keyed by the row) are never given nor scored here, so a row's check judges a fill the
  adapted weights did not learn from.
- A share of the rows (``check_share``, chosen by a hash of the row key) is kept out of the
  fine-tuning; the adapted networks are used only if their loss on those rows' hidden cells is
  lower than the trained networks'. Otherwise ``adapt_model`` returns the model unchanged.
- Rows are taken in row-key order and every draw is seeded: the same rows and model give the
  same adapted model, whatever order or engine delivered the rows.

Only the networks move. The Gaussian member, the mixture weights, the trees and the donors are
the trained model's (shared, not copied). A chained round (a blend whose trees read the fill so
far) is left out of the adapted model: its trees learned the training rows' fill and cannot
follow rows that drifted past them (protocol E, wine_red seed 0: all rows 0.1232 without it,
0.1349 with it).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lakefill.models import members as registry
from lakefill.models.config import AEConfig
from lakefill.models.mixture import Ensemble
from lakefill.models.network import MaskedAutoencoder, cell_losses
from lakefill.models.reverse import ReverseConfig, RowRandom, held_back
from lakefill.models.training import _hide_mask

__all__ = ["AdaptConfig", "adapt_model", "with_networks"]


@dataclass(frozen=True)
class AdaptConfig:
    # 300 steps of 256 rows at 1e-3 (Adam): on wine_red's drift split 300 steps gave the
    # adapted fill 0.122 RMSE against 0.126 for 100 and 0.144 unadapted (benchmarks/drift.py)
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 256
    max_rows: int = 20_000  # rows used (the smallest row keys' hashes first): a cap on memory, not on time
    check_share: float = 0.2  # rows kept out of the fine-tuning to decide whether it is used
    random_state: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.max_rows < 2:
            raise ValueError("AdaptConfig.steps and batch_size must be >= 1, max_rows >= 2")
        if not self.lr > 0 or not 0 < self.check_share < 1:
            raise ValueError("AdaptConfig.lr must be > 0 and check_share in (0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def _networks(model) -> list[MaskedAutoencoder]:
    members = model.members if isinstance(model, Ensemble) else [model]
    return [m for m in members if isinstance(m, MaskedAutoencoder)]


def with_networks(model):
    """The model with its networks copied (the Gaussian member and the blends shared)."""
    if isinstance(model, MaskedAutoencoder):
        return copy.deepcopy(model)
    members = [copy.deepcopy(m) if isinstance(m, MaskedAutoencoder) else m for m in model.members]
    blends = {b.name: getattr(model, b.name, None) if b.adapts else None for b in registry.blends()}
    out = Ensemble(members, model.weights.tolist(), **blends)
    out.weights.copy_(model.weights)
    return out.to(model.weights.device)


def adapt_model(model, values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, t_cat: np.ndarray, *,
                row_keys: np.ndarray, config: AdaptConfig = AdaptConfig(),
                reverse: ReverseConfig = ReverseConfig()) -> tuple[object, dict]:
    """(the model to refine with, a report). The rows are encoded (``TableCodec.encode``) with
    their missing cells missing; ``row_keys`` are their stable ids; ``reverse`` is the refine
    step's config (its ``holdout`` and ``random_state`` say which cells each row holds back)."""
    cfg = config
    t0 = time.perf_counter()
    keys = np.asarray(row_keys, dtype=np.int64)
    if len(keys) != len(values):
        raise ValueError(f"row_keys has {len(keys)} entries for {len(values)} rows")
    report = {"config": cfg.to_dict(), "rows_offered": int(len(keys)), "used": False}
    # row-key order, then the rows whose keys hash lowest up to max_rows: independent of delivery order
    # the rows used: the max_rows whose keys hash lowest (one draw); the check rows: another draw
    order = np.lexsort((keys, RowRandom(keys, cfg.random_state).uniform(12, 1)[:, 0].numpy()))[: cfg.max_rows]
    order = order[np.argsort(keys[order], kind="stable")]
    keys = keys[order]
    pick = RowRandom(keys, cfg.random_state).uniform(11, 1)[:, 0].numpy()
    M = torch.from_numpy(np.ascontiguousarray(observed[order], dtype=bool))
    held = held_back(M, RowRandom(keys, reverse.random_state), reverse.holdout)
    M = M & ~held
    check = torch.from_numpy(pick < cfg.check_share)
    fit_rows = torch.nonzero(~check & (M.sum(1) >= 2))[:, 0]
    check_rows = torch.nonzero(check & (M.sum(1) >= 2))[:, 0]
    report.update(rows_fitted=int(len(fit_rows)), rows_checked=int(len(check_rows)))
    if len(fit_rows) < 2 or len(check_rows) < 1:
        report["reason"] = "too few rows with 2+ observed cells to adapt on and to check"
        return model, report
    X = torch.from_numpy(np.ascontiguousarray(values[order], dtype=np.float32))
    TN = torch.from_numpy(np.ascontiguousarray(t_num[order], dtype=np.float32))
    TC = torch.from_numpy(np.ascontiguousarray(t_cat[order], dtype=np.int64))
    dev = next(model.parameters()).device
    hide_cfg = AEConfig(random_state=cfg.random_state)
    # the check: a fixed third of each check row's usable cells hidden (at least one)
    gen_check = RowRandom(keys[check_rows.numpy()], cfg.random_state)
    Mc = M[check_rows]
    u = gen_check.uniform(13, M.shape[1])
    hide_c = (u < 1 / 3) & Mc
    first = torch.where(Mc, u, torch.full_like(u, 2.0)).argmin(1)
    hide_c[torch.arange(len(Mc)), first] |= ~hide_c.any(1)
    before = _check_loss(model, X[check_rows], Mc, hide_c, TN[check_rows], TC[check_rows], dev)

    adapted = with_networks(model)
    nets = _networks(adapted)
    params = [p for n in nets for p in n.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.random_state)
    bs = min(cfg.batch_size, len(fit_rows))
    with torch.enable_grad():
        for _ in range(cfg.steps):
            b = fit_rows[torch.randint(0, len(fit_rows), (bs,), generator=gen)]
            m = M[b]
            hide = _hide_mask(m, hide_cfg, gen)
            given = (m & ~hide).float().to(dev)
            total = 0.0
            for net in nets:  # each network on its own objective, as in training
                mu, logvar, logits, _ = net(net.blank(X[b].to(dev), given), given)
                loss, var_loss = cell_losses(net, mu, logvar, logits, TN[b].to(dev), TC[b].to(dev), hide.float().to(dev))
                total = total + (loss.sum() + var_loss.sum()) / hide.float().sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    adapted.eval()
    after = _check_loss(adapted, X[check_rows], Mc, hide_c, TN[check_rows], TC[check_rows], dev)
    used = after < before
    report.update(check_loss_before=round(before, 6), check_loss_after=round(after, 6), used=bool(used),
                  seconds=round(time.perf_counter() - t0, 3))
    if not used:
        report["reason"] = "the adapted networks did not lower the loss on the check rows"
    return (adapted if used else model), report


@torch.no_grad()
def _check_loss(model, X, M, hide, TN, TC, dev) -> float:
    """The model's mean loss (squared error on the scaled numbers, cross-entropy on categories) on
    the hidden cells, the rest of each row's observed cells given."""
    given = (M & ~hide).float().to(dev)
    mu, logvar, logits, _ = model(model.blank(X.to(dev), given), given)
    loss, _ = cell_losses(model, mu, logvar, logits, TN.to(dev), TC.to(dev), hide.float().to(dev))
    return float(loss.sum() / hide.float().sum().clamp(min=1))

"""The masked autoencoder for mixed tables, its training and its direct (one-pass) imputation.

Input: the encoded row with missing cells blanked (zeros) plus the per-column missing-mask.
Output: for numeric columns a mean and a log-variance, for categorical columns logits over the
known values. Training hides extra observed cells at random and scores only those (squared
error for numerics, cross-entropy for categories): the loss never touches a missing cell.
Inputs are robust-scaled (median, IQR); each numeric column's squared error is weighted so that
it counts on the column's min-max scale (``loss_scale="range"``): a heavy-tailed column's
outliers, huge in robust units, do not drive the training.
The log-variance head is trained on the detached mean (it does not pull the mean), and gives
the per-cell uncertainty that row confidence is built from.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AEConfig", "MaskedAutoencoder", "TrainResult", "train_autoencoder", "predict", "Prediction",
           "direct_fill_inputs"]


@dataclass(frozen=True)
class AEConfig:
    hidden: int = 256
    depth: int = 3
    code: int = 64
    epochs: int = 300
    min_steps: int = 6000  # small tables train for more epochs, up to this many steps
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    max_hide: float = 0.5  # each training row hides a U(0, max_hide) share of its observed cells
    block_hide: float = 0.0  # share of rows that hide one contiguous block of columns instead
    recon_weight: float = 0.0  # weight of the loss on the given (not hidden) observed cells
    val_fraction: float = 0.1
    patience: int = 25
    # early stopping counts epochs without improvement only after this share of the schedule:
    # the one-cycle rate is still near its peak before that, and stopping there keeps an
    # under-annealed model (the best epoch so far is kept either way)
    patience_after: float = 0.5
    # numeric loss per column on its min-max scale ("range", what a user reads an error on) or
    # on the robust z scale of the inputs ("robust": a heavy-tailed column's outliers dominate)
    loss_scale: str = "range"
    random_state: int = 0

    def __post_init__(self):
        for name in ("hidden", "depth", "code", "epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"AEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_hide < 1:
            raise ValueError(f"AEConfig.max_hide must be in (0, 1), got {self.max_hide}")
        if not 0 <= self.block_hide <= 1:
            raise ValueError(f"AEConfig.block_hide must be in [0, 1], got {self.block_hide}")
        if not 0 <= self.patience_after < 1:
            raise ValueError(f"AEConfig.patience_after must be in [0, 1), got {self.patience_after}")
        if self.loss_scale not in ("range", "robust"):
            raise ValueError(f"AEConfig.loss_scale must be 'range' or 'robust', got {self.loss_scale!r}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"AEConfig.val_fraction must be in (0, 0.5), got {self.val_fraction}")


class MaskedAutoencoder(nn.Module):
    def __init__(self, *, n_inputs: int, col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int],
                 hidden: int, depth: int, code: int):
        super().__init__()
        self.n_inputs, self.n_num, self.cat_sizes = n_inputs, n_num, list(cat_sizes)
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
        # expands a per-column mask to the input features
        index = torch.zeros(n_inputs, dtype=torch.long)
        for j, (a, b) in enumerate(self.col_slices):
            index[a:b] = j
        self.register_buffer("feature_col", index, persistent=False)

    def forward(self, values: torch.Tensor, mask: torch.Tensor, *, input_dropout: float = 0.0,
                generator: torch.Generator | None = None, dropout_noise: torch.Tensor | None = None):
        """values (n, n_inputs) with hidden cells zeroed by the caller; mask (n, n_cols) 1 = given.
        ``dropout_noise``: uniforms of the hidden layer's shape to draw the dropout from (else ``generator``)."""
        x = torch.cat([values, mask], dim=1)
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

    def blank(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero the input features of every column whose mask is 0."""
        return values * mask[:, self.feature_col]

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(logits, self.cat_sizes, dim=1)) if self.cat_sizes else []


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
    for k, lg in enumerate(model.split_logits(logits)):
        target = t_cat[:, k]
        ce = F.cross_entropy(lg, target.clamp(min=0), reduction="none")
        loss[:, model.n_num + k] = torch.where(target >= 0, ce, torch.zeros_like(ce))
    return loss * score_mask, var_loss * score_mask


@dataclass
class TrainResult:
    model: MaskedAutoencoder
    epochs_run: int
    best_epoch: int
    val_loss: float
    history: list[float] = field(default_factory=list)
    error_reference: float = 1.0  # median predicted row error on validation rows (confidence scale)


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


def train_autoencoder(values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, t_cat: np.ndarray, *,
                      col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int], config: AEConfig,
                      num_weights: np.ndarray | None = None, progress: bool = False) -> TrainResult:
    """Train on observed cells only; early stopping on held-out rows' hidden observed cells."""
    cfg = config
    gen = torch.Generator().manual_seed(cfg.random_state)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(cfg.random_state)
        model = MaskedAutoencoder(n_inputs=values.shape[1], col_slices=col_slices, n_num=n_num, cat_sizes=cat_sizes,
                                  hidden=cfg.hidden, depth=cfg.depth, code=cfg.code)
    X = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    M = torch.from_numpy(np.ascontiguousarray(observed, dtype=bool))
    TN = torch.from_numpy(np.ascontiguousarray(t_num, dtype=np.float32))
    TC = torch.from_numpy(np.ascontiguousarray(t_cat, dtype=np.int64))
    n = len(X)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(cfg.val_fraction * n))) if n >= 20 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    val_gen = torch.Generator().manual_seed(cfg.random_state + 1)
    num_w = _loss_weights(cfg, num_weights, n_num)
    val_hide = _hide_mask(M[val_idx], AEConfig(max_hide=0.4, random_state=cfg.random_state), val_gen) if n_val else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # small tables: smaller batches and more epochs, so that training always gets enough steps
    batch_size = int(min(cfg.batch_size, max(32, len(train_idx) // 16)))
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    patience = max(cfg.patience, math.ceil(cfg.patience * epochs / cfg.epochs))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    best, best_state, best_epoch, bad_epochs, history = math.inf, None, 0, 0, []
    bar = _progress(epochs, progress)
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for s in range(steps_per_epoch):
            b = order[s * batch_size:(s + 1) * batch_size]
            if len(b) == 0:
                continue
            m = M[b]
            hide = _hide_mask(m, cfg, gen)
            given = (m & ~hide).float()
            mu, logvar, logits, _ = model(model.blank(X[b], given), given)
            loss, var_loss = cell_losses(model, mu, logvar, logits, TN[b], TC[b], hide.float(), num_w)
            denom = hide.float().sum().clamp(min=1)
            total = (loss.sum() + var_loss.sum()) / denom
            if cfg.recon_weight > 0:  # optional: also reproduce the given cells
                recon, _ = cell_losses(model, mu, logvar, logits, TN[b], TC[b], given)
                total = total + cfg.recon_weight * recon.sum() / given.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
        if n_val:
            val = _val_loss(model, X[val_idx], M[val_idx], TN[val_idx], TC[val_idx], val_hide, num_w)
        else:
            val = float(total.detach())
        history.append(val)
        if bar is not None:
            bar.set_postfix(val_loss=f"{val:.4f}")
            bar.update(1)
        if val < best - 1e-5:
            best, best_state, best_epoch, bad_epochs = val, copy.deepcopy(model.state_dict()), epoch, 0
        elif epoch > cfg.patience_after * epochs:
            bad_epochs += 1
            if bad_epochs >= patience:
                break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    ref = 1.0
    if n_val:
        pred = predict(model, values[val_idx.numpy()], observed[val_idx.numpy()] & ~val_hide.numpy(), num_weights=num_weights)
        err = pred.cell_error[val_hide.numpy()]
        ref = float(np.median(err)) if err.size and np.median(err) > 0 else 1.0
    return TrainResult(model, epoch, best_epoch, best, history, ref)


@torch.no_grad()
def _val_loss(model, X, M, TN, TC, hide, num_w=None) -> float:
    model.eval()
    given = (M & ~hide).float()
    mu, logvar, logits, _ = model(model.blank(X, given), given)
    loss, _ = cell_losses(model, mu, logvar, logits, TN, TC, hide.float(), num_w)
    return float(loss.sum() / hide.float().sum().clamp(min=1))


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="training", unit="epoch", file=sys.stderr)


@dataclass
class Prediction:
    num: np.ndarray  # (n, n_num) scaled means
    num_var: np.ndarray  # (n, n_num) predicted variances (scaled units)
    cat_probs: list[np.ndarray]  # per categorical column (n, k)
    cell_error: np.ndarray  # (n, n_cols) expected error of each cell's prediction (see below)
    code: np.ndarray  # (n, code) bottleneck


@torch.no_grad()
def predict(model: MaskedAutoencoder, values: np.ndarray, given: np.ndarray, *, batch_size: int = 8192,
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
    for k, p in enumerate(probs):
        err[:, model.n_num + k] = 1.0 - p.max(axis=1)
    return Prediction(mu, var, probs, err, code)


def direct_fill_inputs(model: MaskedAutoencoder, values: np.ndarray, observed: np.ndarray, pred: Prediction) -> np.ndarray:
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


"""The masked autoencoder network and its per-cell training loss.

Input: the encoded row with missing cells blanked (zeros) plus the per-column missing-mask.
Output: for numeric columns a mean and a log-variance, for categorical columns logits over the
known values, and the bottleneck code. ``cell_losses`` scores cells: squared error for numerics
(optionally weighted per column), cross-entropy over each category's softmax (all columns at
once), and the Gaussian NLL of the detached mean for the log-variance head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MaskedAutoencoder", "cell_losses"]

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

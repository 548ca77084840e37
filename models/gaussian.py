"""The Gaussian member: a multivariate normal over the encoded row, fitted by EM, with the
network's interface (conditional means and variances given a row's given cells)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lakefill.models.network import MaskedAutoencoder, _feature_col

__all__ = ["GaussianMember", "fit_gaussian", "GAUSSIAN_MAX_FEATURES", "GAUSSIAN_MAX_ROWS"]

GAUSSIAN_MAX_FEATURES = 128  # wider inputs: no Gaussian candidate (its cost grows with the cube of the width)


# EM runs on at most this many training rows (a seeded draw): its cost is rows x width^3 per
# iteration, and a covariance of 128 features is well estimated long before (bank: 34 s at 20,000)
GAUSSIAN_MAX_ROWS = 5_000


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

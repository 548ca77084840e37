"""The mixture: the members used as one model (``Ensemble``), its one-pass prediction with the
trees and donors blended in (``predict``), and the direct fill reverse training starts from."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lakefill.models.gaussian import GaussianMember
from lakefill.models import members as registry
from lakefill.models.network import MaskedAutoencoder

__all__ = ["Ensemble", "mix", "Prediction", "predict", "direct_fill_inputs"]

class Ensemble(nn.Module):
    """Networks of different sizes trained on the same table (and, where it earns a weight, a
    ``GaussianMember``), used as one model with the network's interface: a mixture with fixed
    weights (fitted on held-out cells, see ``train_ensemble``). Numeric mean = the members'
    weighted mean, variance = the mixture's (their variances plus their means' spread:
    disagreement lowers confidence), category
    probabilities = the weighted mean (returned as log-probabilities: softmax gives them back),
    bottleneck code = the members' codes side by side. One member is that member, unchanged.
    The registered blends (``lakefill.models.members.blends()``: ``trees``, a fitted ``TreeFill``,
    ``donors``, a ``DonorIndex``, ...; None: not in the model) are attributes of their names, not
    part of the forward pass: ``predict`` blends them into the mixture's fill in the registry's order."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None, **blends: nn.Module | None):
        super().__init__()
        names = [b.name for b in registry.blends()]
        unknown = sorted(set(blends) - set(names))
        if unknown:
            raise ValueError(f"unknown blend(s) {unknown}; the model's blends are {names}")
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
        for name in names:
            setattr(self, name, blends.get(name))

    def blends(self) -> dict:
        """The registered blends' members of this model (None: not in it), in the order they apply."""
        return {b.name: getattr(self, b.name, None) for b in registry.blends()}

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
        outs.append([t.float().cpu() for t in model(model.blank(X, G), G)])  # float32 under a bf16 autocast too
    if not outs:
        outs.append([t.cpu() for t in model(torch.zeros(0, values.shape[1], device=dev), torch.zeros(0, given.shape[1], device=dev))])
    mu = torch.cat([o[0] for o in outs]).numpy()
    var = torch.exp(torch.cat([o[1] for o in outs])).numpy()
    logits = torch.cat([o[2] for o in outs])
    probs = [torch.softmax(lg, dim=1).numpy() for lg in model.split_logits(logits)]
    code = torch.cat([o[3] for o in outs]).numpy()
    err = np.zeros((len(values), len(model.col_slices)), dtype=np.float64)
    extras: dict = {}
    for blend in registry.blends():  # the trees, then the donors (lakefill.models.members)
        member = getattr(model, blend.name, None)
        if member is not None and len(values):
            mu, probs, var, more = blend.apply(member, values, given, mu, probs, var, num_weights)
            extras.update(more)
    if model.n_num:
        err[:, : model.n_num] = var * (num_weights if num_weights is not None else 1.0)
    for k, p in enumerate(probs):
        err[:, model.n_num + k] = 1.0 - p.max(axis=1)
    return Prediction(mu, var, probs, err, code, extras.get("donor_rows"))


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

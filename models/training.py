"""Training: one network (``train_autoencoder``: hidden observed cells scored, the plateau or
one-cycle schedule, early stopping on held-out rows, an optional time limit) and the whole model
(``train_ensemble``: the networks, the Gaussian, the mixture weights, the trees and the donors,
each weighed on the same held-out cells, within ``AEConfig.time_budget``)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from torch.nn import functional as F

from lakefill.models.codec import TableCodec
from lakefill.models.config import AEConfig
from lakefill.models.mixture import Ensemble, mix, predict
from lakefill.models import members as registry
from lakefill.models.members import HeldOut
from lakefill.models.network import MaskedAutoencoder, cell_losses
from lakefill.progress import progress as progress_over, stderr_line
from lakefill.schema import TableSchema

__all__ = ["TrainResult", "TrainPlan", "Budget", "train_autoencoder", "train_networks", "ddp_networks", "train_ensemble",
           "FittedModel", "fit_model"]

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
    # per registered member (lakefill.models.members), its report: weight, held-out loss ... (None: not fitted)
    reports: dict[str, dict | None] = field(default_factory=dict)


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
                      bar=None, distributed: bool = False) -> TrainResult:
    """Train on observed cells only; early stopping on held-out rows' hidden observed cells.
    ``seconds``: a time limit; the schedule is then planned to fit it (the steps are cut to what
    the measured step time allows) and training stops at the limit whatever happens (the best
    epoch so far is kept). ``bar``: a progress bar to advance by steps (else its own if ``progress``).
    ``distributed``: one rank of a torch.distributed group (``ddp_networks``): the same held-out
    rows on every rank, the training rows partitioned (rank r keeps every world-th row), each step
    a 1/world share of the batch from each rank's part, gradients averaged by DDP, the stopping
    decisions agreed by all ranks; the same model on every rank."""
    cfg = config
    gen = torch.Generator().manual_seed(cfg.random_state)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
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
    forward, hide_gen, part = model, gen, train_idx
    if distributed:  # DDP averages the gradients; the order of the parts is drawn from the same seed on every rank
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model)
        hide_gen = torch.Generator().manual_seed(cfg.random_state * 1009 + 7919 * (rank + 1))
        part = train_idx[rank::world]
        batch_size = max(1, math.ceil(math.ceil(len(train_idx) / world) / steps_per_epoch))

    def step(b: torch.Tensor, model, opt, gen, forward=None) -> torch.Tensor:
        m = M[b]
        hide = _hide_mask(m, cfg, gen)
        given = (m & ~hide).float()
        mu, logvar, logits, _ = (forward or model)(model.blank(X[b], given), given)
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
            step(part[s * batch_size:(s + 1) * batch_size], trial, trial_opt, trial_gen)
        per_epoch = (time.perf_counter() - t0) / probes * steps_per_epoch * 1.1  # + the held-out check
        fits = int(_agree(max(0.0, deadline - time.perf_counter()) // max(per_epoch, 1e-9), "min", distributed))
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
        order = part[torch.randperm(len(part), generator=gen)]
        for s in range(steps_per_epoch):
            if distributed:  # every rank takes a step together: the last batch wraps around its part
                b = order[(s * batch_size + torch.arange(batch_size)) % len(order)]
            else:
                b = order[s * batch_size:(s + 1) * batch_size]
            if len(b) == 0:
                continue
            total = step(b, model, opt, hide_gen, forward)
            sched.step()
            if deadline is not None and _agree(time.perf_counter() > deadline, "max", distributed):
                out_of_time = True
                break
        if n_val:
            val = _val_loss(model, X[val_idx], M[val_idx], TN[val_idx], TC[val_idx], val_hide, num_w)
        else:
            val = float(total.detach())
        val = _agree(val, "mean", distributed)  # the same on every rank (the same weights, the same rows)
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


def _agree(value, how: str, distributed: bool):
    """``value`` agreed by every rank of the group (min, max or mean); itself when not distributed."""
    if not distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    op = {"min": torch.distributed.ReduceOp.MIN, "max": torch.distributed.ReduceOp.MAX}.get(how, torch.distributed.ReduceOp.SUM)
    torch.distributed.all_reduce(t, op=op)
    out = float(t) / torch.distributed.get_world_size() if how == "mean" else float(t)
    return bool(out) if isinstance(value, bool) else type(value)(out)


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
                   num_weights: np.ndarray | None = None, progress: bool = False, log=None,
                   networks=None) -> TrainResult:
    """Train one network per size of ``config`` (``config.member_configs()``: same seed, same
    held-out rows and hidden cells, each exactly as it would train alone) and the registered
    mixture members (``lakefill.models.members``: the Gaussian) on the same training rows; then fit the mixture
    weights that minimise the loss on the held-out hidden cells (a grid of step 1/20 over the
    weight simplex; the networks together always keep a share). A member whose weight is 0 is
    left out of the model. Returns the Ensemble with its own held-out loss and confidence scale.
    ``networks``: what trains the networks (``train_networks``'s signature; e.g. Spark's
    ``TorchDistributor`` running ``ddp_networks``); the members after them are fitted here."""
    budget = Budget(config.time_budget)
    results = (networks or train_networks)(values, observed, t_num, t_cat, col_slices=col_slices, n_num=n_num,
                                          cat_sizes=cat_sizes, config=config, num_weights=num_weights,
                                          progress=progress, log=log)
    say = (log or stderr_line) if progress else (lambda text: None)
    first = results[0]
    loss_weights = _loss_weights(config, num_weights, n_num)
    data = HeldOut(values, observed, t_num, t_cat, first.val_idx, first.val_hide, num_weights,
                   np.ones(n_num) if loss_weights is None else loss_weights.numpy().astype(np.float64),
                   config.random_state)
    reports: dict[str, dict | None] = {m.name: None for m in registry.members()}
    skipped = {"skipped": "time budget spent", "used": False, "weight": 0.0}
    candidates, owners = [r.model for r in results], [None] * len(results)
    for member in registry.mixtures():  # the mixture's candidates beside the networks, in the registry's order
        if not config.uses(member.name):
            continue
        if budget.left() <= 0:
            reports[member.name] = dict(skipped)
            continue
        say(f"training: the {member.name} member")
        module, reports[member.name] = member.candidate(first.model, data)
        if module is not None:
            candidates.append(module)
            owners.append(member.name)
    weights = [1.0] + [0.0] * (len(candidates) - 1)
    val_loss, ref = first.val_loss, first.error_reference
    if len(candidates) > 1 and first.val_idx is not None:  # too few rows to hold out: the first network alone
        vi, vh = first.val_idx, first.val_hide
        X = torch.from_numpy(np.ascontiguousarray(values[vi], dtype=np.float32))
        G = torch.from_numpy(observed[vi] & ~vh).float()
        TN = torch.from_numpy(np.ascontiguousarray(t_num[vi], dtype=np.float32))
        TC = torch.from_numpy(np.ascontiguousarray(t_cat[vi], dtype=np.int64))
        H = torch.from_numpy(vh).float()
        with torch.no_grad():
            outs = [m.eval()(m.blank(X, G), G) for m in candidates]
            for k, owner in enumerate(owners):
                if owner is not None:
                    loss, _ = cell_losses(first.model, outs[k][0], outs[k][1], outs[k][2], TN, TC, H, loss_weights)
                    reports[owner]["val_loss"] = float(loss.sum() / H.sum().clamp(min=1))
            best = math.inf
            for w in _simplex(len(candidates), 20):
                if not any(w[: len(results)]):  # the networks always keep a share
                    continue
                mu, logvar, log_p = mix(first.model, [o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs],
                                        torch.tensor(w))
                loss, _ = cell_losses(first.model, mu, logvar, log_p, TN, TC, H, loss_weights)
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
    for owner, w in zip(owners, weights):
        if owner is not None:
            reports[owner]["weight"] = w
    if first.val_idx is not None:
        for blend in registry.blends():  # each weighed on the mixture with the blends before it (the donors on the trees)
            if config.uses(blend.name):
                if budget.left() > 0:
                    say(f"training: the {blend.name} member")
                reports[blend.name] = dict(skipped) if budget.left() <= 0 else blend.fit(ensemble, data)
        for blend in registry.blends():  # kept blends: a last step now that nothing else is weighed (the trees: all rows)
            if getattr(ensemble, blend.name) is not None:
                blend.refit(ensemble, data, reports[blend.name])
    return TrainResult(ensemble, max(r.epochs_run for r in results), first.best_epoch, val_loss,
                       first.history, ref, first.val_idx, first.val_hide, members, reports)


def train_networks(values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, t_cat: np.ndarray, *,
                   col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int], config: AEConfig,
                   num_weights: np.ndarray | None = None, progress: bool = False, log=None,
                   distributed: bool = False) -> list[TrainResult]:
    """One network per size of ``config`` (``config.member_configs()``), one after the other,
    sharing the networks' part of ``config.time_budget`` by their planned work; one progress bar
    (or log line) over all their steps. ``distributed``: this process is one rank of a group."""
    budget = Budget(config.time_budget)
    n_train = len(values) - _held_out(config, len(values))
    configs = config.member_configs()
    plans = [TrainPlan.of(cfg, n_train) for cfg in configs]
    work = [plan.work(cfg.size, values.shape[1]) for cfg, plan in zip(configs, plans)]
    # one bar over every network's planned steps: its rate and ETA are the whole training's
    bar = _progress(sum(plan.steps for plan in plans), progress, desc=f"training {len(configs)} network(s)", log=log)
    results = []
    for k, cfg in enumerate(configs):
        results.append(train_autoencoder(values, observed, t_num, t_cat, col_slices=col_slices, n_num=n_num,
                                         cat_sizes=cat_sizes, config=cfg, num_weights=num_weights, bar=bar,
                                         seconds=budget.for_network(work[k], sum(work[k:])), distributed=distributed))
    if bar is not None:
        bar.close()
    return results


def ddp_networks(values: np.ndarray, observed: np.ndarray, t_num: np.ndarray, t_cat: np.ndarray, *,
                 col_slices: list[tuple[int, int]], n_num: int, cat_sizes: list[int], config: AEConfig,
                 num_weights: np.ndarray | None = None, progress: bool = False, backend: str = "gloo") -> list[TrainResult]:
    """``train_networks`` as one rank of torch DDP: run by every process a launcher such as
    ``torchrun`` or Spark's ``TorchDistributor`` starts (the group from its environment). Every
    rank returns the same networks; rank 0 alone shows progress (to its log)."""
    import torch.distributed as dist

    dist.init_process_group(backend)
    try:
        return train_networks(values, observed, t_num, t_cat, col_slices=col_slices, n_num=n_num, cat_sizes=cat_sizes,
                              config=config, num_weights=num_weights, progress=progress and dist.get_rank() == 0,
                              distributed=True)
    finally:
        dist.destroy_process_group()


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


def _progress(total: int, enabled: bool, desc: str = "training", log=None):
    """Progress over optimiser steps (rate and ETA): a bar on a terminal, else a log line every
    30 s through ``log`` (``lakefill.progress``); None when not ``enabled``."""
    return progress_over(total, enabled=enabled, log=log, desc=desc, unit="step")


# -- training from a typed Arrow table: the codec and the model, ready to save ------------------------

@dataclass
class FittedModel:
    model: Ensemble
    codec: TableCodec
    result: TrainResult
    seconds: float
    trainer: dict = field(default_factory=lambda: {"trainer": "local"})  # what trained the networks

    @property
    def metrics(self) -> dict:
        r = self.result
        return {"epochs_run": r.epochs_run, "best_epoch": r.best_epoch, "val_loss": r.val_loss,
                "train_seconds": round(self.seconds, 3), "rows": int(self.rows), "networks": r.members,
                "trainer": self.trainer, **r.reports}


def fit_model(table: pa.Table, schema: TableSchema, *, config: AEConfig = AEConfig(), progress: bool = False,
              log=None, networks=None) -> FittedModel:
    """Fit the codec and train the model on ``table`` (typed, nulls = missing): one network per
    size of ``config`` (see ``AEConfig.extra_sizes``), used as their ensemble. ``progress``: a
    bar on a terminal, else a line every 30 s through ``log`` (stderr when None)."""
    t0 = time.perf_counter()
    codec = TableCodec(schema=schema).fit(table)
    enc = codec.encode(table)
    if not enc.observed.any():
        raise ValueError("the training table has no observed cell in any imputed column")
    slices = [(s.start, s.stop) for s in codec.input_slices()]
    result = train_ensemble(enc.values, enc.observed, enc.targets_num, enc.targets_cat, col_slices=slices,
                            n_num=len(codec.num_columns_), cat_sizes=codec.cat_sizes, config=config,
                            num_weights=codec.error_weights(), progress=progress, log=log, networks=networks)
    fitted = FittedModel(result.model, codec, result, time.perf_counter() - t0,
                         dict(getattr(networks, "info", None) or {"trainer": "local"}))
    fitted.rows = table.num_rows
    return fitted

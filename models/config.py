"""The autoencoder's training config (no torch import: the command line reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["AEConfig", "TRAIN_ROWS"]

# The training sample's default size (lakefill.transforms.sample): a model is fitted on at most this
# many rows drawn uniformly from the whole input. Measured (docs/benchmarks.md, protocol A with
# --train-rows), a model fitted on a 50,000-row sample fills a table about as well as one fitted
# on all of it; 200,000 leaves a margin and keeps a large table's first fit to minutes.
TRAIN_ROWS = 200_000


@dataclass(frozen=True)
class AEConfig:
    hidden: int = 256
    depth: int = 3
    code: int = 64
    epochs: int = 300
    min_steps: int = 6000  # small tables train for more epochs, up to this many steps
    # wall-clock seconds for the whole training (0: no limit): each network's schedule is
    # planned to fit its share (from the measured step time), training stops at the limit, and
    # members not reached are skipped. A limit that binds makes the model depend on the
    # machine's speed; without one, the same data and seed give the same model.
    time_budget: float = 0.0
    # "onecycle": one cycle over the planned epochs, early stopping only in its second half;
    # "plateau": a constant rate until the held-out loss stalls for plateau_patience epochs, then
    # a decay of decay_share of the epochs run so far (lakefill.models.training._PlateauSchedule)
    schedule: str = "plateau"
    plateau_patience: int = 25
    decay_share: float = 0.25
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    max_hide: float = 0.5  # each training row hides a U(0, max_hide) share of its observed cells
    block_hide: float = 0.0  # share of rows that hide one contiguous block of columns instead
    recon_weight: float = 0.0  # weight of the loss on the given (not hidden) observed cells
    val_fraction: float = 0.1
    # the one-cycle schedule's early stopping: epochs without improvement it waits for, counted
    # only after patience_after of the schedule
    patience: int = 25
    # (early stopping counts epochs without improvement only after this share of the schedule:
    # the one-cycle rate is still near its peak before that, and stopping there keeps an
    # under-annealed model; the best epoch so far is kept either way)
    patience_after: float = 0.5
    # numeric loss per column on its min-max scale ("range", what a user reads an error on) or
    # on the robust z scale of the inputs ("robust": a heavy-tailed column's outliers dominate)
    loss_scale: str = "range"
    # further networks, (hidden, depth, code), trained beside the one above (same seed, same
    # held-out rows); the model is their ensemble: the mean of their numeric predictions and of
    # their category probabilities. A wide and a narrow network err differently (the narrow one
    # often fills a small table better), so the mean beats either. () trains the one network.
    extra_sizes: tuple[tuple[int, int, int], ...] = ((128, 2, 16),)
    # the registered members (lakefill.models.members: the Gaussian, the boosted trees, the donors,
    # and any member a user registers) left out of training; every other one is fitted and kept
    # where the held-out cells give it a weight
    without: tuple[str, ...] = ()
    # opt-in: a network's numeric inputs (robust z) beyond +-squash grow only logarithmically
    # from there on, so a heavy-tailed column's outliers (spam's z reach 700) do not swamp the
    # first layer and the linear path; outputs and loss stay on the z scale. 0 (the default)
    # feeds the z values as they are. Measured at 3 (README): RMSE down on breast and spam, up on
    # wine_red, level on letter; not enough either way to make it the default.
    squash: float = 0.0
    random_state: int = 0

    def __post_init__(self):
        for name in ("hidden", "depth", "code", "epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"AEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_hide < 1:
            raise ValueError(f"AEConfig.max_hide must be in (0, 1), got {self.max_hide}")
        if not 0 <= self.time_budget < float("inf"):
            raise ValueError(f"AEConfig.time_budget must be a number of seconds >= 0 (0: none), got {self.time_budget}")
        if self.plateau_patience < 1 or not 0 < self.decay_share <= 1:
            raise ValueError(f"AEConfig.plateau_patience must be >= 1 and decay_share in (0, 1], got "
                             f"{self.plateau_patience}, {self.decay_share}")
        if not 0 <= self.block_hide <= 1:
            raise ValueError(f"AEConfig.block_hide must be in [0, 1], got {self.block_hide}")
        if not 0 <= self.patience_after < 1:
            raise ValueError(f"AEConfig.patience_after must be in [0, 1), got {self.patience_after}")
        if not self.squash >= 0:
            raise ValueError(f"AEConfig.squash must be >= 0 (0: off), got {self.squash}")
        if self.schedule not in ("onecycle", "plateau"):
            raise ValueError(f"AEConfig.schedule must be 'onecycle' or 'plateau', got {self.schedule!r}")
        if self.loss_scale not in ("range", "robust"):
            raise ValueError(f"AEConfig.loss_scale must be 'range' or 'robust', got {self.loss_scale!r}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"AEConfig.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        try:  # a manifest's JSON gives lists back
            sizes = tuple(tuple(int(v) for v in size) for size in self.extra_sizes)
        except (TypeError, ValueError) as err:
            raise ValueError(f"AEConfig.extra_sizes must be (hidden, depth, code) triples, got {self.extra_sizes!r}") from err
        if any(len(size) != 3 or min(size) < 1 for size in sizes):
            raise ValueError(f"AEConfig.extra_sizes must be (hidden, depth, code) triples of integers >= 1, "
                             f"got {self.extra_sizes!r}")
        object.__setattr__(self, "extra_sizes", sizes)
        if isinstance(self.without, str) or not all(isinstance(n, str) for n in self.without):
            raise ValueError(f"AEConfig.without must be a list of member names, got {self.without!r}")
        from lakefill.models.members import member_names

        unknown = sorted(set(self.without) - set(member_names()))
        if unknown:
            raise ValueError(f"AEConfig.without names unknown member(s) {unknown}; the members are {member_names()}")
        object.__setattr__(self, "without", tuple(self.without))

    def uses(self, member: str) -> bool:
        """Whether training fits the registered member of that name."""
        return member not in self.without

    def to_dict(self) -> dict:
        """The config as the manifest keeps it (JSON types)."""
        return {**self.__dict__, "extra_sizes": [list(s) for s in self.extra_sizes], "without": list(self.without)}

    @classmethod
    def from_dict(cls, data: dict) -> "AEConfig":
        """A config from a manifest or a JSON setting (``--ae-config``): one flag per member
        (``trees: false``, as a model written before the member registry has them) is read as
        ``without``."""
        from lakefill.models.members import member_names

        data = dict(data)
        without = list(data.pop("without", []))
        for name in member_names():
            if name in data and not data.pop(name) and name not in without:
                without.append(name)
        return cls(**data, without=tuple(without))

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.hidden, self.depth, self.code)

    @property
    def sizes(self) -> list[tuple[int, int, int]]:
        """The networks' sizes, this config's first, each size once."""
        return [c.size for c in self.member_configs()]

    def member_configs(self) -> list["AEConfig"]:
        """The config of each network to train, one per distinct size, this one's first."""
        out = [replace(self, extra_sizes=())]
        for hidden, depth, code in self.extra_sizes:
            if (hidden, depth, code) not in [c.size for c in out]:
                out.append(replace(self, hidden=hidden, depth=depth, code=code, extra_sizes=()))
        return out

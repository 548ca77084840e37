"""The one routine every blend weight comes from (the trees', the donors' per band)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["grid_weight"]


def grid_weight(loss: Callable[[float], float], *, steps: int = 20, tol: float = 1e-9) -> tuple[float, float, float]:
    """The weight among 0, 1/steps, ..., 1 with the lowest ``loss(w)`` (ties: the smallest):
    (weight, loss at 0, lowest loss)."""
    weight, before = 0.0, loss(0.0)
    best = before
    for step in range(1, steps + 1):
        value = loss(step / steps)
        if value < best - tol:
            weight, best = step / steps, value
    return weight, before, best

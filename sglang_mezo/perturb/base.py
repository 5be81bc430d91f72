"""The perturbation interface: how a step visits θ + scale·z(seed) and how its update lands.

    losses_at(points, loss) → the loss at every (seed, scale) point, in order, θ left as it was
    update(seed, coef, decay) → θ ← θ − (coef·z(seed) + decay·θ)
    flush()                   → finish any deferred restore (InPlace fuses it with the update)

Every strategy is deterministic, so a trajectory replays bit-identically (built with replay=True).
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

Points = Sequence[tuple[int, float]]


class ObjectiveError(ArithmeticError):
    """The objective returned NaN/inf; the weights were restored before this was raised."""


def finite(v) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ObjectiveError(f"objective returned {v}: step aborted, weights restored")
    return v


class Perturbation(Protocol):
    name: str

    def losses_at(self, points: Points, loss: Callable[[], float]) -> list[float]: ...

    def update(self, seed: int, coef: float, decay: float) -> None: ...

    def flush(self) -> None: ...


class OneSeedAtATime:
    """losses_at for strategies that visit one seed's points at a time (`losses(seed, scales, loss)`):
    consecutive points of one seed go together, so InPlace can fuse its restore with the update."""

    def losses(self, seed: int, scales: Sequence[float], loss: Callable[[], float]) -> list[float]:
        raise NotImplementedError

    def losses_at(self, points: Points, loss: Callable[[], float]) -> list[float]:
        out: list[float] = []
        i = 0
        while i < len(points):
            j = i
            while j < len(points) and points[j][0] == points[i][0] and (j == i or points[j][1] != 0):
                j += 1
            out.extend(self.losses(points[i][0], [sc for _, sc in points[i:j]], loss))
            i = j
        return out


class NoWeights:
    """A perturbation with no weights: replay_step on it only checks a record's arithmetic (a served
    update is refused before anything changes if its gradients do not follow from its losses)."""
    name = "none"

    def losses_at(self, points: Points, loss: Callable[[], float]) -> list[float]:
        return [loss() for _ in points]

    def update(self, seed: int, coef: float, decay: float) -> None:
        pass

    def flush(self) -> None:
        pass

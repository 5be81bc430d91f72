"""MeZO (Malladi et al., 2023), Algorithm 1: zeroth-order SGD with two forward passes and no backprop.

    for each step:
        sample seed s                                  (z never stored: regenerated from s)
        L+ = L(θ + ε·z(s); B)
        L− = L(θ − ε·z(s); B)                          (θ itself comes back unchanged)
        g  = (L+ − L−) / 2ε                            (projected gradient, a scalar)
        θ ← θ − η·(g·z(s) + λ·θ)                       (λ: weight decay, not on biases/norms)

Which points are visited and how g follows from their losses is the estimator's (estimators.py:
two-point, one-point, FZOO; n seeds per step = n-SPSA). How θ ± εz is visited — layer by layer,
in place, or as low-rank adapters all in one batch — is the perturbation's (perturb/): the step hands
it every point at once. Replaying a trajectory is this same function fed the recorded losses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .estimators import ESTIMATORS
from .perturb import ObjectiveError, Perturbation  # noqa: F401  (ObjectiveError: part of the step's contract)
from .settings import Settings


@dataclass
class StepRecord:
    """One line of trajectory.jsonl: everything needed to redo the step's arithmetic."""
    step: int
    seeds: list[int]
    grads: list[float]
    lr: float
    eps: float
    weight_decay: float
    estimator: str
    loss_plus: list[float]
    loss_minus: list[float]           # one_point, fzoo: the unperturbed loss L0
    extra: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return sum(self.loss_plus + self.loss_minus) / (len(self.loss_plus) + len(self.loss_minus))

    def config(self) -> Settings:
        return Settings(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay,
                        estimator=self.estimator, n_queries=len(self.seeds))


def points(seeds: list[int], cfg: Settings) -> list[tuple[int, float]]:
    """Where the step evaluates the loss, as (seed, scale): θ + scale·z(seed)."""
    return ESTIMATORS[cfg.estimator].points(seeds, cfg.eps)


def estimate(losses: list[float], cfg: Settings) -> tuple[list[float], list[float], list[float]]:
    """(projected gradients, L+ per seed, L− or L0 per seed) from the losses at `points`."""
    return ESTIMATORS[cfg.estimator].estimate(losses, cfg.eps)


def mezo_step(weights: Perturbation, loss: Callable[[], float], seeds: list[int], cfg: Settings,
              step: int = 0) -> StepRecord:
    """One MeZO step (cfg: lr, eps, weight_decay, estimator, n_queries); `loss()` runs a forward pass on
    whatever weights the engine holds right now."""
    if len(seeds) != cfg.n_queries:
        raise ValueError(f"{cfg.n_queries} queries need {cfg.n_queries} seeds, got {len(seeds)}")
    grads, lp, lm = estimate(weights.losses_at(points(seeds, cfg), loss), cfg)
    for i, (s, g) in enumerate(zip(seeds, grads)):                        # θ ← θ − η(ḡ·z + λθ)
        weights.update(s, cfg.lr * g / cfg.n_queries, cfg.lr * cfg.weight_decay if i == 0 else 0.0)
    weights.flush()
    return StepRecord(step, list(seeds), grads, cfg.lr, cfg.eps, cfg.weight_decay, cfg.estimator, lp, lm)


def replay_step(weights: Perturbation, record: StepRecord) -> None:
    """Redo a recorded step's weight arithmetic exactly, with the recorded losses instead of forwards.

    `weights` must be built with replay=True (layer-wise perturbation then leaves nothing to redo)."""
    losses = iter(ESTIMATORS[record.estimator].losses_of(record.loss_plus, record.loss_minus))
    redone = mezo_step(weights, lambda: next(losses), record.seeds, record.config(), record.step)
    if redone.grads != record.grads:
        raise ValueError(f"step {record.step}: recorded gradients {record.grads} do not follow from its "
                         f"losses ({redone.grads}); the trajectory was edited or corrupted")

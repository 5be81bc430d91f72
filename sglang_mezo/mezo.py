"""MeZO (Malladi et al., 2023), Algorithm 1: zeroth-order SGD with two forward passes and no backprop.

    for each step:
        sample seed s                                  (z never stored: regenerated from s)
        L+ = L(θ + ε·z(s); B)
        L− = L(θ − ε·z(s); B)                          (θ itself comes back unchanged)
        g  = (L+ − L−) / 2ε                            (projected gradient, a scalar)
        θ ← θ − η·(g·z(s) + λ·θ)                       (λ: weight decay, not on biases/norms)

Also: one-point SPSA (g = (L+ − L0)/ε), n-SPSA (n seeds per step, gradients averaged; memory is
still the seeds) and FZOO (one-sided, n directions, g_i = (L_i − L0)/σ with σ the standard deviation of
the n perturbed losses: a step normalised by the batch's loss spread). How θ ± εz is visited — layer by
layer, MeZO's in-place +ε/−2ε/+ε, or as low-rank LoRA adapters all in one batch — is the `weights`
object's business (perturb.py, lowrank.py): the step hands it every point at once. Replaying a
trajectory is this same function fed the recorded losses instead of forward passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .perturb import ObjectiveError, losses_at  # noqa: F401  (ObjectiveError: part of the step's contract)
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
    if cfg.estimator == "two_point":
        return [(s, e) for s in seeds for e in (cfg.eps, -cfg.eps)]   # L(θ+εz), L(θ−εz) per seed
    return [(seeds[0], 0.0)] + [(s, cfg.eps) for s in seeds]          # L(θ), then L(θ+εz) per seed


def estimate(losses: list[float], cfg: Settings) -> tuple[list[float], list[float], list[float]]:
    """(projected gradients, L+ per seed, L− or L0 per seed) from the losses at `points`."""
    if cfg.estimator == "two_point":
        lp, lm = losses[0::2], losses[1::2]
        return [(a - b) / (2 * cfg.eps) for a, b in zip(lp, lm)], lp, lm
    l0, lp = losses[0], losses[1:]
    if cfg.estimator == "one_point":
        return [(a - l0) / cfg.eps for a in lp], lp, [l0] * len(lp)
    mean = sum(lp) / len(lp)                                           # fzoo: σ of the perturbed losses
    sigma = math.sqrt(sum((a - mean) ** 2 for a in lp) / len(lp))
    return [(a - l0) / sigma if sigma > 0 else 0.0 for a in lp], lp, [l0] * len(lp)


def mezo_step(weights, loss: Callable[[], float], seeds: list[int], cfg: Settings, step: int = 0
              ) -> StepRecord:
    """One MeZO step (cfg: lr, eps, weight_decay, estimator, n_queries); `loss()` runs a forward pass on
    whatever weights the engine holds right now."""
    if len(seeds) != cfg.n_queries:
        raise ValueError(f"{cfg.n_queries} queries need {cfg.n_queries} seeds, got {len(seeds)}")
    grads, lp, lm = estimate(losses_at(weights, points(seeds, cfg), loss), cfg)
    for i, (s, g) in enumerate(zip(seeds, grads)):                        # θ ← θ − η(ḡ·z + λθ)
        weights.update(s, cfg.lr * g / cfg.n_queries, cfg.lr * cfg.weight_decay if i == 0 else 0.0)
    weights.flush()
    return StepRecord(step, list(seeds), grads, cfg.lr, cfg.eps, cfg.weight_decay, cfg.estimator, lp, lm)


def replay_step(weights, record: StepRecord) -> None:
    """Redo a recorded step's weight arithmetic exactly, with the recorded losses instead of forwards.

    `weights` must be built with replay=True (layer-wise perturbation then leaves nothing to redo)."""
    if record.estimator == "two_point":
        seq = [v for pair in zip(record.loss_plus, record.loss_minus) for v in pair]
    else:  # one_point, fzoo: L0 first
        seq = [record.loss_minus[0]] + list(record.loss_plus)
    losses = iter(seq)
    redone = mezo_step(weights, lambda: next(losses), record.seeds, record.config(), record.step)
    if redone.grads != record.grads:
        raise ValueError(f"step {record.step}: recorded gradients {record.grads} do not follow from its "
                         f"losses ({redone.grads}); the trajectory was edited or corrupted")

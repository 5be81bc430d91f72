"""MeZO (Malladi et al., 2023), Algorithm 1: zeroth-order SGD with two forward passes and no backprop.

    for each step:
        sample seed s                                  (z never stored: regenerated from s)
        θ ← θ + ε·z(s);   L+ = L(θ; B)
        θ ← θ − 2ε·z(s);  L− = L(θ; B)
        θ ← θ + ε·z(s)                                 (restore)
        g = (L+ − L−) / 2ε                             (projected gradient, a scalar)
        θ ← θ − η·(g·z(s) + λ·θ)                       (λ: weight decay, not on biases/norms)

Also: one-point SPSA (g = (L+ − L0)/ε) and n-SPSA (n seeds per step, gradients averaged; memory is
still the seeds). The model is touched only through `noise.sweep`, so this works on any backend, and
replaying a trajectory is this same function fed the recorded losses instead of forward passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .noise import Add, Update, sweep


class ObjectiveError(ArithmeticError):
    """The objective returned NaN/inf; the weights were restored before this was raised."""


@dataclass
class MeZOConfig:
    lr: float = 1e-6
    eps: float = 1e-3
    weight_decay: float = 0.0
    estimator: str = "two_point"      # "two_point" (Algorithm 1) or "one_point"
    n_queries: int = 1                # n-SPSA: seeds per step, projected gradients averaged

    def __post_init__(self):
        for k in ("lr", "eps", "weight_decay"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{k} must be a finite number, got {v!r}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.lr < 0 or self.weight_decay < 0:
            raise ValueError("lr and weight_decay must be >= 0")
        if self.estimator not in ("two_point", "one_point"):
            raise ValueError(f"estimator must be 'two_point' or 'one_point', got {self.estimator!r}")
        if not isinstance(self.n_queries, int) or self.n_queries < 1:
            raise ValueError(f"n_queries must be an integer >= 1, got {self.n_queries!r}")


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
    loss_minus: list[float]           # one_point: the unperturbed loss L0
    extra: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return sum(self.loss_plus + self.loss_minus) / (len(self.loss_plus) + len(self.loss_minus))


def mezo_step(pieces, loss: Callable[[], float], seeds: list[int], cfg: MeZOConfig, step: int = 0,
              on_change: Callable[[], None] = lambda: None) -> StepRecord:
    """One MeZO step over `pieces` (engine tensor views); `loss()` runs a forward on the current weights."""
    if len(seeds) != cfg.n_queries:
        raise ValueError(f"{cfg.n_queries} queries need {cfg.n_queries} seeds, got {len(seeds)}")
    eps, n = cfg.eps, cfg.n_queries

    def perturb(seed, *ops):
        sweep(pieces, seed, ops)
        on_change()

    grads, lp, lm = [], [], []
    base = _checked(loss(), pieces, None, 0.0, perturb) if cfg.estimator == "one_point" else None
    for i, s in enumerate(seeds):
        last = i == n - 1
        perturb(s, Add(eps))                                          # θ + εz
        l_plus = _checked(loss(), pieces, s, eps, perturb)
        if cfg.estimator == "two_point":
            perturb(s, Add(-2 * eps))                                 # θ − εz
            l_minus = _checked(loss(), pieces, s, -eps, perturb)
            g = (l_plus - l_minus) / (2 * eps)
            back = eps                                                # restore: + εz
        else:
            l_minus = base
            g = (l_plus - base) / eps
            back = -eps                                               # restore: − εz
        grads.append(g)
        lp.append(l_plus)
        lm.append(l_minus)
        if n == 1 and last:  # fuse restore and update: one noise generation instead of two
            perturb(s, Add(back), Update(cfg.lr * g, cfg.lr * cfg.weight_decay))
        else:
            perturb(s, Add(back))
    if n > 1:
        for i, (s, g) in enumerate(zip(seeds, grads)):                # θ ← θ − η(ḡ·z + λθ)
            perturb(s, Update(cfg.lr * g / n, cfg.lr * cfg.weight_decay if i == 0 else 0.0))
    return StepRecord(step, list(seeds), grads, cfg.lr, eps, cfg.weight_decay, cfg.estimator, lp, lm)


def _checked(value: float, pieces, seed, offset, perturb) -> float:
    value = float(value)
    if not math.isfinite(value):
        if seed is not None:
            perturb(seed, Add(-offset))  # undo the perturbation before giving up
        raise ObjectiveError(f"objective returned {value}: step aborted, weights restored")
    return value


def replay_step(pieces, record: StepRecord, on_change: Callable[[], None] = lambda: None) -> None:
    """Redo a recorded step's weight arithmetic exactly, with the recorded losses instead of forwards."""
    cfg = MeZOConfig(lr=record.lr, eps=record.eps, weight_decay=record.weight_decay,
                     estimator=record.estimator, n_queries=len(record.seeds))
    losses = []
    if cfg.estimator == "one_point":
        losses.append(record.loss_minus[0])
        for lp in record.loss_plus:
            losses.append(lp)
    else:
        for lp, lm in zip(record.loss_plus, record.loss_minus):
            losses += [lp, lm]
    it = iter(losses)
    redone = mezo_step(pieces, lambda: next(it), record.seeds, cfg, record.step, on_change)
    if redone.grads != record.grads:
        raise ValueError(f"step {record.step}: recorded gradients {record.grads} do not follow from its "
                         f"losses ({redone.grads}); the trajectory was edited or corrupted")

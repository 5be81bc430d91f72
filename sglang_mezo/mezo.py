"""MeZO (Malladi et al., 2023), Algorithm 1: zeroth-order SGD with two forward passes and no backprop.

    for each step:
        sample seed s                                  (z never stored: regenerated from s)
        L+ = L(θ + ε·z(s); B)
        L− = L(θ − ε·z(s); B)                          (θ itself comes back unchanged)
        g  = (L+ − L−) / 2ε                            (projected gradient, a scalar)
        θ ← θ − η·(g·z(s) + λ·θ)                       (λ: weight decay, not on biases/norms)

Also: one-point SPSA (g = (L+ − L0)/ε) and n-SPSA (n seeds per step, gradients averaged; memory is
still the seeds). How θ ± εz is visited — exactly, layer by layer, or MeZO's in-place +ε/−2ε/+ε — is
the `weights` object's business (perturb.py). Replaying a trajectory is this same function fed the
recorded losses instead of forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .perturb import ObjectiveError  # noqa: F401  (re-exported: part of the step's contract)
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
    loss_minus: list[float]           # one_point: the unperturbed loss L0
    extra: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return sum(self.loss_plus + self.loss_minus) / (len(self.loss_plus) + len(self.loss_minus))

    def config(self) -> Settings:
        return Settings(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay,
                        estimator=self.estimator, n_queries=len(self.seeds))


def mezo_step(weights, loss: Callable[[], float], seeds: list[int], cfg: Settings, step: int = 0
              ) -> StepRecord:
    """One MeZO step (cfg: lr, eps, weight_decay, estimator, n_queries); `loss()` runs a forward pass on
    whatever weights the engine holds right now."""
    if len(seeds) != cfg.n_queries:
        raise ValueError(f"{cfg.n_queries} queries need {cfg.n_queries} seeds, got {len(seeds)}")
    eps, n = cfg.eps, cfg.n_queries
    base = weights.losses(seeds[0], [0.0], loss)[0] if cfg.estimator == "one_point" else None
    grads, lp, lm = [], [], []
    for s in seeds:
        if cfg.estimator == "two_point":
            l_plus, l_minus = weights.losses(s, [eps, -eps], loss)       # L(θ+εz), L(θ−εz)
            g = (l_plus - l_minus) / (2 * eps)
        else:
            (l_plus,), l_minus = weights.losses(s, [eps], loss), base    # L(θ+εz), L(θ)
            g = (l_plus - base) / eps
        grads.append(g)
        lp.append(l_plus)
        lm.append(l_minus)
    for i, (s, g) in enumerate(zip(seeds, grads)):                        # θ ← θ − η(ḡ·z + λθ)
        weights.update(s, cfg.lr * g / n, cfg.lr * cfg.weight_decay if i == 0 else 0.0)
    weights.flush()
    return StepRecord(step, list(seeds), grads, cfg.lr, eps, cfg.weight_decay, cfg.estimator, lp, lm)


def replay_step(weights, record: StepRecord) -> None:
    """Redo a recorded step's weight arithmetic exactly, with the recorded losses instead of forwards.

    `weights` must be built with replay=True (layer-wise perturbation then leaves nothing to redo)."""
    if record.estimator == "two_point":
        seq = [v for pair in zip(record.loss_plus, record.loss_minus) for v in pair]
    else:
        seq = [record.loss_minus[0]] + list(record.loss_plus)
    losses = iter(seq)
    redone = mezo_step(weights, lambda: next(losses), record.seeds, record.config(), record.step)
    if redone.grads != record.grads:
        raise ValueError(f"step {record.step}: recorded gradients {record.grads} do not follow from its "
                         f"losses ({redone.grads}); the trajectory was edited or corrupted")

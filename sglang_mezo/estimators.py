"""Estimators of the projected gradient: where a step evaluates the loss, and what it makes of the losses.

One class each, one registry (`ESTIMATORS`); adding an estimator is one class here and its name in
settings.py's choices. Every estimator is deterministic, so `replay` recomputes the same gradients from
the recorded losses (`losses_of` puts a record's losses back in `points` order).
"""
from __future__ import annotations

import math


class TwoPoint:
    """MeZO: L(θ+εz), L(θ−εz) per seed; g = (L+ − L−)/2ε."""
    name = "two_point"

    def points(self, seeds: list[int], eps: float) -> list[tuple[int, float]]:
        return [(s, e) for s in seeds for e in (eps, -eps)]

    def estimate(self, losses: list[float], eps: float):
        lp, lm = losses[0::2], losses[1::2]
        return [(a - b) / (2 * eps) for a, b in zip(lp, lm)], lp, lm

    def losses_of(self, loss_plus: list[float], loss_minus: list[float]) -> list[float]:
        return [v for pair in zip(loss_plus, loss_minus) for v in pair]


class OnePoint:
    """One-sided SPSA: L(θ) once, then L(θ+εz) per seed; g = (L+ − L0)/ε."""
    name = "one_point"

    def points(self, seeds: list[int], eps: float) -> list[tuple[int, float]]:
        return [(seeds[0], 0.0)] + [(s, eps) for s in seeds]

    def estimate(self, losses: list[float], eps: float):
        l0, lp = losses[0], losses[1:]
        return [(a - l0) / eps for a in lp], lp, [l0] * len(lp)

    def losses_of(self, loss_plus: list[float], loss_minus: list[float]) -> list[float]:
        return [loss_minus[0]] + list(loss_plus)       # loss_minus holds L0 for every seed


class FZOO(OnePoint):
    """FZOO: one-sided, n directions, g_i = (L_i − L0)/σ, σ the standard deviation of the n perturbed
    losses (a step normalised by the batch's loss spread)."""
    name = "fzoo"

    def estimate(self, losses: list[float], eps: float):
        l0, lp = losses[0], losses[1:]
        mean = sum(lp) / len(lp)
        sigma = math.sqrt(sum((a - mean) ** 2 for a in lp) / len(lp))
        return [(a - l0) / sigma if sigma > 0 else 0.0 for a in lp], lp, [l0] * len(lp)


ESTIMATORS = {e.name: e for e in (TwoPoint(), OnePoint(), FZOO())}

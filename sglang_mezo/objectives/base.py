"""The measurement interface: what turns a batch into one scalar loss, per model kind (a family).

A family (label_words.py, class_logits.py, generation.py) knows, for its kind of model and task:
    OBJECTIVES            its built-in objectives (plus `module:function`)
    batch(backend, exs)   the examples encoded for the engine (bad data raises, naming the example)
    measure(backend, batch, step) → Measure: loss() at whatever weights the engine holds now
    evaluate(backend, exs) → metrics of a split; `dev_metric` picks the best step
    longest(batch)        tokens the largest request needs (a server refuses what its KV cannot hold)
The run loop (run.py), `eval`, the server (serve/ops.py) and the replicas all go through it; `family_for`
(objectives/__init__.py) is the one place that picks a family.
"""
from __future__ import annotations

import torch

from ..user_code import load_callable


def ce(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Cross-entropy of per-class scores (label-word log-likelihoods, or class logits)."""
    return torch.nn.functional.cross_entropy(scores, labels).item()


def neg_accuracy(scores: torch.Tensor, labels: torch.Tensor, dtype=torch.float64) -> float:
    """−accuracy of the argmax (MeZO's optimize_acc); moves in steps of 1/B. `dtype` of the mean: the
    encoder family keeps the seed's `.float()`, so its recorded losses stay what they were."""
    return -(scores.argmax(dim=-1) == labels).to(dtype).mean().item()


def get_objective(name: str, builtins: dict, unknown: str):
    """A built-in objective, or `module:function` (a user callable over the family's outputs)."""
    if name in builtins:
        return builtins[name]
    if ":" in name:
        return load_callable(name, "objective")
    raise ValueError(unknown)


class Measure:
    """loss() for one step on one batch. `log()`: what the step's metrics line adds (the generation family
    logs its reward and LM loss), `summary()`: what a served step's reply adds; `extra`: what the step's
    record keeps (the sampling seed)."""

    def __init__(self, fn):
        self.fn, self.extra = fn, {}

    def __call__(self) -> float:
        return self.fn()

    def log(self, step_s: float) -> dict:
        return {}

    def summary(self) -> dict:
        """What a served step's reply adds (means over the step's calls)."""
        return {}

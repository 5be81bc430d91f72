"""Objectives over an encoder classifier's class logits `[B, num_labels]` (backends/encoder.py).

The input is the task's prompt text (MeZO's template filled in) as one sequence; the label is the class
id in the task's label order (label words are not read). The objectives are the seed's code:
  ce        cross-entropy of the logits
  accuracy  preds = argmax(logits); loss = −(preds == labels).float().mean()   (MeZO's optimize_acc)
  module:function   any callable taking ClassOutputs, returning a float
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .tasks import Example


@dataclass
class ClassBatch:
    examples: Sequence
    labels: torch.Tensor            # [B] class ids
    ids: list[list[int]]            # token ids per example


@dataclass
class ClassOutputs:
    """What an objective sees: the batch and the engine's raw class logits."""
    examples: Sequence
    labels: torch.Tensor
    logits: torch.Tensor            # [B, num_labels], float32


def encode(examples: Sequence[Example], backend) -> ClassBatch:
    return ClassBatch(examples, torch.tensor([ex.label for ex in examples]),
                      backend.encode([ex.prompt for ex in examples]))


def run_batch(backend, batch: ClassBatch) -> ClassOutputs:
    return ClassOutputs(batch.examples, batch.labels, backend.classify(batch.ids))


def ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits, labels).item()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    preds = torch.argmax(logits, dim=-1)
    return -(preds == labels).float().mean().item()


Objective = Callable[[ClassOutputs], float]
OBJECTIVES: dict[str, Objective] = {
    "ce": lambda o: ce(o.logits, o.labels),
    "accuracy": lambda o: accuracy(o.logits, o.labels),
}


def get_objective(name: str) -> Objective:
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if ":" in name:
        from .objectives import get_objective as load  # module:function loading lives there

        return load(name)
    raise ValueError(f"objective {name!r} needs token log-probs or generated text, which an encoder "
                     f"classifier does not produce: choose one of {sorted(OBJECTIVES)} or module:function "
                     "(over class logits)")


def check_labels(examples: Sequence[Example], n_classes: int, where: str) -> None:
    bad = [ex.label for ex in examples if not 0 <= ex.label < n_classes]
    if bad:
        raise ValueError(f"{where}: label ids {sorted(set(bad))[:5]} exceed the head's {n_classes} classes")


def evaluate(backend, examples: Sequence[Example], batch_size: int = 64) -> dict:
    correct, loss = 0, 0.0
    for i in range(0, len(examples), batch_size):
        b = encode(examples[i: i + batch_size], backend)
        logits = backend.classify(b.ids)
        correct += int((logits.argmax(-1) == b.labels).sum())
        loss += ce(logits, b.labels) * len(b.labels)
    return {"accuracy": correct / len(examples), "ce": loss / len(examples), "n": len(examples)}

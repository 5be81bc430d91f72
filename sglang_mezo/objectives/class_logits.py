"""Encoder classifiers (backends/encoder.py): objectives over class logits `[B, num_labels]`.

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

from ..tasks import Example, is_generation
from .base import Measure, ce, get_objective as lookup, neg_accuracy

WHAT = "an encoder classifier (class logits)"


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


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return neg_accuracy(logits, labels, torch.float32)   # the seed's `.float().mean()`


Objective = Callable[[ClassOutputs], float]
OBJECTIVES: dict[str, Objective] = {
    "ce": lambda o: ce(o.logits, o.labels),
    "accuracy": lambda o: accuracy(o.logits, o.labels),
}


def get_objective(name: str) -> Objective:
    return lookup(name, OBJECTIVES, f"objective {name!r} needs token log-probs or generated text, which an "
                  f"encoder classifier does not produce: choose one of {sorted(OBJECTIVES)} or module:function "
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


def n_classes(spec) -> int:
    return len(spec.label_words) if spec.label_words else 0


class ClassLogits:
    """The family of encoder classifiers on classification tasks (labels = the task's label order)."""
    name = "class_logits"
    OBJECTIVES = OBJECTIVES
    dev_metric = "accuracy"

    def __init__(self, cfg, spec=None, resolve=str):
        if cfg.chat_template:
            raise ValueError(f"'chat_template' (--chat-template) wraps prompts for a chat LM; {WHAT} has no "
                             "chat turns")
        if cfg.max_new_tokens is not None:
            raise ValueError(f"'max_new_tokens' is for generation; {WHAT} cannot generate text")
        if spec is not None and (is_generation(spec) or not n_classes(spec)):
            raise ValueError(f"task {spec.name!r} is a generation task, not a classification task with "
                             f"label classes; {WHAT} needs one (label ids = the task's label order)")
        self.cfg, self.spec = cfg, spec
        self.objective_name = cfg.objective or "ce"
        self.objective = get_objective(resolve(self.objective_name))

    def check_head(self, num_labels: int) -> None:
        if self.spec is not None and n_classes(self.spec) > num_labels:
            raise ValueError(f"task {self.spec.name!r} has {n_classes(self.spec)} classes but the served "
                             f"classifier's head has {num_labels}")

    def batch(self, backend, examples: Sequence[Example]) -> ClassBatch:
        return encode(examples, backend)   # cut to the position limit

    @staticmethod
    def longest(batch: ClassBatch) -> int:
        return 0   # cut to the model's position limit when encoded

    def measure(self, backend, batch: ClassBatch, step: int) -> Measure:
        return Measure(lambda: self.objective(run_batch(backend, batch)))

    def prepare(self, backend, data: dict) -> None:
        for split, examples in data.items():
            check_labels(examples, backend.num_labels, f"task {self.spec.name!r} {split}")

    def evaluate(self, backend, examples: Sequence[Example], with_lm: bool = True) -> dict:
        return evaluate(backend, examples, self.cfg.eval_batch_size)

    lowrank = False

    def files_extra(self, backend) -> dict:
        return {"num_labels": backend.num_labels}

    def summary(self, r: dict) -> dict:
        return {"zero_shot_test_accuracy": r["zero_shot"]["accuracy"], "zero_shot_dev_accuracy": r["dev0"],
                "final_dev_accuracy": r["final_dev"]["accuracy"], "best_step": r["best_step"],
                "best_dev_accuracy": r["best_dev"], "test_accuracy": r["test"]["accuracy"],
                "steps": r["steps"], "model": r["model"], "out": r["out"]}

    panels = (("loss", "training objective (mean of L+, L−)"),)

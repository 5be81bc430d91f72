"""Decoders scored by label words (MeZO's classification tasks): each example's candidates' log-likelihoods.

With single-token label words, one request per example and the candidates' next-token log-probs;
otherwise one request per candidate and the mean log-prob of its tokens (MeZO large_models'
train_as_classification).
  ce        cross-entropy over candidates (the default)
  accuracy  −accuracy of the argmax candidate (MeZO medium_models' optimize_acc); moves in steps of 1/B
  lm        teacher-forced NLL of the correct answer's tokens only (MeZO's only_train_option)
  module:function   any callable taking EngineOutputs and returning a float
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..backends.base import Backend, ScoreRequest
from ..tasks import Example, TaskError
from .base import Measure, ce, get_objective as lookup, neg_accuracy


@dataclass
class EncodedBatch:
    requests: list[ScoreRequest]
    # per example: ("next", request index) or ("span", [request index per candidate])
    where: list[tuple]
    labels: torch.Tensor
    n_candidates: int
    examples: Sequence[Example] = ()   # what EngineOutputs.examples shows the objective


def encode(examples: Sequence[Example], tokenizer, single_token_labels: bool = True) -> EncodedBatch:
    reqs, where = [], []
    for ex in examples:
        prompt = tokenizer.encode(ex.prompt)
        cands = [tokenizer.encode(c, add_special_tokens=False) for c in ex.candidates]
        if single_token_labels:
            for text, ids in zip(ex.candidates, cands):
                if len(ids) != 1:
                    raise TaskError(f"label word {text!r} is {len(ids)} tokens for this tokenizer "
                                    f"({ids}); label words must be single tokens")
            where.append(("next", len(reqs)))
            reqs.append(ScoreRequest(prompt, next_ids=[c[0] for c in cands]))
        else:
            idx = []
            for ids in cands:
                if not ids:
                    raise TaskError(f"an empty candidate in example {ex.prompt[:60]!r}")
                idx.append(len(reqs))
                reqs.append(ScoreRequest(prompt + ids, target_len=len(ids)))
            where.append(("span", idx))
    n = max(len(ex.candidates) for ex in examples)
    return EncodedBatch(reqs, where, torch.tensor([ex.label for ex in examples]), n, list(examples))


@dataclass
class EngineOutputs:
    """What an objective sees: the batch and what the engine returned for it."""
    examples: Sequence[Example]
    labels: torch.Tensor            # [B] index of the correct candidate
    scores: torch.Tensor            # [B, C] candidate log-likelihoods (−inf: no such candidate)
    results: list                   # raw ScoreResult per request (next-token / span log-probs)
    batch: EncodedBatch


def check_context(backend: Backend, requests: Sequence[ScoreRequest]) -> None:
    """Every request fits the model's context (an engine would fail mid-batch with a tensor-size error
    instead of naming the example)."""
    limit = getattr(backend, "context_len", None)
    for r in requests if limit else ():
        if len(r.ids) > limit:
            raise TaskError(f"a prompt of {len(r.ids)} tokens is longer than the model's context of {limit} "
                            f"tokens: {backend.tokenizer.decode(r.ids[:12])!r}...")


def run_batch(backend: Backend, examples: Sequence[Example], batch: EncodedBatch) -> EngineOutputs:
    res = candidate_results(backend, batch)
    return EngineOutputs(examples, batch.labels, scores(res, batch), res, batch)


def candidate_results(backend: Backend, batch: EncodedBatch) -> list:
    check_context(backend, batch.requests)
    return backend.score(batch.requests)


def candidate_scores(backend: Backend, batch: EncodedBatch) -> torch.Tensor:
    """[B, C] log-likelihood of each candidate (−inf where an example has fewer candidates)."""
    return scores(candidate_results(backend, batch), batch)


def scores(res, batch: EncodedBatch) -> torch.Tensor:
    """[B, C] candidate log-likelihoods from the engine's ScoreResults (in-process or over HTTP)."""
    out = torch.full((len(batch.where), batch.n_candidates), float("-inf"), dtype=torch.float64)
    for b, (kind, idx) in enumerate(batch.where):
        if kind == "next":
            vals = res[idx].next_logprobs
        else:
            vals = [sum(res[i].target_logprobs) / len(res[i].target_logprobs) for i in idx]
        out[b, : len(vals)] = torch.tensor(vals, dtype=torch.float64)
    return out


def answer_nll(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of −(mean log-prob of the correct answer's tokens)."""
    return -scores.gather(1, labels[:, None]).mean().item()


Objective = Callable[[EngineOutputs], float]
OBJECTIVES: dict[str, Objective] = {
    "ce": lambda o: ce(o.scores, o.labels),
    "accuracy": lambda o: neg_accuracy(o.scores, o.labels),
    "lm": lambda o: answer_nll(o.scores, o.labels),
}


def get_objective(name: str) -> Objective:
    """A built-in objective, or `module:function` — a callable taking EngineOutputs, returning a float."""
    return lookup(name, OBJECTIVES, f"unknown objective {name!r}: choose one of {sorted(OBJECTIVES)} or "
                  "module:function")


def evaluate(backend: Backend, examples: Sequence[Example], single_token_labels: bool = True,
             batch_size: int = 64) -> dict:
    """Accuracy with all candidates of many examples scored per forward batch."""
    correct, total, loss = 0, 0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i: i + batch_size]
        enc = encode(chunk, backend.tokenizer, single_token_labels)
        s = candidate_scores(backend, enc)
        correct += int((s.argmax(1) == enc.labels).sum())
        loss += ce(s, enc.labels) * len(chunk)
        total += len(chunk)
    return {"accuracy": correct / total, "ce": loss / total, "n": total}


class LabelWords:
    """The family of decoder language models on classification tasks (tasks/spec.py's TaskSpec)."""
    name = "label_words"
    OBJECTIVES = OBJECTIVES
    dev_metric = "accuracy"

    def __init__(self, cfg, spec=None, resolve=str):
        """`spec`: the task (None: a request's own examples); `resolve`: a requested objective name → what
        `get_objective` loads (the server's policy; identity offline)."""
        self.cfg, self.spec = cfg, spec
        self.objective_name = cfg.objective or "ce"
        self.objective = get_objective(resolve(self.objective_name))

    def batch(self, backend: Backend, examples: Sequence[Example]) -> EncodedBatch:
        single = self.spec.single_token_labels if self.spec is not None else all(
            len(backend.tokenizer.encode(c, add_special_tokens=False)) == 1 for e in examples for c in e.candidates)
        return encode(examples, backend.tokenizer, single)

    @staticmethod
    def longest(batch: EncodedBatch) -> int:
        return max(len(r.ids) + (1 if r.next_ids else 0) for r in batch.requests)

    def measure(self, backend: Backend, batch: EncodedBatch, step: int) -> Measure:
        return Measure(lambda: self.objective(run_batch(backend, batch.examples, batch)))

    def prepare(self, backend: Backend, data: dict) -> None:
        self.batch(backend, data["train"][:1])  # label words ok for this tokenizer?

    def evaluate(self, backend: Backend, examples: Sequence[Example], with_lm: bool = True) -> dict:
        return evaluate(backend, examples, self.spec.single_token_labels, self.cfg.eval_batch_size)

    lowrank = True   # its scoring forwards batch as adapters

    def files_extra(self, backend) -> dict:
        return {}

    def summary(self, r: dict) -> dict:
        return {"zero_shot_test_accuracy": r["zero_shot"]["accuracy"], "zero_shot_dev_accuracy": r["dev0"],
                "final_dev_accuracy": r["final_dev"]["accuracy"], "best_step": r["best_step"],
                "best_dev_accuracy": r["best_dev"], "test_accuracy": r["test"]["accuracy"],
                "steps": r["steps"], "out": r["out"]}

    panels = (("loss", "training objective (mean of L+, L−)"),)

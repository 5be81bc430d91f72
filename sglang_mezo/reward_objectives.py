"""Objectives on a generation task, and its evaluation.

  em | f1 | numeric | contains | module:function
        −(mean reward) of the batch's generations at the weights the engine holds now. MeZO calls this at
        θ+εz and θ−εz with the same sampling seed (common random numbers: with sampling on, both signs draw
        the same uniforms), so L+ − L− measures the perturbation, not sampling noise. Greedy by default.
  lm    teacher-forced NLL of the reference answer's tokens (mean per token, mean over examples): the
        differentiable comparison.

Whatever is optimised, each call can also measure the other one (`watch`): the reward of the
generations and the LM loss, so training shows both.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from . import rewards
from .backends.base import Backend, ScoreRequest

LM = "lm"


def objective_names() -> list[str]:
    return sorted(rewards.METRICS) + [LM]


def check_objective(name: str) -> None:
    if name != LM:
        rewards.get_reward(name)  # raises RewardError naming the problem


@dataclass
class GenBatch:
    examples: Sequence              # GenExample
    prompt_ids: list[list[int]]
    lm_requests: list[ScoreRequest]  # prompt + reference answer, the answer scored


def encode(examples: Sequence, tokenizer) -> GenBatch:
    prompts, lm = [], []
    for ex in examples:
        ids = tokenizer.encode(ex.prompt)
        target = tokenizer.encode(ex.target, add_special_tokens=False)
        prompts.append(ids)
        lm.append(ScoreRequest(ids + target, target_len=len(target)) if target else None)
    return GenBatch(examples, prompts, lm)


def lm_loss(backend: Backend, batch: GenBatch) -> float:
    """Mean over examples of −(mean log-prob of the reference answer's tokens)."""
    reqs = [r for r in batch.lm_requests if r is not None]
    if not reqs:
        raise rewards.RewardError("the lm objective needs reference answers; this batch has none")
    res = backend.score(reqs)
    return -sum(sum(r.target_logprobs) / len(r.target_logprobs) for r in res) / len(res)


@dataclass
class Measure:
    """loss() for one MeZO step on one batch; remembers what each call measured and how long it took."""
    backend: Backend
    batch: GenBatch
    objective: str                  # em | f1 | numeric | contains | module:function | lm
    reward_name: str                # the reward watched (the objective itself unless it is lm)
    reward_fn: object
    gen: dict                       # max_new_tokens, temperature, top_p, stop
    seed: int                       # sampling seed: the same for every call of this step
    watch: bool = True
    calls: list = field(default_factory=list)

    def __call__(self) -> float:
        rec, t = {}, time.perf_counter()
        if self.objective != LM or self.watch:
            gens = self.backend.generate(self.batch.prompt_ids, seed=self.seed, **self.gen)
            rec["generate_s"] = time.perf_counter() - t
            t = time.perf_counter()
            vals = rewards.rewards(self.reward_name, self.reward_fn, [e.prompt for e in self.batch.examples],
                                   [g.text for g in gens], [e.answers for e in self.batch.examples])
            rec["reward"] = sum(vals) / len(vals)
            rec["reward_s"] = time.perf_counter() - t
            t = time.perf_counter()
        if self.objective == LM or self.watch:
            rec["lm_loss"] = lm_loss(self.backend, self.batch)
            rec["lm_s"] = time.perf_counter() - t
        self.calls.append(rec)
        return rec["lm_loss"] if self.objective == LM else -rec["reward"]

    def summary(self) -> dict:
        """Means over this step's calls (L+ and L−), and the time spent in each part."""
        out = {}
        for k in ("reward", "lm_loss"):
            vals = [c[k] for c in self.calls if k in c]
            if vals:
                out[k] = sum(vals) / len(vals)
        for k in ("generate_s", "reward_s", "lm_s"):
            out[k] = sum(c.get(k, 0.0) for c in self.calls)
        return out


def evaluate(backend: Backend, examples: Sequence, metric: str, gen: dict, batch_size: int = 64,
             seed: int = 0, with_lm: bool = False) -> dict:
    """EM and F1 (official normalisation) and the task's metric of one generation per example; with_lm:
    also the LM loss of the reference answers (one more prefill per example)."""
    names = ["em", "f1"] + ([metric] if metric not in ("em", "f1") else [])
    fns = {n: rewards.get_reward(n) for n in names}
    sums = dict.fromkeys(names, 0.0)
    lm_sum, lm_n, n = 0.0, 0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i: i + batch_size]
        batch = encode(chunk, backend.tokenizer)
        gens = backend.generate(batch.prompt_ids, seed=seed + i, **gen)
        args = ([e.prompt for e in chunk], [g.text for g in gens], [e.answers for e in chunk])
        for name, fn in fns.items():
            sums[name] += sum(rewards.rewards(name, fn, *args))
        if with_lm and any(r is not None for r in batch.lm_requests):
            m = sum(r is not None for r in batch.lm_requests)
            lm_sum += lm_loss(backend, batch) * m
            lm_n += m
        n += len(chunk)
    out = {k: v / n for k, v in sums.items()}
    if lm_n:
        out["lm_loss"] = lm_sum / lm_n
    return {**out, "n": n}

"""Generation tasks: objectives on the engine's generated text (rewards) or on the reference answer.

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

from .. import rewards
from ..backends.base import Backend, ScoreRequest
from ..settings import sample_seed
from ..tasks import GenExample

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
    """loss() for one MeZO step on one batch; remembers what each call measured and how long it took
    (objectives/base.py's Measure interface: `log`, `extra`)."""
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

    @property
    def extra(self) -> dict:
        return {"sample_seed": self.seed}   # replay never re-generates; the record names the seed

    def log(self, step_s: float) -> dict:
        s = self.summary()
        split = {k: s.pop(k) for k in ("generate_s", "reward_s", "lm_s")}
        split["sweeps_and_rest_s"] = step_s - sum(split.values())
        return {**s, "time_split": split}

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


# a request's own generation examples ({"prompt", "answers"}) are scored as this task would score them
REQUEST_DEFAULTS = {"metric": "f1", "max_new_tokens": 16, "stop": ()}


class Generation:
    """The family of decoders on generation tasks (tasks/generation.py's GenerationSpec)."""
    name = "generation"
    OBJECTIVES = tuple(objective_names())

    def __init__(self, cfg, spec=None, resolve=str, watch: bool | None = None):
        d = REQUEST_DEFAULTS if spec is None else {"metric": spec.metric, "max_new_tokens": spec.max_new_tokens,
                                                    "stop": spec.stop}
        name = cfg.objective or d["metric"]
        if name in ("ce", "accuracy"):
            what = f"task {spec.name!r}" if spec is not None else "a request with 'answers'"
            raise ValueError(f"objective {name!r} scores candidates of a classification task; {what} is a "
                             f"generation task: choose one of {objective_names()} or module:function")
        self.objective = name if name in objective_names() else resolve(name)
        check_objective(self.objective)
        self.cfg, self.spec, self.dev_metric, self.objective_name = cfg, spec, d["metric"], name
        self.reward_name = d["metric"] if self.objective == LM else self.objective
        self.reward_fn = rewards.get_reward(self.reward_name)
        self.watch = cfg.watch if watch is None else watch
        self.gen = {"max_new_tokens": cfg.max_new_tokens if cfg.max_new_tokens is not None else d["max_new_tokens"],
                    "temperature": cfg.temperature, "top_p": cfg.top_p, "stop": list(d["stop"])}

    def batch(self, backend: Backend, examples: Sequence[GenExample]) -> GenBatch:
        return encode(examples, backend.tokenizer)

    def longest(self, batch: GenBatch) -> int:
        return max(len(p) for p in batch.prompt_ids) + self.gen["max_new_tokens"]

    def measure(self, backend: Backend, batch: GenBatch, step: int, watch: bool | None = None) -> Measure:
        return Measure(backend, batch, self.objective, self.reward_name, self.reward_fn, self.gen,
                       sample_seed(self.cfg.seed, step), self.watch if watch is None else watch)

    def prepare(self, backend: Backend, data: dict) -> None:
        """Preflight on two training examples: generation settings and the reward function are checked
        here, before the run writes anything (a reward that raises, returns NaN or the wrong count)."""
        self.measure(backend, self.batch(backend, data["train"][:2]), 0, watch=True)()

    def evaluate(self, backend: Backend, examples: Sequence[GenExample], with_lm: bool = True) -> dict:
        return evaluate(backend, examples, self.dev_metric, self.gen, self.cfg.eval_batch_size,
                        seed=self.cfg.seed, with_lm=with_lm)

    lowrank = False

    def files_extra(self, backend) -> dict:
        return {"generation": self.gen, "reward": self.reward_name, "dev_metric": self.dev_metric}

    def summary(self, r: dict) -> dict:
        return {"task": self.spec.name, "objective": self.objective_name, "dev_metric": self.dev_metric,
                "zero_shot_test": r["zero_shot"], "test": r["test"], "best_step": r["best_step"],
                "best_dev": r["best_dev"], "steps": r["steps"], "out": r["out"]}

    panels = (("reward", "train reward (mean of ±)"), ("lm_loss", "train LM loss (mean of ±)"))

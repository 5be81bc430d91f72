"""Scheduler side of a served low-rank step (the HTTP side is lowrank_http.py): two ops, neither a forward.

`lowrank_plan`: the step's batch (the trainer's task sampler or the request's examples, encoded with the
same policy checks as /mezo/step), its seeds and step number, and the names and shapes of the matrices
the adapters cover. No pause: nothing is computed on the weights.
`lowrank_apply`: the finished step's record, applied with `replay_step` — θ ← θ − lr·Σ g·U·Vᵀ in place,
the same function `replay` and `rollback` use — inside the trainer's exclusive section (pause, flush,
update, flush, resume): the only moment serving waits, for one update.
"""
from __future__ import annotations

import time
from dataclasses import asdict

from .protocol import RequestError, parse_step

OPS = ("lowrank_plan", "lowrank_apply")


def _lowrank(trainer) -> None:
    if trainer.perturb != "lowrank":
        raise RequestError("this server trains full-rank; start it with --mezo-perturb lowrank --mezo-rank R "
                           "for low-rank steps", 409)


def plan(trainer, d) -> dict:
    from ..settings import step_seeds

    _lowrank(trainer)
    a = parse_step(d)
    s = a.settings
    if a.examples and "answers" in a.examples[0]:
        raise RequestError("low-rank steps take classification examples (prompt, candidates, label)")
    try:
        trainer.policy.objective(s.objective or "ce")
        exs, single = trainer._batch(a)
        exs, enc = trainer._encode(a, exs, single)
    except ValueError as e:
        raise e if isinstance(e, RequestError) else RequestError(str(e)) from None
    step = len(trainer.records) + 1
    return {"step": step, "seeds": step_seeds(s.seed, step, s.n_queries), "rank": trainer.rank,
            "requests": [[list(r.ids), list(r.next_ids), r.target_len] for r in enc.requests],
            "where": [list(w) for w in enc.where], "labels": enc.labels.tolist(), "n_candidates": enc.n_candidates,
            "examples": [asdict(e) for e in exs],
            "matrices": list(dict.fromkeys((p.hf_name, tuple(p.hf_shape)) for p in trainer.pieces))}


def apply(trainer, d) -> dict:
    from ..mezo import replay_step
    from .replica_ops import _Scalars, parse_apply

    _lowrank(trainer)
    rec, _ = parse_apply(d)
    if rec.step != len(trainer.records) + 1:
        raise RequestError(f"this server holds {len(trainer.records)} steps; the update is step {rec.step}", 409)
    try:
        replay_step(_Scalars(), rec)  # the gradients must follow from the losses before anything changes
    except ValueError as e:
        raise RequestError(str(e)) from None
    t0 = time.perf_counter()
    with trainer._exclusive():
        replay_step(trainer.weights, rec)
    trainer.records.append(rec)
    return {"step": rec.step, "update_s": time.perf_counter() - t0}


def handle(trainer, op: str, args) -> dict:
    return {"lowrank_plan": plan, "lowrank_apply": apply}[op](trainer, args)

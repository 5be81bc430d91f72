"""Replica side of data-parallel MeZO (the coordinator is sglang_mezo/replicas.py): three /mezo/* ops.

Algorithm 1 splits where replicas must agree. `losses` is the forward half of a step on this replica's
shard of the batch: L(θ + s·z(seed)) for each scale s, θ restored exactly, nothing recorded. `apply` is
the update half: the coordinator's record of the whole step (losses combined over every shard and the
projected gradients mezo_step computed from them), applied with `replay_step` — the function `replay`
and `rollback` use — so every replica makes the same bit-exact update and keeps the same trajectory.
`info` lets the coordinator check, before any step, that the replicas serve the same weights, layout
and trajectory head. Only scalars and a shard's examples travel; never weights or gradients.
The parsers run in the HTTP process too (fast 4xx): nothing heavy is imported at module level.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict

from .protocol import RequestError, StepArgs, parse_step

OPS = ("losses", "apply", "info")
MAX_SCALES = 3   # two-point: [eps, -eps]; one-point: [0] then [eps]


def parse_losses(d) -> tuple[int, list[float], StepArgs]:
    """seed, scales, and the step fields (examples required: the coordinator sends each its shard).
    `scales: []` checks the request (objective, examples, lengths) without a forward pass."""
    if not isinstance(d, dict):
        raise RequestError("request body must be a JSON object")
    rest = {k: v for k, v in d.items() if k not in ("seed", "scales")}
    seed, scales = d.get("seed"), d.get("scales")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise RequestError("field 'seed' must be an integer in [0, 2**32)")
    if not isinstance(scales, list) or len(scales) > MAX_SCALES or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and abs(s) <= 1
            for s in scales):
        raise RequestError(f"field 'scales' must be a list of at most {MAX_SCALES} finite numbers in [-1, 1]")
    if "examples" not in rest:
        raise RequestError("/mezo/losses takes 'examples' (this replica's shard of the batch), not a task")
    a = parse_step({**rest, "lr": 0.0})
    if a.examples and "answers" in a.examples[0]:
        raise RequestError("data-parallel steps take classification examples (prompt, candidates, label)")
    return seed, [float(s) for s in scales], a


_RECORD = {"step", "seeds", "grads", "lr", "eps", "weight_decay", "estimator", "loss_plus", "loss_minus",
           "extra"}


def parse_apply(d):
    """(StepRecord, whether to answer with the weights' checksum)."""
    from ..mezo import StepRecord

    if not isinstance(d, dict) or not isinstance(d.get("record"), dict) or set(d) - {"record", "checksum"}:
        raise RequestError("/mezo/apply takes {'record': {step, seeds, grads, lr, eps, weight_decay, "
                           "estimator, loss_plus, loss_minus}, 'checksum': bool}")
    r = d["record"]
    if set(r) - _RECORD or _RECORD - {"extra"} - set(r):
        raise RequestError(f"'record' needs exactly the fields {sorted(_RECORD - {'extra'})} (+ 'extra')")

    def floats(key, n=None):
        v = r[key]
        if not isinstance(v, list) or not 0 < len(v) <= 64 or (n is not None and len(v) != n) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise RequestError(f"record.{key} must be a list of {n or '1 to 64'} finite numbers")
        return [float(x) for x in v]

    seeds = r["seeds"]
    if not isinstance(seeds, list) or not 0 < len(seeds) <= 64 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        raise RequestError("record.seeds must be a list of 1 to 64 integers in [0, 2**32)")
    step = r["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise RequestError("record.step must be an integer >= 1")
    n = len(seeds)
    rec = StepRecord(step, seeds, floats("grads", n), r["lr"], r["eps"], r["weight_decay"], r["estimator"],
                     floats("loss_plus", n), floats("loss_minus", n), r.get("extra") or {})
    try:
        rec.config()  # lr, eps, weight_decay, estimator: the ranges of any step (settings.py)
    except ValueError as e:
        raise RequestError(f"record: {e}") from None
    if not isinstance(rec.extra, dict) or len(json.dumps(rec.extra)) > 4096:
        raise RequestError("record.extra must be a small JSON object")
    chk = d.get("checksum", False)
    if not isinstance(chk, bool):
        raise RequestError("field 'checksum' must be true or false")
    return rec, chk


class _Scalars:
    """A `weights` object with no weights: replay_step on it only checks the record's arithmetic."""

    def losses(self, seed, scales, loss):
        return [loss() for _ in scales]

    def update(self, seed, coef, decay):
        pass

    def flush(self):
        pass


def _exact(trainer) -> None:
    if trainer.perturb != "layerwise":
        raise RequestError("data-parallel steps need exact layer-wise perturbation on every replica "
                           f"(this one runs {trainer.perturb!r}; unset SGLANG_MEZO_PERTURB)", 409)


def head(records) -> str:
    """sha256 of the trajectory so far: replicas with the same head took the same steps."""
    return hashlib.sha256(json.dumps([asdict(r) for r in records]).encode()).hexdigest()


def losses(trainer, d) -> dict:
    from .. import objectives

    seed, scales, a = parse_losses(d)
    _exact(trainer)
    try:
        objective = objectives.get_objective(trainer.policy.objective(a.settings.objective or "ce"))
        exs, single = trainer._batch(a)
        exs, enc = trainer._encode(a, exs, single)
    except ValueError as e:
        raise e if isinstance(e, RequestError) else RequestError(str(e)) from None
    out = []
    if scales:
        with trainer._exclusive():
            out = trainer.weights.losses(
                seed, scales, lambda: objective(objectives.run_batch(trainer.backend, exs, enc)))
    return {"losses": out, "n": len(exs), "steps": len(trainer.records)}


def apply(trainer, d) -> dict:
    from ..mezo import replay_step

    rec, checksum = parse_apply(d)
    _exact(trainer)
    if rec.step != len(trainer.records) + 1:
        raise RequestError(f"this replica holds {len(trainer.records)} steps; the update is step {rec.step}",
                           409)
    try:
        replay_step(_Scalars(), rec)  # gradients must follow from the losses before anything changes
    except ValueError as e:
        raise RequestError(str(e)) from None
    with trainer._exclusive():
        replay_step(trainer.backend.weights(trainer.pieces, trainer.perturb, replay=True), rec)
    trainer.records.append(rec)
    out = {"step": rec.step}
    if checksum:
        out["weights_sha256"] = trainer.checksum()
    return out


def info(trainer, d) -> dict:
    from .. import trajectory

    if d:
        raise RequestError("/mezo/info takes no fields")
    b = trainer.backend
    dtype = str(b.dtype).removeprefix("torch.")
    return {"steps": len(trainer.records), "head": head(trainer.records), "weights_sha256": trainer.checksum(),
            "tp_size": getattr(b, "tp_size", 1), "perturb": trainer.perturb, "dtype": dtype,
            "trajectory_header": trajectory.make_header(b.model_path, dtype, trainer.pieces, "sglang-replicas",
                                                        trainer.perturb)}


def handle(trainer, op: str, args) -> dict:
    return {"losses": losses, "apply": apply, "info": info}[op](trainer, args)

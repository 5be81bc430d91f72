"""The /mezo/* request bodies: validated the same way in the HTTP process (fast 4xx) and the scheduler."""
from __future__ import annotations

import math
from dataclasses import dataclass


class RequestError(ValueError):
    """A bad request: HTTP status + message naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _num(d: dict, key: str, default=None, *, positive=False, nonneg=False, integer=False):
    v = d.get(key, default)
    if v is None:
        raise RequestError(f"missing field {key!r}")
    ok_type = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok_type):
        raise RequestError(f"field {key!r} must be {'an integer' if integer else 'a number'}, got {v!r}")
    if not math.isfinite(v):
        raise RequestError(f"field {key!r} must be finite, got {v!r}")
    if positive and v <= 0 or nonneg and v < 0:
        raise RequestError(f"field {key!r} must be {'> 0' if positive else '>= 0'}, got {v!r}")
    return v


@dataclass
class StepArgs:
    lr: float
    eps: float
    weight_decay: float
    objective: str
    seed: int | None
    examples: list | None      # [{"prompt", "candidates", "label"}]
    task: str | None
    batch_size: int
    k_shot: int | None
    n_queries: int
    estimator: str


def parse_step(d) -> StepArgs:
    if not isinstance(d, dict):
        raise RequestError("request body must be a JSON object")
    unknown = set(d) - {"lr", "eps", "weight_decay", "objective", "seed", "examples", "task", "batch_size",
                        "k_shot", "n_queries", "estimator", "steps", "interval_s"}
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(unknown)}")
    examples, task = d.get("examples"), d.get("task")
    if (examples is None) == (task is None):
        raise RequestError("give exactly one of 'examples' (a list) or 'task' (a task name or .yaml path)")
    if examples is not None:
        if not isinstance(examples, list) or not examples:
            raise RequestError("'examples' must be a non-empty list")
        for i, ex in enumerate(examples):
            if not isinstance(ex, dict) or not isinstance(ex.get("prompt"), str) \
                    or not isinstance(ex.get("candidates"), list) or len(ex["candidates"]) < 2 \
                    or not all(isinstance(c, str) for c in ex["candidates"]):
                raise RequestError(f"examples[{i}] needs 'prompt' (string) and 'candidates' (>= 2 strings)")
            lab = ex.get("label")
            if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < len(ex["candidates"]):
                raise RequestError(f"examples[{i}].label must be an index into its candidates")
    elif not isinstance(task, str):
        raise RequestError("'task' must be a string")
    objective = d.get("objective", "ce")
    if not isinstance(objective, str):
        raise RequestError("'objective' must be a string")
    seed = d.get("seed")
    if seed is not None:
        _num(d, "seed", integer=True, nonneg=True)
    k_shot = d.get("k_shot", 16)
    if k_shot is not None:
        _num(d, "k_shot", 16, integer=True, positive=True)
    estimator = d.get("estimator", "two_point")
    if estimator not in ("two_point", "one_point"):
        raise RequestError("'estimator' must be 'two_point' or 'one_point'")
    if "steps" in d or "interval_s" in d:
        raise RequestError("'steps'/'interval_s' belong to /mezo/train")
    return StepArgs(lr=_num(d, "lr", nonneg=True), eps=_num(d, "eps", 1e-3, positive=True),
                    weight_decay=_num(d, "weight_decay", 0.0, nonneg=True), objective=objective, seed=seed,
                    examples=examples, task=task, batch_size=_num(d, "batch_size", 16, integer=True, positive=True),
                    k_shot=k_shot, n_queries=_num(d, "n_queries", 1, integer=True, positive=True),
                    estimator=estimator)


def parse_train(d) -> tuple[int, float, StepArgs]:
    """steps, interval_s (pause between steps: serving gets that much time to itself), step args."""
    if not isinstance(d, dict):
        raise RequestError("request body must be a JSON object")
    steps = _num(d, "steps", integer=True, positive=True)
    interval = _num(d, "interval_s", 0.0, nonneg=True)
    return steps, interval, parse_step({k: v for k, v in d.items() if k not in ("steps", "interval_s")})


def parse_rollback(d) -> int:
    if not isinstance(d, dict):
        raise RequestError("request body must be a JSON object")
    return _num(d, "steps", 1, integer=True, nonneg=True)


def parse_save(d) -> str:
    if not isinstance(d, dict) or not isinstance(d.get("path"), str) or not d["path"]:
        raise RequestError("'path' (a directory to write) is required")
    return d["path"]

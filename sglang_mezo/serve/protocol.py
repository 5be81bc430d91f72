"""The /mezo/* request bodies: validated the same way in the HTTP process (fast 4xx) and the scheduler.

Every number has a range: a request must not be able to wreck the served weights (lr 1e300), run for
ever (n_queries 10**9) or exhaust memory (batch_size 10**9) by being merely well-typed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MAX_EXAMPLES = 1024      # examples in one request (and the largest batch_size)
MAX_CANDIDATES = 64


class RequestError(ValueError):
    """A bad request: HTTP status + message naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _num(d: dict, key: str, default=None, *, lo, hi, integer=False):
    """d[key] (or default) as a number in [lo, hi]."""
    v = d.get(key, default)
    if v is None:
        raise RequestError(f"missing field {key!r}")
    ok_type = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok_type):
        raise RequestError(f"field {key!r} must be {'an integer' if integer else 'a number'}, got "
                           f"{_short(v)}")
    if isinstance(v, float) and not math.isfinite(v):  # (an int may be too large for math.isfinite)
        raise RequestError(f"field {key!r} must be finite, got {v!r}")
    if not lo <= v <= hi:
        raise RequestError(f"field {key!r} must be between {lo:g} and {hi:g}, got {_short(v)}")
    return v


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _obj(d) -> dict:
    if not isinstance(d, dict):
        raise RequestError("request body must be a JSON object")
    return d


def _flag(d: dict, key: str) -> bool:
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise RequestError(f"field {key!r} must be true or false, got {_short(v)}")
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
    chat_template: bool = False   # wrap prompts with the tokenizer's chat template (tasks/chat.py)
    # generation steps (serve/generation.py): examples [{"prompt", "answers"}] or a generation task
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    objective_given: bool = True  # False: a generation task's own metric


STEP_FIELDS = {"lr", "eps", "weight_decay", "objective", "seed", "examples", "task", "batch_size", "k_shot",
               "n_queries", "estimator", "chat_template", "max_new_tokens", "temperature", "top_p"}


def parse_step(d) -> StepArgs:
    d = _obj(d)
    unknown = set(d) - STEP_FIELDS - {"steps", "interval_s"}
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(map(_short, unknown))}")
    if "steps" in d or "interval_s" in d:
        raise RequestError("'steps'/'interval_s' belong to /mezo/train")
    examples, task = d.get("examples"), d.get("task")
    if (examples is None) == (task is None):
        raise RequestError("give exactly one of 'examples' (a list) or 'task' (a task name)")
    if examples is not None:
        if not isinstance(examples, list) or not 0 < len(examples) <= MAX_EXAMPLES:
            raise RequestError(f"'examples' must be a list of 1 to {MAX_EXAMPLES} examples")
        generation = isinstance(examples[0], dict) and "answers" in examples[0]
        for i, ex in enumerate(examples):
            if generation:
                _generation_example(i, ex)
                continue
            if isinstance(ex, dict) and "candidates" not in ex:  # a class id for an encoder classifier
                _class_example(i, ex)
                continue
            if not isinstance(ex, dict) or not isinstance(ex.get("prompt"), str) \
                    or not isinstance(ex.get("candidates"), list) \
                    or not 2 <= len(ex["candidates"]) <= MAX_CANDIDATES \
                    or not all(isinstance(c, str) for c in ex["candidates"]):
                raise RequestError(f"examples[{i}] needs 'prompt' (string) and 'candidates' "
                                   f"(2 to {MAX_CANDIDATES} strings)")
            if set(ex) - {"prompt", "candidates", "label"}:
                raise RequestError(f"examples[{i}] has unknown field(s) "
                                   f"{sorted(map(_short, set(ex) - {'prompt', 'candidates', 'label'}))}")
            lab = ex.get("label")
            if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < len(ex["candidates"]):
                raise RequestError(f"examples[{i}].label must be an index into its candidates")
    elif not isinstance(task, str) or not 0 < len(task) <= 200:
        raise RequestError("'task' must be a task name (a string of at most 200 characters)")
    objective = d.get("objective", "ce")
    if not isinstance(objective, str) or not 0 < len(objective) <= 200:
        raise RequestError("'objective' must be an objective name (a string of at most 200 characters)")
    seed = d.get("seed")
    if seed is not None:
        _num(d, "seed", lo=0, hi=2**63 - 1, integer=True)
    k_shot = d.get("k_shot", 16)
    if k_shot is not None:
        _num(d, "k_shot", 16, lo=1, hi=100_000, integer=True)
    estimator = d.get("estimator", "two_point")
    if estimator not in ("two_point", "one_point"):
        raise RequestError("'estimator' must be 'two_point' or 'one_point'")
    return StepArgs(lr=_num(d, "lr", lo=0, hi=1), eps=_num(d, "eps", 1e-3, lo=1e-8, hi=1),
                    weight_decay=_num(d, "weight_decay", 0.0, lo=0, hi=1), objective=objective, seed=seed,
                    examples=examples, task=task,
                    batch_size=_num(d, "batch_size", 16, lo=1, hi=MAX_EXAMPLES, integer=True),
                    k_shot=k_shot, n_queries=_num(d, "n_queries", 1, lo=1, hi=64, integer=True),
                    estimator=estimator, chat_template=_flag(d, "chat_template"),
                    max_new_tokens=None if d.get("max_new_tokens") is None else
                    _num(d, "max_new_tokens", lo=1, hi=4096, integer=True),
                    temperature=_num(d, "temperature", 0.0, lo=0, hi=10), top_p=_num(d, "top_p", 1.0, lo=1e-6, hi=1),
                    objective_given="objective" in d)


def _generation_example(i: int, ex) -> None:
    """{"prompt": str, "answers": str or a list of strings} (the references a reward compares against)."""
    ans = ex.get("answers") if isinstance(ex, dict) else None
    ok = isinstance(ans, str) or (isinstance(ans, list) and 0 < len(ans) <= MAX_CANDIDATES
                                  and all(isinstance(a, str) for a in ans))
    if not isinstance(ex, dict) or not isinstance(ex.get("prompt"), str) or not ok:
        raise RequestError(f"examples[{i}] needs 'prompt' (string) and 'answers' (a string or 1 to "
                           f"{MAX_CANDIDATES} strings), like examples[0]")
    if set(ex) - {"prompt", "answers"}:
        raise RequestError(f"examples[{i}] has unknown field(s) {sorted(map(_short, set(ex) - {'prompt', 'answers'}))}")


def _class_example(i: int, ex: dict) -> None:
    """{"prompt": str, "label": class id} (an encoder classifier's head; its size is checked there)."""
    lab = ex.get("label")
    if not isinstance(ex.get("prompt"), str) or isinstance(lab, bool) or not isinstance(lab, int) or lab < 0:
        raise RequestError(f"examples[{i}] needs 'prompt' (string) and either 'candidates' (a language model's "
                           "label words) with 'label' (an index into them), or 'label' alone (a class id >= 0 "
                           "of an encoder classifier)")
    if set(ex) - {"prompt", "label"}:
        raise RequestError(f"examples[{i}] has unknown field(s) {sorted(map(_short, set(ex) - {'prompt', 'label'}))}")


def parse_train(d) -> tuple[int, float, StepArgs]:
    """steps, interval_s (pause between steps: serving gets that much time to itself), step args."""
    d = _obj(d)
    steps = _num(d, "steps", lo=1, hi=1_000_000, integer=True)
    interval = _num(d, "interval_s", 0.0, lo=0, hi=3600)
    return steps, interval, parse_step({k: v for k, v in d.items() if k not in ("steps", "interval_s")})


def parse_rollback(d) -> int:
    d = _obj(d)
    if set(d) - {"steps"}:
        raise RequestError(f"unknown field(s) {sorted(map(_short, set(d) - {'steps'}))}")
    return _num(d, "steps", 1, lo=0, hi=2**63 - 1, integer=True)


@dataclass
class SaveArgs:
    path: str
    overwrite: bool = False


def parse_save(d) -> SaveArgs:
    d = _obj(d)
    if set(d) - {"path", "overwrite"}:
        raise RequestError(f"unknown field(s) {sorted(map(_short, set(d) - {'path', 'overwrite'}))}")
    if not isinstance(d.get("path"), str) or not d["path"]:
        raise RequestError("'path' (the folder to write) is required")
    return SaveArgs(d["path"], _flag(d, "overwrite"))


def parse_status(d) -> bool:
    """Whether to include a checksum of the served weights (costs one pass over them)."""
    d = _obj(d)
    if set(d) - {"checksum"}:
        raise RequestError(f"unknown field(s) {sorted(map(_short, set(d) - {'checksum'}))}")
    return _flag(d, "checksum")

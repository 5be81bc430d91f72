"""The /mezo/* request bodies: validated the same way in the HTTP process (fast 4xx) and the scheduler.
A step's settings are the CLI's (settings.py: same defaults, ranges and messages).

Every number has a range: a request must not be able to wreck the served weights (lr 1e300), run for
ever (n_queries 10**9) or exhaust memory (batch_size 10**9) by being merely well-typed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from ..settings import MAX_BATCH as MAX_EXAMPLES  # examples in one request (and the largest batch_size)
from ..settings import Settings, SettingError
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


class StepArgs(NamedTuple):
    """A /mezo/step body: its settings (the one Settings object) and, instead of a task, its own examples."""
    settings: Settings
    examples: list | None   # [{"prompt", "candidates", "label"}] or [{"prompt", "answers"}]


def parse_step(d) -> StepArgs:
    d = _obj(d)
    if "steps" in d or "interval_s" in d:
        raise RequestError("'steps'/'interval_s' belong to /mezo/train")
    examples, task = d.get("examples"), d.get("task")
    if (examples is None) == (task is None):  # a request names its data (the CLI defaults to a task)
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
    try:
        return StepArgs(Settings.from_json({k: v for k, v in d.items() if k != "examples"}), examples)
    except SettingError as e:
        raise RequestError(str(e)) from None


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

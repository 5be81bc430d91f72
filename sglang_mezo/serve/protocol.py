"""The /mezo/* requests, typed, parsed in one place: the HTTP process (fast 4xx), the scheduler and
`EngineTrainer` run the same parser of each operation (`PARSERS`). A step's settings are the CLI's
(settings.py: same defaults, ranges and messages); a request's own examples are typed by
objectives.parse_examples.

Every number has a range: a request must not be able to wreck the served weights (lr 1e300), run for
ever (n_queries 10**9) or exhaust memory (batch_size 10**9) by being merely well-typed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..settings import MAX_BATCH as MAX_EXAMPLES  # examples in one request (and the largest batch_size)
from ..settings import Settings, SettingError

MAX_SCALES = 3   # /mezo/losses: two-point [eps, -eps]; one-point [0] then [eps]
SCHEDULES = ("interval", "idle")  # /mezo/train: every interval_s, or only when users leave the engine idle
QUIET_S_DEFAULT = 1.0             # idle schedule: seconds without a waiting or running user request
TRAIN_FIELDS = ("steps", "interval_s", "schedule", "quiet_s")


class RequestError(ValueError):
    """A bad request: HTTP status + message naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _obj(d, fields: set | None = None) -> dict:
    if not isinstance(d, dict):
        raise RequestError("request body must be a JSON object")
    if fields is not None and set(d) - fields:
        raise RequestError(f"unknown field(s) {sorted(map(_short, set(d) - fields))}")
    return d


def _num(d: dict, key: str, default=None, *, lo, hi, integer=False):
    """d[key] (or default) as a number in [lo, hi]."""
    v = d.get(key, default)
    if v is None:
        raise RequestError(f"missing field {key!r}")
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise RequestError(f"field {key!r} must be {'an integer' if integer else 'a number'}, got {_short(v)}")
    if isinstance(v, float) and not math.isfinite(v):  # (an int may be too large for math.isfinite)
        raise RequestError(f"field {key!r} must be finite, got {v!r}")
    if not lo <= v <= hi:
        raise RequestError(f"field {key!r} must be between {lo:g} and {hi:g}, got {_short(v)}")
    return v


def _flag(d: dict, key: str, default: bool = False) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise RequestError(f"field {key!r} must be true or false, got {_short(v)}")
    return v


@dataclass
class StepArgs:
    """/mezo/step: its settings (the one Settings object) and, instead of a task, its own examples."""
    settings: Settings
    examples: list | None = None    # typed (tasks.Example / GenExample), or None: the task's sampler
    kind: str | None = None         # the examples' family (objectives.EXAMPLE_KINDS)


def parse_step(d) -> StepArgs:
    d = _obj(d)
    if set(TRAIN_FIELDS) & set(d):
        raise RequestError(f"{sorted(set(TRAIN_FIELDS) & set(d))} belong to /mezo/train")
    examples, task = d.get("examples"), d.get("task")
    if (examples is None) == (task is None):  # a request names its data (the CLI defaults to a task)
        raise RequestError("give exactly one of 'examples' (a list) or 'task' (a task name)")
    kind = None
    if examples is not None:
        if not isinstance(examples, list) or not 0 < len(examples) <= MAX_EXAMPLES:
            raise RequestError(f"'examples' must be a list of 1 to {MAX_EXAMPLES} examples")
        from ..objectives import parse_examples

        try:
            kind, examples = parse_examples(examples)
        except ValueError as e:
            raise RequestError(str(e)) from None
    try:
        return StepArgs(Settings.from_json({k: v for k, v in d.items() if k != "examples"}), examples, kind)
    except SettingError as e:
        raise RequestError(str(e)) from None


@dataclass
class TrainArgs:
    steps: int
    interval_s: float       # pause between steps: serving gets that much time to itself
    step: dict              # the body of each step (parsed by parse_step)
    schedule: str = "interval"          # SCHEDULES
    quiet_s: float = QUIET_S_DEFAULT    # idle: a step starts only after this long without user requests

    @property
    def idle_quiet_s(self) -> float | None:
        """The quiet time a step must wait for (the `if_idle` guard), or None: start at once."""
        return self.quiet_s if self.schedule == "idle" else None


def parse_train(d) -> TrainArgs:
    d = _obj(d)
    steps = _num(d, "steps", lo=1, hi=1_000_000, integer=True)
    interval = _num(d, "interval_s", 0.0, lo=0, hi=3600)
    schedule = d.get("schedule", "interval")
    if schedule not in SCHEDULES:
        raise RequestError(f"field 'schedule' must be one of {list(SCHEDULES)}, got {_short(schedule)}")
    if "quiet_s" in d and schedule != "idle":
        raise RequestError("field 'quiet_s' applies to \"schedule\": \"idle\" only")
    quiet = _num(d, "quiet_s", QUIET_S_DEFAULT, lo=0, hi=3600)
    body = {k: v for k, v in d.items() if k not in TRAIN_FIELDS}
    parse_step(body)
    return TrainArgs(steps, interval, body, schedule, quiet)


def parse_rollback(d) -> int:
    return _num(_obj(d, {"steps"}), "steps", 1, lo=0, hi=2**63 - 1, integer=True)


@dataclass
class SaveArgs:
    path: str
    overwrite: bool = False
    model: bool = True      # False: the trajectory only (seeds and scalars, a few KB; `replay` rebuilds)


def parse_save(d) -> SaveArgs:
    d = _obj(d, {"path", "overwrite", "model"})
    if not isinstance(d.get("path"), str) or not d["path"]:
        raise RequestError("'path' (the folder to write) is required")
    return SaveArgs(d["path"], _flag(d, "overwrite"), _flag(d, "model", True))


def parse_status(d) -> bool:
    """Whether to include a checksum of the served weights (costs one pass over them)."""
    return _flag(_obj(d, {"checksum"}), "checksum")


@dataclass
class LossesArgs:
    """/mezo/losses: the forward half of a data-parallel step on this replica's shard."""
    seed: int
    scales: list[float]     # []: check the request (objective, examples, lengths) without a forward
    step: StepArgs


def parse_losses(d) -> LossesArgs:
    d = _obj(d)
    seed, scales = d.get("seed"), d.get("scales")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise RequestError("field 'seed' must be an integer in [0, 2**32)")
    if not isinstance(scales, list) or len(scales) > MAX_SCALES or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and abs(s) <= 1
            for s in scales):
        raise RequestError(f"field 'scales' must be a list of at most {MAX_SCALES} finite numbers in [-1, 1]")
    rest = {k: v for k, v in d.items() if k not in ("seed", "scales")}
    if "examples" not in rest:
        raise RequestError("/mezo/losses takes 'examples' (this replica's shard of the batch), not a task")
    a = parse_step({**rest, "lr": 0.0})
    if a.kind != "label_words":
        raise RequestError("data-parallel steps take classification examples (prompt, candidates, label)")
    return LossesArgs(seed, [float(s) for s in scales], a)


_RECORD = {"step", "seeds", "grads", "lr", "eps", "weight_decay", "estimator", "loss_plus", "loss_minus",
           "extra"}


@dataclass
class ApplyArgs:
    """/mezo/apply (and a low-rank step's update): a finished step's record, applied as replay applies it."""
    record: object          # mezo.StepRecord
    checksum: bool = False


def parse_apply(d) -> ApplyArgs:
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
    return ApplyArgs(rec, _flag(d, "checksum"))


@dataclass
class LoadArgs:
    """`load`: the scheduler's user load (load.py); `reset` starts the queue-wait figures afresh,
    `pieces_of` collects how a low-rank step's requests were admitted."""
    reset: bool = False
    pieces_of: str | None = None


def parse_load(d) -> LoadArgs:
    d = _obj(d, {"reset", "pieces_of"})
    tag = d.get("pieces_of")
    if tag is not None and not isinstance(tag, str):
        raise RequestError("field 'pieces_of' must be a string")
    return LoadArgs(_flag(d, "reset"), tag)


@dataclass
class IfIdleArgs:
    """`if_idle`: run `op` (a step, or a low-rank step's plan or update) only if no user request has been waiting or
    running for `quiet_s` — checked on the scheduler's thread, so nothing can slip in between."""
    quiet_s: float
    op: str
    args: object


def parse_if_idle(d) -> IfIdleArgs:
    d = _obj(d, {"quiet_s", "op", "args"})
    if d.get("op") not in ("step", "lowrank_plan", "lowrank_apply"):
        raise RequestError("field 'op' must be 'step', 'lowrank_plan' or 'lowrank_apply'")
    return IfIdleArgs(_num(d, "quiet_s", lo=0, hi=3600), d["op"], PARSERS[d["op"]](d.get("args", {})))


def parse_none(d) -> None:
    if _obj(d):
        raise RequestError("this operation takes no fields")


# every scheduler-side operation and its request's parser (ops.py holds the table of what each does)
PARSERS = {"step": parse_step, "rollback": parse_rollback, "save": parse_save, "status": parse_status,
           "losses": parse_losses, "apply": parse_apply, "info": parse_none,
           "lowrank_plan": parse_step, "lowrank_apply": parse_apply, "load": parse_load,
           "if_idle": parse_if_idle}

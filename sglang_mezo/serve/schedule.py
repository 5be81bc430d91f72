"""When training may use the engine: the caller's side of load.py (HTTP process, or EngineTrainer).

  priority   low-rank serving turns SGLang's priority scheduling on (users' requests default to priority
             0, a step's requests get the lowest value there is), unless the operator's flags say
             otherwise; flags that contradict it are refused by name before anything starts
  idle       `"schedule": "idle"` on /mezo/train: each step goes through the scheduler's `if_idle`
             operation; while users were served within `quiet_s`, the loop sleeps and asks again
  meter      what a training run costs users, for /mezo/status: steps per minute, the fraction of
             engine time spent on training, the queue wait of user requests admitted meanwhile
"""
from __future__ import annotations

import time

LOWEST, HIGHEST = -(1 << 63), (1 << 63) - 1   # SGLang's priority range (signed 64-bit)
USER_PRIORITY_DEFAULT = "0"                   # --default-priority-value we set: users' requests
PRIORITY_POLICIES = ("fcfs", "lof")           # the --schedule-policy values SGLang's priority needs
POLL_S = 0.05                                 # idle schedule: how often to ask while users are served


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def priority_flags(argv: list[str]) -> list[str]:
    """Low-rank serving: SGLang's priority scheduling on, users at priority 0 — except where the operator
    gave these flags; a --schedule-policy that priority scheduling cannot use is refused by name."""
    policy = flag_value(argv, "--schedule-policy")
    if policy is not None and policy not in PRIORITY_POLICIES:
        raise ValueError(f"--schedule-policy {policy} contradicts priority scheduling (on in low-rank serving, "
                         f"so that users' requests go before training's): use one of {list(PRIORITY_POLICIES)}")
    out = []
    if not given(argv, "--enable-priority-scheduling"):
        out.append("--enable-priority-scheduling")
    if not given(argv, "--default-priority-value"):  # SGLang's default puts users at the very lowest
        out += ["--default-priority-value", USER_PRIORITY_DEFAULT]
    return out


def check_priority(server_args) -> None:
    """After SGLang parsed the flags: users' default priority must rank above training's."""
    if not server_args.enable_priority_scheduling:
        return
    lowest = training_priority(server_args)
    if server_args.default_priority_value == lowest:
        raise ValueError(f"--default-priority-value {lowest} is the lowest priority, which training's requests "
                         "use: users' requests would not go first (with --schedule-low-priority-values-first "
                         "lower values go first)")


def training_priority(server_args) -> int | None:
    """The lowest priority in SGLang's order (None: priority scheduling is off)."""
    if not getattr(server_args, "enable_priority_scheduling", False):
        return None
    return HIGHEST if server_args.schedule_low_priority_values_first else LOWEST


def check_size(flag: str, value, context_len: int | None) -> int:
    """A chunk or piece size in tokens: at least 1 and at most the model's context."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {value!r}: expected a number of tokens") from None
    if n < 1:
        raise ValueError(f"{flag} {n}: must be at least 1 token")
    if context_len and n > context_len:
        raise ValueError(f"{flag} {n}: beyond the model's context of {context_len} tokens")
    return n


def retry_delay(load: dict, quiet_s: float) -> float:
    """How long an idle-schedule loop sleeps after a busy answer."""
    if load.get("user_waiting") or load.get("user_running"):
        return POLL_S
    return max(0.001, min(quiet_s - load.get("quiet_s", 0.0), 1.0))


class Meter:
    """A training run's cost to users, from the scheduler's load (load.LoadProbe.read) at its start and
    after each step."""

    def __init__(self, load: dict):
        self.t0, self.train0 = time.perf_counter(), load.get("train_engine_s", 0.0)
        self.admitted0 = load.get("users_admitted", 0)

    def fields(self, done: int, load: dict) -> dict:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return {"elapsed_s": elapsed, "steps_per_min": 60 * done / elapsed,
                "train_engine_fraction": min(1.0, (load.get("train_engine_s", self.train0) - self.train0) / elapsed),
                "user_requests": load.get("users_admitted", self.admitted0) - self.admitted0,
                "user_queue_wait_ms": load.get("user_queue_wait_ms")}

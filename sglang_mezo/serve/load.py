"""The scheduler's own view of user load, and training that only uses the engine's spare capacity.

Scheduler side (one `PROBE` per scheduler process; plugin.py hooks `around_prefill` AROUND SGLang's
`Scheduler.get_new_batch_prefill`, called once per scheduler loop iteration that has work):

  hold      a low-rank step's adapter requests (rid TRAIN_RID_PREFIX…) are taken out of the waiting queue
            for that batch while any user request is waiting, being chunk-prefilled or running, so they
            never share a batch with, or delay a decode step of, a user request; otherwise at most
            `piece_tokens` prompt tokens of them (at least one request) are offered per batch, so a user
            request that arrives meanwhile waits for one such piece at most
  observe   when a user request was last seen waiting or running (the idle schedule's quiet time), how
            long each user request waited in the queue before its first forward, how many were admitted,
            and the engine time spent on training (training prefill batches; the ops in ops.py add theirs)

Reads only SGLang's scheduler attributes `waiting_queue`, `running_batch.reqs`, `chunked_req`, and each
Req's `rid`, `origin_input_ids`, `finished()` and `time_stats.{wait_queue_entry_time,forward_entry_time}`
(perf_counter seconds); tests/test_sglang_pin.py lists them.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict, deque

TRAIN_RID_PREFIX = "mezo-"      # a low-rank step's adapter requests (serve/lowrank.py names them)
PIECE_TOKENS_DEFAULT = 16       # prompt tokens of training requests per batch (--mezo-piece-tokens)
PIECE_TOKENS_ENV = "SGLANG_MEZO_PIECE_TOKENS"
_WAITS_KEPT = 4096              # user queue waits kept for the percentiles (most recent)
_TAGS_KEPT = 64                 # steps whose piece log is kept until lowrank.py collects it


def is_training(req) -> bool:
    rid = getattr(req, "rid", None)
    return isinstance(rid, str) and rid.startswith(TRAIN_RID_PREFIX)


def step_tag(rid: str) -> str:
    """The step a training rid belongs to: `mezo-<uuid>-<i>` → `mezo-<uuid>`."""
    return rid.rpartition("-")[0]


def _pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


class LoadProbe:
    def __init__(self):
        self.sched = None
        self.piece_tokens = int(os.environ.get(PIECE_TOKENS_ENV) or PIECE_TOKENS_DEFAULT)
        self.last_user_seen = time.perf_counter()   # a fresh server counts as just busy
        self.users_admitted = 0                      # monotonic: user requests given their first forward
        self.waits: deque = deque(maxlen=_WAITS_KEPT)  # seconds, since the last reset
        self.train_s = 0.0                           # engine seconds on training, monotonic
        self._train_batch_t0 = None                  # a training prefill batch is being computed
        self.pieces: OrderedDict = OrderedDict()     # step tag -> [[requests, users_admitted, users_present]]

    def attach(self, sched) -> None:
        self.sched = sched

    # -- the hook -----------------------------------------------------------------------------
    def users_present(self, sched, running_batch=None) -> tuple[int, int]:
        """(user requests waiting, user requests running or being chunk-prefilled) right now."""
        waiting = sum(1 for r in sched.waiting_queue if not is_training(r))
        batch = running_batch if running_batch is not None else sched.running_batch
        running = sum(1 for r in batch.reqs if not is_training(r) and not r.finished())
        chunked = sched.chunked_req
        if chunked is not None and not is_training(chunked) and chunked not in batch.reqs:
            running += 1
        return waiting, running

    def around_prefill(self, original, sched, running_batch, *args, **kwargs):
        now = time.perf_counter()
        if self.sched is None:
            self.sched = sched
        if self._train_batch_t0 is not None:  # the previous batch was training: it has been computed
            self.train_s += now - self._train_batch_t0
            self._train_batch_t0 = None
        waiting, running = self.users_present(sched, running_batch)
        if waiting or running:
            self.last_user_seen = now
        queue = sched.waiting_queue
        held = [r for r in queue if is_training(r)]
        if held:
            offered, tokens = [], 0
            if not (waiting or running):  # spare capacity: one piece of training at a time
                for r in held:
                    if offered and tokens + len(r.origin_input_ids) > self.piece_tokens:
                        break
                    offered.append(r)
                    tokens += len(r.origin_input_ids)
            keep = {id(r) for r in offered}
            rest = [r for r in held if id(r) not in keep]
            queue[:] = [r for r in queue if not is_training(r) or id(r) in keep]
        try:
            plan = original(sched, running_batch, *args, **kwargs)
        finally:
            if held and rest:  # back at the end of the queue, in their order (SGLang may have rebuilt it)
                sched.waiting_queue.extend(rest)
        self._observe(plan.batch_to_run, now, waiting + running)
        return plan

    def _observe(self, batch, t, users_before: int) -> None:
        if batch is None or not batch.forward_mode.is_extend():
            return
        train = [r for r in batch.reqs if is_training(r)]
        for r in batch.reqs:
            ts = r.time_stats
            if not is_training(r) and ts.forward_entry_time >= t and ts.wait_queue_entry_time > 0:
                self.users_admitted += 1  # its first forward (forward_entry_time is set only once)
                self.waits.append(ts.forward_entry_time - ts.wait_queue_entry_time)
        if train:
            self._train_batch_t0 = time.perf_counter()
            tag = step_tag(train[0].rid)
            self.pieces.setdefault(tag, []).append([len(train), self.users_admitted, users_before])
            while len(self.pieces) > _TAGS_KEPT:
                self.pieces.popitem(last=False)

    # -- reads (ops.py: the `load` and `if_idle` operations) ------------------------------------
    def add_train_time(self, seconds: float) -> None:
        self.train_s += seconds

    def read(self, reset: bool = False, pieces_of: str | None = None) -> dict:
        now = time.perf_counter()
        if self.sched is not None:
            waiting, running = self.users_present(self.sched)
        else:  # no batch formed yet and not attached (never on a serving scheduler)
            waiting = running = 0
        if waiting or running:
            self.last_user_seen = now
        if reset:
            self.waits.clear()
        w = list(self.waits)
        out = {"user_waiting": waiting, "user_running": running, "quiet_s": now - self.last_user_seen,
               "users_admitted": self.users_admitted, "train_engine_s": self.train_s,
               "user_queue_wait_ms": None if not w else {
                   "n": len(w), "p50": 1000 * _pct(w, 50), "p99": 1000 * _pct(w, 99), "max": 1000 * max(w)}}
        if pieces_of is not None:
            out["pieces"] = self.pieces.pop(pieces_of, [])
        return out


PROBE = LoadProbe()

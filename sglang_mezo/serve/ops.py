"""The scheduler side of /mezo/*: one object per scheduler process, one operation table (`OPS`), one
dispatcher (`ServedTrainer.handle`); every request parsed by protocol.PARSERS.

Every operation runs on the scheduler's own thread between batches (it arrives as an RPC), so no ordinary
forward runs concurrently. Around each one that changes or uses the weights: generation is paused with
SGLang's retract mode (running requests give back their KV and wait), the radix cache is flushed, our
forwards run in the freed KV pool, the cache is flushed again and generation continues. Retracted
requests re-prefill under the new weights: no request ever sees perturbed weights or stale KV.

  step          a MeZO step on a task or the request's examples, any family (objectives/)
  rollback      the last k steps undone (base weights + replay of the rest)
  save | status the model and trajectory to a folder | steps and the last one (and the weights' sha256)
  losses | apply | info    data parallel (replicas.py): the forward half on a shard, the update half
                           from the coordinator's record, the pre-flight facts
  lowrank_plan | lowrank_apply   a low-rank step's batch and seeds, and its update (serve/lowrank.py)
  load | if_idle   the scheduler's user load (load.py); a step (or plan) only if users left it idle
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict

import torch

from .. import perturb, rewards, tasks, trajectory
from ..backends.base import select_trainable
from ..backends.encoder import EncoderBackend
from ..backends.lora import engine_targets, resolve_targets
from ..export import save_model
from ..mezo import StepRecord, mezo_step, replay_step
from ..objectives import family_for
from ..run import batches
from ..settings import step_seeds
from .policy import Policy
from .protocol import PARSERS, ApplyArgs, IfIdleArgs, LoadArgs, LossesArgs, RequestError, SaveArgs, StepArgs

log = logging.getLogger("sglang_mezo.serve")
# engine time that is training (if_idle: a step, or a few microseconds of refusing one)
TRAINING_OPS = ("step", "losses", "apply", "lowrank_plan", "lowrank_apply", "if_idle")


class ServedTrainer:
    def __init__(self, backend, pause, resume, flush, perturb_mode: str = "layerwise",
                 policy: Policy | None = None, rank: int | None = None, base_sha256: str | None = None,
                 dp_rank: int = 0, probe=None, sparsity: float = 0.0, lowrank_targets: str | None = None):
        self.backend, self._pause, self._resume, self._flush = backend, pause, resume, flush
        self.probe = probe   # load.LoadProbe of this scheduler (None: no load figures, never idle-gated)
        self.perturb, self.rank, self.sparsity = perturb_mode, rank, sparsity   # sparsity > 0: Sparse MeZO
        self.policy = policy or Policy()   # restricted under `sglang-mezo serve` (requests over HTTP)
        self.encoder = isinstance(backend, EncoderBackend)
        self.pieces = select_trainable(backend.pieces, None)
        self.tied = False
        if perturb_mode == "lowrank":  # --mezo-lowrank-targets' matrices; here only updates land (lowrank.py)
            self.tied = backend.tied_embeddings   # the adapters then cover both uses of the embedding
            targets = engine_targets(resolve_targets(lowrank_targets), self.tied)
            self.pieces = perturb.lowrank.adaptable(self.pieces, targets)[0]
        self.weights = perturb.make(perturb_mode, self.pieces, backend, replay=perturb_mode == "lowrank", rank=rank,
                                    sparsity=sparsity)
        self.records: list[StepRecord] = []
        self._data: dict = {}
        self.base_sha256 = base_sha256  # the base model's content hash (serve --mezo-run-dir), for headers
        self.dp_rank = dp_rank          # under --dp-size N only DP rank 0 writes the journal (dp.py)
        self.journal = None             # journal.Journal with --mezo-run-dir: every step on disk before it counts
        self._sampled = None            # the task sampler a step drew its batch from (journaled in `extra`)
        self._drawn: Counter = Counter()  # batches each sampler drew before a restart (skipped on resume)
        self._planned: dict = {}        # low-rank: step number -> its sampler, until its update lands
        self._idle_op_end = float("-inf")  # when the last idle-gated op finished (its quiet time re-arms)

    def handle(self, op: str, args) -> dict:
        if op not in OPS:
            raise RequestError(f"unknown operation {op!r}", 404)
        a = PARSERS[op](args)
        t0 = time.perf_counter()
        try:
            return OPS[op](self, a)
        finally:
            if op in TRAINING_OPS and self.probe is not None:  # the engine did nothing else meanwhile
                self.probe.add_train_time(time.perf_counter() - t0)

    @contextmanager
    def exclusive(self):
        self._pause()
        self._flush()
        try:
            yield
        finally:
            self._flush()
            self._resume()

    # -- what a step measures ------------------------------------------------------------------
    def prepare(self, a: StepArgs):
        """(family, encoded batch) of a step request; every problem a RequestError naming it."""
        s, spec = a.settings, None
        self._sampled = None
        try:
            if a.examples is None:
                spec = self._task(a)
            family = family_for(s, encoder=self.encoder, spec=spec, kind=a.kind, resolve=self.policy.objective,
                                watch=False)
            if self.encoder:
                family.check_head(self.backend.num_labels)
            exs = a.examples if a.examples is not None else self._sample(a, spec)
            if self.encoder and a.examples is not None:
                n = self.backend.num_labels
                for i, e in enumerate(exs):
                    if not 0 <= e.label < n:
                        raise RequestError(f"examples[{i}].label {e.label} exceeds the served classifier's {n} "
                                           f"classes (0..{n - 1})")
            if s.chat_template:
                if not getattr(self.backend.tokenizer, "chat_template", None):
                    raise RequestError("'chat_template': the served model's tokenizer has no chat template")
                exs = tasks.apply_chat_template(exs, self.backend.tokenizer)
        except RequestError:
            raise
        except ValueError as e:  # an objective, task or setting the family refuses
            raise RequestError(str(e)) from None
        try:
            batch = family.batch(self.backend, exs)
        except tasks.TaskError as e:
            if a.examples is not None:  # the request's own examples: its own text may be quoted back
                raise RequestError(str(e)) from None
            raise self._task_error(a, e) from None
        limit, longest = self.max_tokens(), family.longest(batch)
        if longest > limit:  # would fail inside the step
            raise RequestError(f"an example is {longest} tokens long (prompt + candidate, or + max_new_tokens); "
                               f"this server takes at most {limit}")
        return family, batch

    def _task(self, a: StepArgs):
        source = self.policy.task(a.settings.task)  # a built-in name, or an allowed task file (or RequestError)
        try:
            spec = tasks.get_task(source)
        except tasks.TaskError as e:
            raise self._task_error(a, e) from None
        self.policy.check_task_data(a.settings.task, spec)
        return spec

    def _sample(self, a: StepArgs, spec) -> list:
        """The next batch of the task's training split (k-shot sample and order as `train` draws them)."""
        s = a.settings
        key = (s.task, s.k_shot, s.seed, s.batch_size)
        if key not in self._data:
            try:
                train = tasks.splits(spec, k_shot=s.k_shot, seed=s.seed)["train"]
            except Exception as e:  # TaskError, or a file reader's own error (which may quote the file)
                if not isinstance(e, tasks.TaskError) and not self.policy.restricted:
                    raise
                raise self._task_error(a, e) from None
            order = batches(len(train), s.batch_size, s.seed)
            for _ in range(self._drawn.pop(key, 0)):  # a restored journal's steps drew these already
                next(order)
            self._data[key] = (train, order)
        train, order = self._data[key]
        self._sampled = key
        return [train[i] for i in next(order)]

    def _task_error(self, a: StepArgs, e: Exception) -> RequestError:
        """Task errors may quote a data or task file; over HTTP they go to the server log only."""
        if not self.policy.restricted:
            return RequestError(str(e))
        s = a.settings
        log.warning("MeZO task %r (k_shot=%s, seed=%s): %s", s.task, s.k_shot, s.seed, e)
        return RequestError(f"task {s.task!r} cannot be used with k_shot={s.k_shot}, seed={s.seed}: its "
                            "data is missing, malformed or too small for the request (details in the "
                            "server log)")

    def max_tokens(self) -> int:
        limits = [getattr(self.backend, "max_tokens", None),
                  getattr(getattr(self.backend.runner, "model_config", None), "context_len", None)]
        return min(x for x in limits if x) if any(limits) else 1 << 30

    # -- the operations ------------------------------------------------------------------------
    def step(self, a: StepArgs) -> dict:
        if self.perturb == "lowrank":
            raise RequestError("this server trains low-rank: a step runs as adapter requests beside user "
                               "traffic (POST /mezo/step, or EngineTrainer.step), not inside the scheduler", 409)
        family, batch = self.prepare(a)
        s, step = a.settings, len(self.records) + 1
        m = family.measure(self.backend, batch, step)
        fwd: list[float] = []

        def timed() -> float:  # each forward's seconds: the rest of time_s is the pause, sweeps and flushes
            t = time.perf_counter()
            try:
                return m()
            finally:
                fwd.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        try:
            with self.exclusive():
                rec = mezo_step(self.weights, timed, step_seeds(s.seed, step, s.n_queries), s, step)
        except rewards.RewardError as e:  # a registered reward misbehaved: weights already restored
            raise RequestError(str(e)) from None
        rec.extra = dict(m.extra, **({"sample": list(self._sampled)} if self._sampled else {}))
        self._commit(rec)
        return {"step": rec.step, "loss_plus": rec.loss_plus, "loss_minus": rec.loss_minus,
                "projected_grad": rec.grads, "seeds": rec.seeds, "time_s": time.perf_counter() - t0,
                "forwards_s": fwd, **m.summary(), "record": asdict(rec)}   # record: what other DP ranks apply (dp.py)

    def rollback(self, k: int) -> dict:
        if k > len(self.records):
            raise RequestError(f"cannot roll back {k} steps: only {len(self.records)} taken", 409)
        keep = self.records[: len(self.records) - k]
        if k:  # write-ahead: once journaled, a restart restores the rolled-back weights even if we die below
            self._journaled(self.journal and (lambda: self.journal.rollback(len(keep))), "rollback")
        with self.exclusive():
            trajectory.rewind(self.backend, self.pieces, self.perturb, keep, self.rank, sparsity=self.sparsity)
        self.records = keep
        return {"steps": len(keep), "rolled_back": k}

    def save(self, a: SaveArgs) -> dict:
        rank = self.backend.tp_rank
        out, err = None, None
        if rank == 0:  # under TP only rank 0 checks and writes; the others send it their shards
            try:
                out = self.policy.save_path(a.path, a.overwrite)  # over HTTP: inside --mezo-save-dir only
                if out.exists() and not out.is_dir():
                    raise RequestError(f"'path' {a.path} exists and is not a directory")
                out.mkdir(parents=True, exist_ok=True)
            except RequestError as e:
                err = (str(e), e.status)
        err = self.backend.gather(err)[0]
        if err:  # every rank stops here, so none waits in the gather below
            raise RequestError(*err)
        if not a.model:  # the seeds only: the model is `sglang-mezo replay` of this file on the base
            if rank == 0:
                trajectory.write(out / "trajectory.jsonl", self.header("sglang-serve"), self.records)
            return {"path": a.path if self.policy.restricted else str(out), "steps": len(self.records),
                    "model": False} if rank == 0 else {}
        with self.exclusive():  # weights are never mid-perturbation here; exclusive keeps it so
            state = self.backend.hf_state_dict()  # under TP: collective, full tensors on rank 0
        if rank != 0:
            return {}
        save_model(self.backend.model_path, state, self.backend.dtype, out / "model")
        trajectory.write(out / "trajectory.jsonl", self.header("sglang-serve"), self.records)
        return {"path": a.path if self.policy.restricted else str(out), "steps": len(self.records)}

    def header(self, backend_name: str) -> dict:
        dtype = str(self.backend.dtype).removeprefix("torch.")
        head = trajectory.make_header(self.backend.model_path, dtype, self.pieces, backend_name, self.perturb,
                                      rank=self.rank, sparsity=self.sparsity)
        head["tp_size"] = self.backend.tp_size  # informational: a replay is the same under any TP layout
        if self.base_sha256:
            head["base_model_sha256"] = self.base_sha256
        return head

    # -- the journal (serve --mezo-run-dir; journal.py) ------------------------------------------
    def open_journal(self, run_dir: str) -> None:
        """At scheduler start, before anything is served: the journal's steps replayed in place (the
        engine holds the base weights), then every later step and rollback appended to it."""
        from .journal import Journal

        t0 = time.perf_counter()
        self.journal = Journal(run_dir, self.header("sglang-serve"),
                               writer=self.backend.tp_rank == 0 and self.dp_rank == 0)
        t = self.journal.restored
        # warnings, not info: no handler is configured for our logger in SGLang's processes, and an
        # operator must see what a start restored at every log level
        if t is None:
            log.warning("MeZO journal %s: new (no steps to restore)", self.journal.path)
            return
        trajectory.rewind(self.backend, self.pieces, self.perturb, t.records, self.rank, reload=False,
                          sparsity=self.sparsity)
        self.records = list(t.records)
        self._drawn = Counter(tuple(r.extra["sample"]) for r in t.taken if "sample" in r.extra)
        log.warning("MeZO journal %s: restored %d steps (%d journaled, %d rollbacks%s) in %.1f s; the next "
                    "step is %d", self.journal.path, len(t.records), len(t.taken), t.rollbacks,
                    ", a torn last line dropped" if t.torn else "", time.perf_counter() - t0, len(t.records) + 1)

    def _journaled(self, write, what: str) -> None:
        """Run a journal write (rank 0's; `write` falsy: no journal) and agree on the outcome across TP
        ranks; a failure is a RequestError that names it (507)."""
        if not write:
            return
        err = write()
        if self.backend.tp_size > 1:
            err = self.backend.gather(err)[0]
        if err:
            raise RequestError(f"{what} not done: {err}", 507)

    def _commit(self, rec: StepRecord) -> None:
        """The step counts once its record is journaled (fsync'd); if the journal cannot take it, the
        weights go back to the steps before it."""
        try:
            self._journaled(self.journal and (lambda: self.journal.step(rec)), f"step {rec.step}")
        except RequestError:
            with self.exclusive():
                trajectory.rewind(self.backend, self.pieces, self.perturb, self.records, self.rank,
                                  sparsity=self.sparsity)
            raise
        self.records.append(rec)

    def status(self, checksum: bool = False) -> dict:
        out = {"steps": len(self.records), "head": trajectory.head(self.records), "last": None if not self.records else {
            "step": self.records[-1].step, "loss": self.records[-1].loss, "grads": self.records[-1].grads}}
        if checksum:
            out["weights_sha256"] = self.checksum()
        return out

    def checksum(self) -> str:
        """sha256 over every parameter of the engine's model, bit for bit (detects any change)."""
        h = hashlib.sha256()
        for name, p in sorted(self.backend.model.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digests = self.backend.gather(h.hexdigest())
        # under TP every rank hashes its shard; the answer covers them all, in rank order
        return digests[0] if len(digests) == 1 else hashlib.sha256(" ".join(digests).encode()).hexdigest()

    def _next(self, rec: StepRecord) -> None:
        """A coordinator's or low-rank step's record: the next step, and its arithmetic sound, before any
        weight changes."""
        if rec.step != len(self.records) + 1:
            raise RequestError(f"this server holds {len(self.records)} steps; the update is step {rec.step}", 409)
        try:
            replay_step(perturb.NoWeights(), rec)
        except ValueError as e:
            raise RequestError(str(e)) from None

    # data parallel (replicas.py) ------------------------------------------------------------------
    def _exact(self) -> None:
        if self.perturb != "layerwise":
            raise RequestError("data-parallel steps need exact layer-wise perturbation on every replica "
                               f"(this one runs {self.perturb!r}; unset SGLANG_MEZO_PERTURB)", 409)

    def losses(self, a: LossesArgs) -> dict:
        self._exact()
        family, batch = self.prepare(a.step)
        out = []
        if a.scales:
            with self.exclusive():
                out = self.weights.losses(a.seed, a.scales, family.measure(self.backend, batch, 0))
        return {"losses": out, "n": len(batch.labels), "steps": len(self.records)}

    def apply(self, a: ApplyArgs) -> dict:
        """A step another process measured (the coordinator, DP rank 0), applied as replay applies it."""
        self._next(a.record)
        with self.exclusive():
            replay_step(perturb.make(self.perturb, self.pieces, self.backend, replay=True, rank=self.rank,
                                     sparsity=self.sparsity), a.record)
        self._commit(a.record)
        return {"step": a.record.step, **({"weights_sha256": self.checksum()} if a.checksum else {})}

    def info(self, _=None) -> dict:
        return {"steps": len(self.records), "head": trajectory.head(self.records), "weights_sha256": self.checksum(),
                "tp_size": self.backend.tp_size, "perturb": self.perturb,
                "dtype": str(self.backend.dtype).removeprefix("torch."),
                "trajectory_header": self.header("sglang-replicas")}

    # low-rank steps (serve/lowrank.py runs their forwards as adapter requests) -------------------
    def _lowrank(self) -> None:
        if self.perturb != "lowrank":
            raise RequestError("this server trains full-rank; start it with --mezo-perturb lowrank --mezo-rank R "
                               "for low-rank steps", 409)

    def lowrank_plan(self, a: StepArgs) -> dict:
        """The step's batch, its seeds and step number, and the matrices its adapters cover (no forward)."""
        self._lowrank()
        if a.kind not in (None, "label_words"):
            raise RequestError("low-rank steps take classification examples (prompt, candidates, label)")
        family, enc = self.prepare(a)
        if family.name != "label_words":
            raise RequestError("low-rank steps take classification tasks (label words)")
        s, step = a.settings, len(self.records) + 1
        self._planned = {step: self._sampled}
        return {"step": step, "seeds": step_seeds(s.seed, step, s.n_queries), "rank": self.rank,
                "requests": [[list(r.ids), list(r.next_ids), r.target_len] for r in enc.requests],
                "where": [list(w) for w in enc.where], "labels": enc.labels.tolist(),
                "n_candidates": enc.n_candidates, "examples": [asdict(e) for e in enc.examples],
                "matrices": list(dict.fromkeys((p.hf_name, tuple(p.hf_shape)) for p in self.pieces)),
                "tied": self.tied}

    def lowrank_apply(self, a: ApplyArgs) -> dict:
        """The finished step's record applied in place (replay_step) — the only moment serving waits."""
        self._lowrank()
        self._next(a.record)
        t0 = time.perf_counter()
        with self.exclusive():
            replay_step(self.weights, a.record)
        if self._planned.get(a.record.step):
            a.record.extra["sample"] = list(self._planned.pop(a.record.step))
        self._commit(a.record)
        return {"step": a.record.step, "update_s": time.perf_counter() - t0}


def _load(self: ServedTrainer, a: LoadArgs) -> dict:
    if self.probe is None:
        raise RequestError("this engine has no load probe", 409)
    return self.probe.read(a.reset, a.pieces_of)


def _if_idle(self: ServedTrainer, a: IfIdleArgs) -> dict:
    """The op only if no user request is waiting or running and none was for `quiet_s` ({**its result,
    "load_at_start"}), else {"busy": load}: the caller waits and asks again. On the scheduler's thread, so
    no user request can be admitted between this check and the op. The quiet time counts from the last
    user request or the end of the last idle-gated op, whichever is later: a step started in a gap in
    traffic is not followed at once by another that the next request would have to wait for."""
    load = _load(self, LoadArgs())
    since = time.perf_counter() - self._idle_op_end
    load["since_idle_op_s"] = since if since != float("inf") else None   # None: no idle-gated op yet
    load["quiet_s"] = min(load["quiet_s"], since)
    if load["user_waiting"] or load["user_running"] or load["quiet_s"] < a.quiet_s:
        return {"busy": load}
    try:
        return {**OPS[a.op](self, a.args), "load_at_start": load}
    finally:
        self._idle_op_end = time.perf_counter()


OPS = {"step": ServedTrainer.step, "rollback": ServedTrainer.rollback, "save": ServedTrainer.save,
       "status": ServedTrainer.status, "losses": ServedTrainer.losses, "apply": ServedTrainer.apply,
       "info": ServedTrainer.info, "lowrank_plan": ServedTrainer.lowrank_plan,
       "lowrank_apply": ServedTrainer.lowrank_apply, "load": _load, "if_idle": _if_idle}

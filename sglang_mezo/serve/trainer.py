"""MeZO inside a serving SGLang scheduler: one object per scheduler process, driven by /mezo/* calls.

Every call runs on the scheduler's own thread between batches (it arrives as an RPC), so no ordinary
forward runs concurrently. Around each call that changes or uses the weights: generation is paused with
SGLang's retract mode (running requests give back their KV and wait), the radix cache is flushed, our
forwards run in the freed KV pool, the cache is flushed again and generation continues. Retracted
requests re-prefill under the new weights: no request ever sees perturbed weights or stale KV.
"""
from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager

import torch

from .. import objectives, tasks
from ..backends.base import select_trainable
from ..mezo import StepRecord, mezo_step
from ..settings import step_seeds
from ..trajectory import rewind
from .policy import Policy
from .protocol import RequestError, SaveArgs, StepArgs

log = logging.getLogger("sglang_mezo.serve")


class ServedTrainer:
    def __init__(self, backend, pause, resume, flush, perturb: str = "layerwise", policy: Policy | None = None,
                 rank: int | None = None):
        self.backend, self._pause, self._resume, self._flush = backend, pause, resume, flush
        self.perturb, self.rank = perturb, rank
        self.policy = policy or Policy()   # restricted under `sglang-mezo serve` (requests over HTTP)
        self.pieces = select_trainable(backend.pieces, None)
        if perturb == "lowrank":  # LoRA-adaptable matrices only; here only updates land (lowrank_ops.py)
            from ..lowrank import adaptable

            self.pieces = adaptable(self.pieces)[0]
        self.weights = backend.weights(self.pieces, perturb, replay=perturb == "lowrank", rank=rank)
        self.records: list[StepRecord] = []
        self._data: dict = {}

    @contextmanager
    def _exclusive(self):
        self._pause()
        self._flush()
        try:
            yield
        finally:
            self._flush()
            self._resume()

    def _batch(self, a: StepArgs):
        """The step's examples and whether their candidates are single tokens."""
        if a.examples is not None:
            if any("candidates" not in e for e in a.examples):
                raise RequestError("examples without 'candidates' give class ids for an encoder classifier; "
                                   "the served model is a language model: give each example its 'candidates'")
            exs = [tasks.Example(e["prompt"], list(e["candidates"]), int(e["label"])) for e in a.examples]
            single = all(len(self.backend.tokenizer.encode(c, add_special_tokens=False)) == 1
                         for e in exs for c in e.candidates)
            return exs, single
        s = a.settings
        key = (s.task, s.k_shot, s.seed, s.batch_size)
        if key not in self._data:
            source = self.policy.task(s.task)  # a built-in name, or an allowed task file (or RequestError)
            try:
                spec = tasks.get_task(source)
                self.policy.check_task_data(s.task, spec)
                data = tasks.splits(spec, k_shot=s.k_shot, seed=s.seed)
            except RequestError:
                raise
            except Exception as e:  # TaskError, or a file reader's own error (which may quote the file)
                if not isinstance(e, tasks.TaskError) and not self.policy.restricted:
                    raise
                raise self._task_error(a, e) from None
            from ..train import batches

            self._data[key] = (spec, data["train"], batches(len(data["train"]), s.batch_size, s.seed))
        spec, train, order = self._data[key]
        return [train[i] for i in next(order)], getattr(spec, "single_token_labels", True)

    def _task_error(self, a: StepArgs, e: Exception) -> RequestError:
        """Task errors may quote a data or task file; over HTTP they go to the server log only."""
        if not self.policy.restricted:
            return RequestError(str(e))
        s = a.settings
        log.warning("MeZO task %r (k_shot=%s, seed=%s): %s", s.task, s.k_shot, s.seed, e)
        return RequestError(f"task {s.task!r} cannot be used with k_shot={s.k_shot}, seed={s.seed}: its "
                             "data is missing, malformed or too small for the request (details in the "
                             "server log)")

    def _encode(self, a: StepArgs, exs, single):
        tok = self.backend.tokenizer
        if a.settings.chat_template:
            if not getattr(tok, "chat_template", None):
                raise RequestError("'chat_template': the served model's tokenizer has no chat template")
            from ..tasks.chat import apply_chat_template

            exs = apply_chat_template(exs, tok)
        try:
            enc = objectives.encode(exs, tok, single)
        except tasks.TaskError as e:
            if a.examples is not None:  # the request's own examples: its own text may be quoted back
                raise RequestError(str(e)) from None
            raise self._task_error(a, e) from None
        # A prompt longer than the model's context or the KV pool would fail inside the step
        limit = self._max_tokens()
        longest = max(len(r.ids) + (1 if r.next_ids else 0) for r in enc.requests)
        if longest > limit:
            raise RequestError(f"an example is {longest} tokens long; this server takes at most {limit} "
                               "per prompt + candidate")
        return exs, enc

    def _max_tokens(self) -> int:
        limits = [getattr(self.backend, "max_tokens", None)]
        runner = getattr(self.backend, "runner", None)
        limits.append(getattr(getattr(runner, "model_config", None), "context_len", None))
        return min(x for x in limits if x) if any(limits) else 1 << 30

    def step(self, a: StepArgs) -> dict:
        from .encoder_step import encoder_step
        from .generation import generation_step, is_generation_request

        if getattr(self.backend, "num_labels", None):  # an encoder classifier: class logits, no tokens
            return encoder_step(self, a)
        if is_generation_request(self, a):  # a reward on the engine's generations, or lm on answers
            return generation_step(self, a)
        s = a.settings
        try:
            objective = objectives.get_objective(self.policy.objective(s.objective or "ce"))
            exs, single = self._batch(a)
            exs, enc = self._encode(a, exs, single)
        except ValueError as e:  # TaskError too; a RequestError is re-raised as it is
            raise e if isinstance(e, RequestError) else RequestError(str(e)) from None
        step = len(self.records) + 1
        t0 = time.perf_counter()
        # lowrank over this RPC: adapters on the scheduler's own runner while paused (the HTTP route
        # runs them as ordinary requests beside user traffic instead: lowrank_http.py)
        weights = self.weights if self.perturb != "lowrank" else \
            self.backend.weights(self.pieces, "lowrank", rank=self.rank)
        with self._exclusive():
            rec = mezo_step(weights, lambda: objective(objectives.run_batch(self.backend, exs, enc)),
                            step_seeds(s.seed, step, s.n_queries), s, step)
        self.records.append(rec)
        return {"step": rec.step, "loss_plus": rec.loss_plus, "loss_minus": rec.loss_minus,
                "projected_grad": rec.grads, "seeds": rec.seeds, "time_s": time.perf_counter() - t0}

    def rollback(self, k: int) -> dict:
        if k > len(self.records):
            raise RequestError(f"cannot roll back {k} steps: only {len(self.records)} taken", 409)
        keep = self.records[: len(self.records) - k]
        with self._exclusive():
            rewind(self.backend, self.pieces, self.perturb, keep, self.rank)
        self.records = keep
        return {"steps": len(keep), "rolled_back": k}

    def save(self, a: SaveArgs) -> dict:
        from .. import trajectory
        from ..export import save_model

        rank = getattr(self.backend, "tp_rank", 0)
        out, err = None, None
        if rank == 0:  # under TP only rank 0 checks and writes; the others send it their shards
            try:
                out = self.policy.save_path(a.path, a.overwrite)  # over HTTP: inside --mezo-save-dir only
                if out.exists() and not out.is_dir():
                    raise RequestError(f"'path' {a.path} exists and is not a directory")
                out.mkdir(parents=True, exist_ok=True)
            except RequestError as e:
                err = (str(e), e.status)
        err = self.backend.gather(err)[0] if hasattr(self.backend, "gather") else err
        if err:  # every rank stops here, so none waits in the gather below
            raise RequestError(*err)
        with self._exclusive():  # weights are never mid-perturbation here; exclusive keeps it so
            state = self.backend.hf_state_dict()  # under TP: collective, full tensors on rank 0
        if rank != 0:
            return {}
        save_model(self.backend.model_path, state, self.backend.dtype, out / "model")
        dtype = str(self.backend.dtype).removeprefix("torch.")
        trajectory.write(out / "trajectory.jsonl", trajectory.make_header(
            self.backend.model_path, dtype, self.pieces, "sglang-serve", self.perturb, rank=self.rank), self.records)
        return {"path": a.path if self.policy.restricted else str(out), "steps": len(self.records)}

    def status(self, checksum: bool = False) -> dict:
        out = {"steps": len(self.records), "last": None if not self.records else {
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
        digests = self.backend.gather(h.hexdigest()) if hasattr(self.backend, "gather") else [h.hexdigest()]
        # under TP every rank hashes its shard; the answer covers them all, in rank order
        return digests[0] if len(digests) == 1 else hashlib.sha256(" ".join(digests).encode()).hexdigest()

    def handle(self, op: str, args) -> dict:
        from . import protocol

        if op == "step":
            return self.step(protocol.parse_step(args))
        if op == "rollback":
            return self.rollback(protocol.parse_rollback(args))
        if op == "save":
            return self.save(protocol.parse_save(args))
        if op == "status":
            return self.status(protocol.parse_status(args))
        from . import lowrank_ops

        if op in lowrank_ops.OPS:
            return lowrank_ops.handle(self, op, args)
        raise RequestError(f"unknown operation {op!r}", 404)


"""MeZO inside a serving SGLang scheduler: one object per scheduler process, driven by /mezo/* calls.

Every call runs on the scheduler's own thread between batches (it arrives as an RPC), so no ordinary
forward runs concurrently. Around each call that changes or uses the weights: generation is paused with
SGLang's retract mode (running requests give back their KV and wait), the radix cache is flushed, our
forwards run in the freed KV pool, the cache is flushed again and generation continues. Retracted
requests re-prefill under the new weights: no request ever sees perturbed weights or stale KV.
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import objectives, tasks
from ..backends.base import select_trainable
from ..mezo import MeZOConfig, StepRecord, mezo_step, replay_step
from .protocol import RequestError, StepArgs


class ServedTrainer:
    def __init__(self, backend, pause, resume, flush, perturb: str = "layerwise"):
        self.backend, self._pause, self._resume, self._flush = backend, pause, resume, flush
        self.perturb = perturb
        self.pieces = select_trainable(backend.pieces, None)
        self.weights = backend.weights(self.pieces, perturb)
        self.records: list[StepRecord] = []
        self._data: dict = {}
        self._seed_rng = random.Random(0)

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
        if a.examples is not None:
            exs = [tasks.Example(e["prompt"], list(e["candidates"]), int(e["label"])) for e in a.examples]
            return exs, all(len(self.backend.tokenizer.encode(c, add_special_tokens=False)) == 1
                            for e in exs for c in e.candidates)
        key = (a.task, a.k_shot, a.seed or 0, a.batch_size)
        if key not in self._data:
            try:
                spec = tasks.get_task(a.task)
                data = tasks.splits(spec, k_shot=a.k_shot, seed=a.seed or 0)
            except tasks.TaskError as e:
                raise RequestError(str(e)) from None
            from ..train import batches

            self._data[key] = (spec, data["train"], batches(len(data["train"]), a.batch_size, a.seed or 0))
        spec, train, order = self._data[key]
        return [train[i] for i in next(order)], spec.single_token_labels

    def step(self, a: StepArgs) -> dict:
        try:
            objective = objectives.get_objective(a.objective)
            cfg = MeZOConfig(lr=a.lr, eps=a.eps, weight_decay=a.weight_decay, estimator=a.estimator,
                             n_queries=a.n_queries)
            exs, single = self._batch(a)
            enc = objectives.encode(exs, self.backend.tokenizer, single)
        except (ValueError, tasks.TaskError) as e:
            raise RequestError(str(e)) from None
        seeds = [self._seed_rng.getrandbits(32) if a.seed is None else (a.seed * 1000003 + len(self.records)
                 * 7919 + q) % 2**32 for q in range(a.n_queries)]
        t0 = time.perf_counter()
        with self._exclusive():
            rec = mezo_step(self.weights, lambda: objective(objectives.run_batch(self.backend, exs, enc)),
                            seeds, cfg, len(self.records) + 1)
        self.records.append(rec)
        return {"step": rec.step, "loss_plus": rec.loss_plus, "loss_minus": rec.loss_minus,
                "projected_grad": rec.grads, "seeds": rec.seeds, "time_s": time.perf_counter() - t0}

    def rollback(self, k: int) -> dict:
        if k > len(self.records):
            raise RequestError(f"cannot roll back {k} steps: only {len(self.records)} taken", 409)
        keep = self.records[: len(self.records) - k]
        with self._exclusive():
            self.backend.load_base()
            redo = self.backend.weights(self.pieces, self.perturb, replay=True)
            for rec in keep:
                replay_step(redo, rec)
        self.records = keep
        return {"steps": len(keep), "rolled_back": k}

    def save(self, path: str) -> dict:
        from .. import trajectory
        from ..export import save_model

        out = Path(path)
        if out.exists() and not out.is_dir():
            raise RequestError(f"'path' {path} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        with self._exclusive():  # weights are never mid-perturbation here; exclusive keeps it so
            save_model(self.backend.model_path, self.backend.hf_state_dict(), self.backend.dtype, out / "model")
        dtype = str(self.backend.dtype).removeprefix("torch.")
        trajectory.write(out / "trajectory.jsonl", trajectory.make_header(
            self.backend.model_path, dtype, self.pieces, "sglang-serve", self.perturb), self.records)
        return {"path": str(out), "steps": len(self.records)}

    def status(self) -> dict:
        return {"steps": len(self.records), "last": None if not self.records else {
            "step": self.records[-1].step, "loss": self.records[-1].loss, "grads": self.records[-1].grads}}

    def handle(self, op: str, args) -> dict:
        from . import protocol

        if op == "step":
            return self.step(protocol.parse_step(args))
        if op == "rollback":
            return self.rollback(protocol.parse_rollback(args))
        if op == "save":
            return self.save(protocol.parse_save(args))
        if op == "status":
            return self.status()
        raise RequestError(f"unknown operation {op!r}", 404)


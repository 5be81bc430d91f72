"""A served low-rank step — the one path, for HTTP and EngineTrainer: the ±ε forwards are ordinary SGLang
requests, never a pause.

    plan    RPC lowrank_plan (scheduler, ops.py: batch, seeds, adapted matrices, tied embedding; no forward)
    load    2n fresh adapters (A = Vᵀ, B = ±ε·U/√r; an embedding's transposed, a tied one also as the LM
            head: perturb/lowrank.py) through the tokenizer manager, as any LoRA load
    score   ONE generate call: every example once per adapter (lora_path), return_logprob, one new token,
            at the lowest priority, rids `mezo-<step tag>-<i>`; the scheduler (load.py) admits them one
            small piece at a time and only while no user request waits or runs, so users go first (radix
            KV is keyed by adapter id, and the ids are fresh each step, so no perturbed request meets KV
            of other weights). The losses are those of the one call however it was split.
    unload  the adapters
    update  RPC lowrank_apply: the step's record applied in place — the only pause, one update long
Users first: the adapter loads, their unloads and the update are scheduler work that no priority orders,
so each waits for a moment when no user request is waiting or running (`_when_idle`; the update is checked
and run in one scheduler operation, `if_idle`, so nothing slips in between and no user request is
retracted), but at most IDLE_WAIT_S: under back-to-back traffic such moments last milliseconds, and
training must still progress.
The losses and projected gradients are computed here with the same `estimate` as mezo_step, so the
record replays bit-identically (`sglang-mezo replay`).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict

from ..backends.base import ScoreRequest, ScoreResult
from ..backends.lora import check_limits
from ..mezo import StepRecord, estimate, points
from ..objectives import label_words
from ..perturb.lowrank import adapter_config, adapter_tensors
from ..tasks import Example
from .load import TRAIN_RID_PREFIX
from .protocol import RequestError, parse_step


class Matrix:
    """An HF matrix by name and shape (what adapters and rank checks need of a piece)."""

    def __init__(self, name, shape):
        self.hf_name, self.hf_shape = name, tuple(shape)


def _results(outs, reqs):
    """ScoreResults from SGLang's per-request meta_info (token_ids_logprob / input_token_logprobs)."""
    res = []
    for o, (ids, next_ids, t) in zip(outs, reqs):
        meta = o["meta_info"]
        nxt = []
        if next_ids:
            got = {tid: lp for lp, tid, *_ in meta["output_token_ids_logprobs"][0]}
            nxt = [got[i] for i in next_ids]
        span = [x[0] for x in meta["input_token_logprobs"][-t:]] if t else []
        res.append(ScoreResult(nxt, span))
    return res


IDLE_POLL_S = 0.005   # how often a step's scheduler work asks whether users left the engine idle
IDLE_WAIT_S = 1.0     # ... and for how long at most before it runs anyway


async def _when_idle(call, op: str | None = None, args: dict | None = None) -> tuple[int, dict]:
    """Wait (at most IDLE_WAIT_S) until the scheduler serves no user request; then run `op` there (through
    `if_idle`, atomic; after the wait, plainly) or, without an op, return (the caller's next scheduler
    work may still meet a user that arrived meanwhile)."""
    deadline = time.perf_counter() + IDLE_WAIT_S
    while time.perf_counter() < deadline:
        if op is None:
            code, res = await call("load", {})
            if code != 200 or not (res.get("user_waiting") or res.get("user_running")):
                return code, res
        else:
            code, res = await call("if_idle", {"quiet_s": 0.0, "op": op, "args": args})
            if code != 200 or "busy" not in res:
                return code, res
        await asyncio.sleep(IDLE_POLL_S)
    return (200, {}) if op is None else await call(op, args)


async def step(call, args: dict, tokenizer_manager, objective, rank: int, tp_size: int, max_rank: int,
               max_loras: int, *, priority: int | None = None, quiet_s: float | None = None) -> tuple[int, dict]:
    """One low-rank step; `call(op, args)` reaches the schedulers (async), `objective` is the resolved
    callable, `priority` the requests' (schedule.training_priority), `quiet_s` the idle schedule's guard
    (then a result {"busy": load} means: not now, ask again)."""
    from sglang.srt.managers.io_struct import (GenerateReqInput, LoadLoRAAdapterFromTensorsReqInput,
                                               UnloadLoRAAdapterReqInput)
    from sglang.srt.utils import MultiprocessingSerializer

    cfg = parse_step(args).settings  # lr, eps, weight_decay, estimator, n_queries (checked there)
    try:
        check_limits(rank, sum(sc != 0 for _, sc in points([0] * cfg.n_queries, cfg)), max_rank, max_loras)
    except ValueError as e:
        raise RequestError(str(e)) from None
    t0 = time.perf_counter()
    if quiet_s is None:
        code, plan = await call("lowrank_plan", args)
    else:
        code, plan = await call("if_idle", {"quiet_s": quiet_s, "op": "lowrank_plan", "args": args})
    if code != 200 or "busy" in plan:
        return code, plan
    mats = [Matrix(n, s) for n, s in plan["matrices"]]
    rank, seeds, reqs = plan["rank"], plan["seeds"], plan["requests"]
    conf = adapter_config(mats, rank, plan["tied"])
    names: list = []
    loaded: list[str] = []
    try:
        for s, sc in points(seeds, cfg):
            if sc == 0:  # the unperturbed loss: the served weights, no adapter
                names.append(None)
                continue
            await _when_idle(call)
            name = f"mezo-{uuid.uuid4().hex}"  # fresh per step: its KV can never be matched by another
            blob = MultiprocessingSerializer.serialize(adapter_tensors(s, sc, mats, rank, plan["tied"]))
            r = await tokenizer_manager.load_lora_adapter_from_tensors(LoadLoRAAdapterFromTensorsReqInput(
                lora_name=name, config_dict=conf, serialized_named_tensors=[blob] * tp_size), None)
            if not r.success:
                raise RequestError(f"SGLang refused a low-rank adapter: {r.error_message}", 500)
            loaded.append(name)
            names.append(name)
        t_load = time.perf_counter()
        flat = [(q, n) for n in names for q in reqs]
        tag = f"{TRAIN_RID_PREFIX}{uuid.uuid4().hex}"
        gen = GenerateReqInput(
            rid=[f"{tag}-{i}" for i in range(len(flat))], priority=priority,
            input_ids=[q[0] for q, _ in flat], lora_path=[n for _, n in flat],
            sampling_params=[{"max_new_tokens": 1, "temperature": 0.0} for _ in flat],
            return_logprob=[True] * len(flat),
            # entry 0 (position start) comes back empty; entries after it are log p(ids[j] | ids[:j])
            logprob_start_len=[len(q[0]) - q[2] - 1 if q[2] else len(q[0]) - 1 for q, _ in flat],
            token_ids_logprob=[q[1] or None for q, _ in flat])
        outs = await tokenizer_manager.generate_request(gen, None).__anext__()
        t_fwd = time.perf_counter()
    finally:
        for name in loaded:
            await _when_idle(call)
            await tokenizer_manager.unload_lora_adapter(UnloadLoRAAdapterReqInput(lora_name=name), None)
    code, seen = await call("load", {"pieces_of": tag})  # how the scheduler admitted them
    pieces = seen.get("pieces", []) if code == 200 else []
    import torch

    exs = [Example(**e) for e in plan["examples"]]
    enc = label_words.EncodedBatch([ScoreRequest(*q) for q in reqs], [tuple(w) for w in plan["where"]],
                                   torch.tensor(plan["labels"]), plan["n_candidates"], exs)
    k = len(reqs)
    losses = []
    for i in range(len(names)):
        res = _results(outs[i * k: (i + 1) * k], reqs)
        v = float(objective(label_words.EngineOutputs(exs, enc.labels, label_words.scores(res, enc), res, enc)))
        if v != v or v in (float("inf"), float("-inf")):
            raise RequestError(f"objective returned {v}: step aborted, weights unchanged", 422)
        losses.append(v)
    grads, lp, lm = estimate(losses, cfg)
    rec = StepRecord(plan["step"], seeds, grads, cfg.lr, cfg.eps, cfg.weight_decay, cfg.estimator, lp, lm)
    code, res = await _when_idle(call, "lowrank_apply", {"record": asdict(rec)})
    if code != 200:
        return code, res
    return 200, {"step": rec.step, "loss_plus": lp, "loss_minus": lm, "projected_grad": grads, "seeds": seeds,
                 "adapters": len(loaded), "requests": len(names) * k, "load_s": t_load - t0, "forward_s": t_fwd - t_load,
                 "update_s": res["update_s"], "time_s": time.perf_counter() - t0,
                 # per piece: [requests, user requests admitted so far, user requests present at admission]
                 "pieces": pieces, **({"load_at_start": plan["load_at_start"]} if "load_at_start" in plan else {})}

"""SGLang adapter: an in-process ModelRunner built as `sglang.benchmark.one_batch` builds it.

Pinned to sglang 0.5.23 (SGLANG_VERSION); tests/test_sglang_pin.py fails loudly on any other version.
Every SGLang internal we touch is in this file. Forward passes are SGLang's own batched prefill (ragged
prompts packed, no padding); the radix cache is off and the KV pools are cleared before every batch,
so nothing computed under old or perturbed weights is ever reused. Weights change only in place
(CUDA graphs keep pointers to them).
"""
from __future__ import annotations

from array import array
from typing import Sequence

import torch

from .. import cpu_shims
from . import layout
from .base import Backend, BackendError, Piece, ScoreRequest, ScoreResult, validate_requests

SGLANG_VERSION = "0.5.23"
_built: str | None = None


def check_version() -> None:
    import sglang

    if sglang.__version__ != SGLANG_VERSION:
        raise BackendError(f"sglang_mezo's SGLang adapter is written for sglang=={SGLANG_VERSION}, "
                           f"found {sglang.__version__}: its internals (ModelRunner, Req, ScheduleBatch) "
                           "may differ; install the pinned version")


class SGLangBackend(Backend):
    name = "sglang"
    fan = None   # a Fanout while a low-rank step's adapters are loaded (lora.py)

    def __init__(self, model_path: str, dtype: str = "float32", *, max_total_tokens: int = 8192,
                 device: str | None = None, verify_layout: bool = True, server_args: dict | None = None,
                 lora: dict | None = None):
        """Single-rank (one process holds one rank): tensor parallelism runs through `sglang-mezo serve
        --tp N` or sglang.Engine(tp_size=N) with EngineTrainer, whose ranks SGLang spawns. `lora`:
        {max_lora_rank, max_loras_per_batch[, lora_backend]} turns on SGLang's multi-LoRA (lowrank)."""
        cpu_shims.install()
        check_version()
        from .sglang_patches import apply_all

        apply_all()  # patches/*.diff, in memory (the installed package is never edited)
        from sglang.benchmark.one_batch import _init_process_global_configs, load_model
        from sglang.srt.entrypoints.engine import _set_envs_and_config
        from sglang.srt.runtime_context import SpawnRanks, publish, spawn_world_rank
        from sglang.srt.server_args import PortArgs, ServerArgs

        on_cuda = torch.cuda.is_available() if device is None else device == "cuda"
        kw = dict(model_path=model_path, dtype=dtype, disable_radix_cache=True, tp_size=1,
                  max_total_tokens=max_total_tokens, random_seed=0, log_level="error", **(server_args or {}))
        if not on_cuda:
            kw.update(device="cpu", attention_backend="torch_native", disable_cuda_graph=True)
        if lora:  # multi-LoRA for low-rank perturbations: lora = {max_lora_rank, max_loras_per_batch}
            from .lora import LORA_TARGETS

            kw.update({"enable_lora": True, "lora_target_modules": list(LORA_TARGETS),
                       "lora_backend": "torch_native" if not on_cuda else "triton", **lora})
        sa = ServerArgs(**kw)
        sa.resolve_once()
        _set_envs_and_config(sa)
        pa = PortArgs.init_new(sa)
        publish(sa, role="scheduler",
                ranks=SpawnRanks(world_rank=spawn_world_rank(sa, tp_rank=0, pp_rank=0), gpu_id=0))
        _init_process_global_configs()
        global _built
        if _built:  # SGLang builds its parallel groups once per process
            raise BackendError(f"an SGLang ModelRunner already lives in this process ({_built}); SGLang "
                               "allows one per process: start another process for a second model")
        _built = model_path
        try:
            bench, tokenizer = load_model(sa, pa, 0, 0)
        except Exception as e:
            if lora:  # SGLang's LoRA refuses the model or a target: say which flag asked for it
                raise BackendError(f"--perturb lowrank: SGLang's multi-LoRA cannot serve {model_path} "
                                   f"({type(e).__name__}: {e})") from e
            raise
        self._attach(bench.torch_runner, tokenizer, model_path, verify_layout, max_total_tokens)

    @classmethod
    def attach(cls, runner, tokenizer, model_path: str, verify_layout: bool = False, group=None
               ) -> "SGLangBackend":
        """Adapter over a ModelRunner SGLang already built (inside a serving scheduler process).

        Its forwards use the runner's KV pools and clear them: call only while no request holds KV
        (the serving plugin pauses generation and flushes the cache around every use). `group`: the
        scheduler's TP GroupCoordinator; under TP > 1 every rank holds a shard and methods that see
        the whole model (hf_state_dict, gather) are collective: every rank must call them."""
        self = cls.__new__(cls)
        self.group = group
        self._attach(runner, tokenizer, model_path, verify_layout, runner.max_total_num_tokens)
        return self

    @property
    def tp_rank(self) -> int:
        return getattr(getattr(self, "group", None), "rank_in_group", 0)

    @property
    def tp_size(self) -> int:
        return getattr(getattr(self, "group", None), "world_size", 1)

    def gather(self, obj) -> list:
        """Collective: every TP rank's `obj`, in rank order, on every rank (SGLang's CPU group)."""
        return [obj] if self.tp_size == 1 else self.group.all_gather_object(obj)

    def _attach(self, runner, tokenizer, model_path, verify_layout, max_total_tokens):
        self.runner, self.tokenizer = runner, tokenizer
        self.model = self.runner.model
        self.model_path = model_path
        self.dtype = next(self.model.parameters()).dtype
        self.vocab_size = self.runner.model_config.vocab_size
        self.context_len = self.runner.model_config.context_len
        self.max_tokens = min(max_total_tokens, self.runner.max_total_num_tokens) - 8
        self.max_reqs = max(1, self.runner.req_to_token_pool.size - 1)
        refuse_derived_caches(self.model)
        self._pieces = layout.engine_pieces(self.model, layout.checkpoint_shapes(model_path))
        if verify_layout:
            layout.verify(self._pieces, model_path)

    @property
    def pieces(self) -> list[Piece]:
        return self._pieces

    @torch.no_grad()
    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        validate_requests(requests, self.vocab_size)
        fan = self.fan
        if fan is not None:  # under adapters: every adapter's results from one batch, then this one's
            return fan.results(requests)
        return self.score_with(requests, [None] * len(requests))

    def score_with(self, requests, lora_ids) -> list[ScoreResult]:
        results: list[ScoreResult] = []
        for chunk in self._chunks(requests, with_index=True):
            results.extend(self._forward([requests[i] for i in chunk], [lora_ids[i] for i in chunk]))
        return results

    def adapters(self):
        """Low-rank perturbations as adapters of this runner's multi-LoRA (BackendError without LoRA)."""
        from .lora import LORA_TARGETS, LoRAAdapters

        if getattr(self.runner, "lora_manager", None) is None:
            raise BackendError("--perturb lowrank needs SGLang's multi-LoRA: this engine was started without "
                               "it (serve: --enable-lora --max-lora-rank R --max-loras-per-batch N "
                               f"--lora-target-modules {' '.join(LORA_TARGETS)} --lora-backend torch_native)")
        return LoRAAdapters(self)

    def _chunks(self, requests, with_index: bool = False):
        """Consecutive requests that fit the KV pool together (their indices with with_index)."""
        chunk, tokens = [], 0
        for i, r in enumerate(requests):
            if len(r.ids) > self.max_tokens:
                raise BackendError(f"a request of {len(r.ids)} tokens exceeds max_total_tokens {self.max_tokens}")
            if chunk and (tokens + len(r.ids) > self.max_tokens or len(chunk) >= self.max_reqs):
                yield chunk
                chunk, tokens = [], 0
            chunk.append(i if with_index else r)
            tokens += len(r.ids)
        if chunk:
            yield chunk

    def _prefill(self, reqs):
        """One batched prefill of `reqs` in freshly cleared KV pools; (logits output, the ScheduleBatch)."""
        from sglang.benchmark.one_batch import TreeCacheNamespace
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.model_executor.forward_batch_info import ForwardBatch
        from sglang.srt.runtime_context import get_schedule
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        mr = self.runner
        mr.req_to_token_pool.clear()
        mr.token_to_kv_pool_allocator.clear()
        tree = TreeCacheNamespace(page_size=get_schedule().page_size, device=mr.device,
                                  token_to_kv_pool_allocator=mr.token_to_kv_pool_allocator)
        batch = ScheduleBatch.init_new(reqs=reqs, req_to_token_pool=mr.req_to_token_pool,
                                       token_to_kv_pool_allocator=mr.token_to_kv_pool_allocator,
                                       tree_cache=tree, model_config=mr.model_config, enable_overlap=False,
                                       spec_algorithm=SpeculativeAlgorithm.NONE)
        batch.prepare_for_extend()
        if batch.input_ids is None and getattr(batch, "prefill_input_ids_cpu", None) is not None:
            batch.input_ids = batch.prefill_input_ids_cpu.to(batch.device)
            batch.prefill_input_ids_cpu = None
        fb = ForwardBatch.init_new(batch, mr, return_hidden_states_before_norm=False)
        return mr.forward(fb).logits_output, batch

    def _decode(self, batch, next_ids: list[int]):
        """One decode step (as sglang.benchmark.one_batch.decode): each request's last token in, logits out."""
        from sglang.srt.model_executor.forward_batch_info import ForwardBatch

        batch.input_ids = torch.tensor(next_ids, dtype=torch.int64, device=batch.device)
        batch.prepare_for_decode()
        fb = ForwardBatch.init_new(batch, self.runner, return_hidden_states_before_norm=False)
        return self.runner.forward(fb).logits_output

    @torch.no_grad()
    def _generate(self, ids, p, sampler, stops):
        """Prefill a chunk, then a batched decode loop; finished requests leave the batch (filter_batch)."""
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        results: list = [None] * len(ids)
        # a chunk must hold each prompt's KV plus room for max_new_tokens more
        for chunk in self._chunks([ScoreRequest(i + [0] * p.max_new_tokens) for i in ids], with_index=True):
            rows = list(chunk)
            reqs = []
            for i in rows:
                req = Req(rid=str(i), origin_input_text="", origin_input_ids=array("q", ids[i]),
                          sampling_params=SamplingParams(temperature=0, max_new_tokens=p.max_new_tokens))
                req.full_untruncated_fill_ids = req.origin_input_ids
                req.logprob_start_len = -1
                req.extend_end = len(ids[i])
                reqs.append(req)
            out, batch = self._prefill(reqs)
            new = {i: [] for i in rows}
            while True:
                picked = sampler.pick(out.next_token_logits[:, : self.vocab_size].float(), rows)
                keep, next_ids = [], []
                for k, (i, t) in enumerate(zip(rows, picked)):
                    new[i].append(t)
                    finish = stops.finish(new[i])
                    if finish:
                        results[i] = stops.result(new[i], finish)
                    else:
                        keep.append(k)
                        next_ids.append(t)
                if not keep:
                    break
                if len(keep) < len(rows):
                    batch.filter_batch(keep_indices=keep)
                    rows = [rows[k] for k in keep]
                out = self._decode(batch, next_ids)
        self.runner.req_to_token_pool.clear()
        self.runner.token_to_kv_pool_allocator.clear()
        return results

    def _forward(self, requests: Sequence[ScoreRequest], lora_ids=None) -> list[ScoreResult]:
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        mr = self.runner
        want_span = any(r.target_len for r in requests)
        reqs = []
        for i, r in enumerate(requests):
            req = Req(rid=str(i), origin_input_text="", origin_input_ids=array("q", r.ids),
                      sampling_params=SamplingParams(temperature=0, max_new_tokens=1),
                      return_logprob=want_span, lora_id=lora_ids[i] if lora_ids else None)
            req.full_untruncated_fill_ids = req.origin_input_ids
            # Log-probs from position len-target_len-1 on: entry j = log p(ids[s+j+1] | ids[:s+j+1]).
            req.logprob_start_len = len(r.ids) - max(r.target_len, 1) - 1 if want_span else len(r.ids) - 1
            req.extend_end = len(r.ids)
            reqs.append(req)
        out, _ = self._prefill(reqs)
        # next_token_logits may live in a reused buffer: reduce it before the next forward.
        next_lp = torch.log_softmax(out.next_token_logits[:, : self.vocab_size].float(), dim=-1)
        results = []
        flat = out.input_token_logprobs.float().cpu() if want_span else None
        k = 0
        for i, r in enumerate(requests):
            nxt = next_lp[i, r.next_ids].tolist() if r.next_ids else []
            span = []
            if want_span:
                n = len(r.ids) - reqs[i].logprob_start_len  # entries for this request (last is a pad slot)
                if r.target_len:
                    span = flat[k: k + r.target_len].tolist()
                k += n
            results.append(ScoreResult(nxt, span))
        mr.req_to_token_pool.clear()
        mr.token_to_kv_pool_allocator.clear()
        return results

    def hf_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full HF tensors. Under TP > 1 collective: rank 0 gets every rank's shards, the others None."""
        if self.tp_size == 1:
            return assemble_hf(self._pieces)
        import torch.distributed as dist

        mine = [(p.hf_name, p.hf_shape, p.hf_start, p.view.detach().cpu()) for p in self._pieces]
        every = [None] * self.tp_size if self.tp_rank == 0 else None
        dist.gather_object(mine, every, dst=self.group.ranks[0], group=self.group.cpu_group)
        if self.tp_rank != 0:
            return None
        pieces = [Piece(n, shape, view, start) for rank in every for n, shape, start, view in rank]
        return assemble_hf(pieces, complete=True)


def refuse_derived_caches(model) -> None:
    """SGLang refuses online weight updates for models with derived weight caches; so do we."""
    from sglang.srt.model_executor.model_runner_components.weight_updater import (
        _unsupported_derived_weight_cache_error,
    )

    reason = _unsupported_derived_weight_cache_error(model)
    if reason:
        raise BackendError(f"this model keeps derived weight caches that in-place MeZO updates would "
                           f"leave stale: {reason}")


def assemble_hf(pieces: list[Piece], complete: bool = False) -> dict[str, torch.Tensor]:
    """Full HF tensors from pieces (single-rank: every piece of a tensor is here). `complete`: check
    that the pieces (every TP rank's) cover each tensor whole, so no element is silently left 0."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}
    for p in pieces:
        t = out.get(p.hf_name)
        if t is None:
            t = out[p.hf_name] = torch.zeros(p.hf_shape, dtype=p.view.dtype)
            if complete:
                seen[p.hf_name] = torch.zeros(p.hf_shape, dtype=torch.bool)
        layout.piece_of(t, p).copy_(p.view.cpu())
        if complete:
            layout.piece_of(seen[p.hf_name], p).fill_(True)
    holes = [n for n, m in seen.items() if not bool(m.all())]
    if holes:
        raise BackendError(f"the TP ranks' shards do not cover {holes[:5]}: the layout of a sharded "
                           "parameter is not what layout.py expects")
    return out

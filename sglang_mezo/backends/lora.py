"""SGLang's multi-LoRA as the carrier of low-rank perturbations θ + s·U·Vᵀ (perturb/lowrank.py).

An engine started with LoRA (`enable_lora`, the targets below) batches many adapters in one forward, so
all of a step's ±ε points share one batch. `check_limits` says, before any step, whether the pool holds
them; `LoRAAdapters` loads fresh adapters per step on an in-process runner and fans the batch out.
"""
from __future__ import annotations

import uuid

from .piece import BackendError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VOCAB = ("embed_tokens", "lm_head")   # SGLang's VocabParallelEmbeddingWithLoRA / ParallelLMHeadWithLoRA
LORA_TARGETS = PROJECTIONS + VOCAB    # every module a low-rank direction can cover
TARGET_SETS = {"all": LORA_TARGETS, "projections": PROJECTIONS}
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))   # SGLang's qkv_proj and gate_up_proj


def resolve_targets(spec: str | None) -> tuple[str, ...]:
    """--lowrank-targets: all (default) | projections | comma-separated module names of LORA_TARGETS."""
    if spec is None:
        return LORA_TARGETS
    if spec in TARGET_SETS:
        return TARGET_SETS[spec]
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",")))
    bad = [n for n in names if n not in LORA_TARGETS]
    if bad or not names:
        raise ValueError(f"--lowrank-targets {spec!r}: SGLang's LoRA cannot adapt {bad or [spec]} here; give "
                         f"all, projections, or names from {', '.join(LORA_TARGETS)} (comma-separated)")
    for group in FUSED:  # SGLang adapts a fused module whole: its LoRA weights must cover every part
        if 0 < len(set(group) & set(names)) < len(group):
            raise ValueError(f"--lowrank-targets {spec!r}: SGLang fuses {', '.join(group)} into one module and "
                             f"adapts it whole: name all of them or none")
    return names


def engine_lora_targets(server_args) -> str | None:
    """--lowrank-targets for an engine started without `sglang-mezo serve` (EngineTrainer): the modules of
    its --lora-target-modules we adapt (None: all of them, or LoRA off)."""
    mods = list(getattr(server_args, "lora_target_modules", None) or [])
    if not mods or "all" in mods:
        return None
    return ",".join(m for m in mods if m in LORA_TARGETS) or None


def engine_targets(targets, tied: bool) -> list[str]:
    """SGLang's --lora-target-modules for `targets`: a tied embedding is also the LM head, so its direction
    needs both LoRA modules (the lookup and the logits), whichever of the two names asked for it."""
    out = list(targets)
    if tied and any(t in VOCAB for t in out):
        out += [t for t in VOCAB if t not in out]
    return out


def check_limits(rank: int, n_adapters: int, max_rank: int, max_loras: int) -> None:
    """Clear errors before any step: the engine's LoRA pool must hold `n_adapters` rank-`rank` adapters."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"--rank must be an integer >= 1, got {rank!r}")
    if rank > max_rank:
        raise ValueError(f"--rank {rank} exceeds the engine's max_lora_rank {max_rank} (SGLang flag "
                         f"--max-lora-rank): raise it to at least {rank}, or lower --rank")
    if n_adapters > max_loras:
        raise ValueError(f"one step needs {n_adapters} adapters in a batch (directions × signs, plus the "
                         f"unperturbed model where the estimator needs it), more than the engine's "
                         f"max_loras_per_batch {max_loras} (SGLang flag --max-loras-per-batch): raise it "
                         "to at least that, or lower --n-queries")


class LoRAAdapters:
    """Low-rank perturbations θ + s·U·Vᵀ as LoRA adapters of the runner's multi-LoRA pool.

    Each `losses` call loads fresh adapters (new uuid lora_ids: SGLang's radix cache keys KV by lora_id,
    and its LoRA pool caches weights by lora_id, so nothing computed under another step's adapter can
    be reused), runs every adapter's copy of the batch in one forward, and unloads them."""

    def __init__(self, backend):   # an SGLangBackend
        self.backend = backend
        self.manager = backend.runner.lora_manager

    def limits(self) -> tuple[int, int]:
        """(max_lora_rank, max_loras_per_batch) the engine was started with."""
        return self.manager.max_lora_rank, self.manager.max_loras_per_batch

    def check(self, rank: int, n_adapters: int) -> None:
        check_limits(rank, n_adapters, *self.limits())

    def losses(self, tensors: list, config: dict, loss) -> list[float]:
        """loss() under each adapter (None: the base model), all adapters' requests in one batch."""
        from sglang.srt.lora.lora_registry import LoRARef

        self.check(config["r"], len(tensors))
        refs, ids = [], []
        try:
            for t in tensors:
                if t is None:
                    ids.append(None)
                    continue
                tag = uuid.uuid4().hex  # fresh per step: no cached adapter weights or KV can match it
                ref = LoRARef(lora_id=tag, lora_name=f"mezo-{tag}", lora_path=f"sglang_mezo:lowrank/{tag}",
                              pinned=False)
                res = self.backend.runner.load_lora_adapter_from_tensors(ref, t, config)
                if not res.success:
                    raise BackendError(f"SGLang refused the low-rank adapter: {res.error_message}")
                refs.append(ref)
                ids.append(ref.lora_id)
            fan = self.backend.fan = Fanout(self.backend, ids)
            out = []
            for i in range(len(ids)):
                fan.current = i
                out.append(loss())
            return out
        finally:
            self.backend.fan = None
            for ref in refs:
                self.backend.runner.unload_lora_adapter(ref)


class Fanout:
    """score() under k adapters: the first call runs requests × adapters as one batch, later calls
    (the other adapters' losses) read their share."""

    def __init__(self, backend, ids):
        self.backend, self.ids, self.current, self.cache = backend, ids, 0, {}

    def results(self, requests):
        key = tuple((tuple(r.ids), tuple(r.next_ids), r.target_len) for r in requests)
        if key not in self.cache:
            n = len(requests)
            flat = self.backend.score_with([r for _ in self.ids for r in requests],
                                            [a for a in self.ids for _ in requests])
            self.cache[key] = [flat[k * n: (k + 1) * n] for k in range(len(self.ids))]
        return self.cache[key][self.current]

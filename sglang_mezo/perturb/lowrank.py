"""Low-rank MeZO directions: z_W = U·Vᵀ/√r for each matrix SGLang's LoRA can adapt (EGGROLL, LOZO):
the q/k/v/o/gate/up/down projections, the vocabulary embedding (embed_tokens) and the LM head (lm_head).

    U[i, k] = z(seed, f"{name}:U", k·out + i)      V[j, k] = z(seed, f"{name}:V", k·in + j)
with z the counter noise of noise.py, so a factor is a pure function of (seed, HF name, factor, index):
any layout (fused qkv, TP row/column shards) slices the same U rows / V rows, and the first k columns
of a rank-r direction are the rank-k direction (the index runs column by column). Entries of U·Vᵀ are
sums of r unit-variance products, hence the 1/√r: every entry of z_W has unit variance, as MeZO's z.

A perturbed forward never touches the base weights: θ ± εz_W is a LoRA adapter with A = Vᵀ (r × in) and
B = ±ε·U/√r (out × r), scaling 1, served by SGLang's multi-LoRA batching, so all 2n adapters of n
directions share one forward (`LowRank.losses_at`). Backends without adapters (hf, the reference)
visit θ ± εz_W by merging the delta and copying the weights back (exact). The update
θ ← θ − lr·g·z_W lands in place on the base weights, z_W rebuilt from the seed.

The embedding W (vocab × hidden) is looked up by row: SGLang's embedding LoRA adds B·A[:, token], i.e.
ΔWᵀ = B·A, so its adapter is the transpose (A = Uᵀ, B = ±ε·V/√r) of the same U·Vᵀ. A tied embedding is
also the LM head: its one direction (factors keyed by the shared tensor's HF name, model.embed_tokens.weight)
is two LoRA modules, the lookup (transposed) and the logits (A = Vᵀ, B = ±ε·U/√r), as full-rank perturbs
the shared tensor once for both uses; the update lands once on the shared tensor.

Norms (1-D) stay frozen: a LoRA adapter holds matrices only, and a per-adapter norm vector would need a
per-request norm in SGLang's batch (docs/lowrank.md).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..backends.lora import LORA_TARGETS as TARGETS
from ..noise import gaussian_range, gaussian_reference, stream_key
from .base import finite



def module(name: str) -> str:
    """The LoRA target module of an HF tensor name (model.layers.0.self_attn.q_proj.weight -> q_proj)."""
    return name.rsplit(".", 2)[-2] if name.count(".") else name


def adaptable(pieces, targets=TARGETS) -> tuple[list, list[str]]:
    """(pieces of matrices a LoRA target of `targets` covers, sorted HF names of the frozen rest)."""
    keep = [p for p in pieces if p.hf_name.endswith(".weight") and module(p.hf_name) in targets
            and len(p.hf_shape) == 2]
    frozen = sorted({p.hf_name for p in pieces} - {p.hf_name for p in keep})
    return keep, frozen


def check_rank(rank: int, pieces) -> None:
    """A rank-r direction of an out × in matrix needs r <= min(out, in) (else U·Vᵀ cannot have rank r)."""
    small = {p.hf_name: tuple(p.hf_shape) for p in pieces if rank > min(p.hf_shape)}
    if small:
        name, shape = min(small.items(), key=lambda kv: min(kv[1]))
        raise ValueError(f"--rank {rank} exceeds the smaller dimension {min(shape)} of {name} {shape} "
                         f"({len(small)} matrices): lower --rank to at most {min(shape)}, or leave "
                         f"{module(name)} out of --lowrank-targets")


def factor(seed: int, name: str, which: str, n: int, rank: int, device="cpu") -> torch.Tensor:
    """U (which="U", n = out rows) or V (which="V", n = in columns): an n × rank float32 tensor."""
    key = stream_key(seed, f"{name}:{which}")
    return gaussian_range(key, 0, n * rank, device).view(rank, n).t()


def factor_reference(seed: int, name: str, which: str, n: int, i: int, k: int) -> float:
    """Pure-Python factor[i, k]: the definition `factor` must match bit for bit."""
    return gaussian_reference(stream_key(seed, f"{name}:{which}"), k * n + i)


def factors(seed: int, name: str, shape: Sequence[int], rank: int, device="cpu"):
    out, inp = shape
    return factor(seed, name, "U", out, rank, device), factor(seed, name, "V", inp, rank, device)


def scaled_delta(seed: int, piece, rank: int, coef: float) -> torch.Tensor:
    """coef·z_W restricted to the rows/columns the piece holds: (coef/√r · U_rows) @ V_colsᵀ in float32.
    The scalar goes into the small factor, so the big matrix is written once; train and replay run the
    same call on the same shapes, hence the same bits."""
    U, V = factors(seed, piece.hf_name, piece.hf_shape, rank, piece.view.device)
    r0, c0 = piece.hf_start
    rows, cols = piece.view.shape
    return (U[r0: r0 + rows] * (coef / math.sqrt(rank))) @ V[c0: c0 + cols].t()


def direction(seed: int, piece, rank: int) -> torch.Tensor:
    """z_W restricted to the piece (unit-variance entries)."""
    return scaled_delta(seed, piece, rank, 1.0)


def lora_uses(name: str, tied: bool) -> list[tuple[str, bool]]:
    """(LoRA module path, transposed) of every use of HF matrix `name`: an embedding's adapter is the
    transpose of its U·Vᵀ (a row lookup); a tied embedding is the LM head too."""
    path = name[: -len(".weight")]
    if module(name) != "embed_tokens":
        return [(path, False)]
    return [(path, True)] + ([("lm_head", False)] if tied else [])


def adapter_tensors(seed: int, scale: float, pieces, rank: int, tied: bool = False) -> dict[str, torch.Tensor]:
    """PEFT-named LoRA tensors of θ + scale·z (A = Vᵀ, B = scale·U/√r; an embedding's transposed:
    A = Uᵀ, B = scale·V/√r), full HF shapes (SGLang shards). `tied`: the embedding is the LM head too."""
    out = {}
    for name, shape in dict.fromkeys((p.hf_name, tuple(p.hf_shape)) for p in pieces):
        U, V = factors(seed, name, shape, rank)
        for path, transposed in lora_uses(name, tied):
            a, b = (U, V) if transposed else (V, U)
            out[f"base_model.model.{path}.lora_A.weight"] = a.t().contiguous()
            out[f"base_model.model.{path}.lora_B.weight"] = (b * (scale / math.sqrt(rank))).contiguous()
    return out


def adapter_config(pieces, rank: int, tied: bool = False) -> dict:
    mods = sorted({path.rsplit(".", 1)[-1] for p in pieces for path, _ in lora_uses(p.hf_name, tied)})
    return {"r": rank, "lora_alpha": rank, "target_modules": mods, "peft_type": "LORA",
            "task_type": "CAUSAL_LM", "bias": "none"}


class LowRank:
    """The step's view of the adaptable pieces (perturb/base.py's interface)."""
    name = "lowrank"

    def __init__(self, pieces, rank: int, adapters=None, on_change: Callable[[], None] = lambda: None,
                 replay: bool = False, tied: bool = False):
        self.pieces, frozen = adaptable(pieces)
        if not self.pieces:
            raise ValueError("--perturb lowrank: none of the trainable parameters is a matrix SGLang's LoRA "
                             f"can adapt ({', '.join(TARGETS)}); this model or --trainable leaves nothing")
        self.frozen, self.rank, self.adapters, self.tied = frozen, rank, adapters, tied
        self.on_change, self.replay = on_change, replay
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"--rank must be an integer >= 1, got {rank!r}")
        check_rank(rank, self.pieces)

    def losses_at(self, points: Sequence[tuple[int, float]], loss: Callable[[], float]) -> list[float]:
        """loss() at θ + scale·z(seed) for each (seed, scale) point — all in one batch with adapters."""
        if self.replay:
            return [finite(loss()) for _ in points]
        if self.adapters is not None:
            tensors = [None if sc == 0 else adapter_tensors(s, sc, self.pieces, self.rank, self.tied)
                       for s, sc in points]
            conf = adapter_config(self.pieces, self.rank, self.tied)
            return [finite(v) for v in self.adapters.losses(tensors, conf, loss)]
        return [self._merged(s, sc, loss) for s, sc in points]

    def _merged(self, seed: int, scale: float, loss) -> float:
        """Reference path: W += scale·z_W, loss(), W copied back (bit-exact)."""
        if scale == 0:
            return finite(loss())
        saved = [p.view.clone() for p in self.pieces]
        try:
            for p in self.pieces:
                p.view.add_(scaled_delta(seed, p, self.rank, scale).to(p.view.dtype))
            self.on_change()
            return finite(loss())
        finally:
            for p, s in zip(self.pieces, saved):
                p.view.copy_(s)
            self.on_change()

    def update(self, seed: int, coef: float, decay: float) -> None:
        """θ ← θ − (coef·z_W + decay·θ) on the adaptable matrices, in place."""
        if not (coef or decay):
            return
        for p in self.pieces:
            step = scaled_delta(seed, p, self.rank, coef).to(p.view.dtype)
            if decay:
                step += p.view * decay
            p.view.sub_(step)
        self.on_change()

    def flush(self) -> None:
        pass

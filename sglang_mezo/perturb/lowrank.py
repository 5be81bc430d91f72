"""Low-rank MeZO directions: z_W = U·Vᵀ/√r for each matrix SGLang's LoRA can adapt (EGGROLL, LOZO).

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

Embeddings, norms and lm_head have no LoRA target here: they stay frozen in this mode.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch

from ..backends.lora import LORA_TARGETS as TARGETS
from ..noise import gaussian_range, gaussian_reference, stream_key
from .base import finite

_ADAPTABLE = re.compile(r"\.(%s)\.weight$" % "|".join(TARGETS))


def adaptable(pieces) -> tuple[list, list[str]]:
    """(pieces of matrices a LoRA target covers, sorted HF names of the frozen rest)."""
    keep = [p for p in pieces if _ADAPTABLE.search(p.hf_name) and len(p.hf_shape) == 2]
    frozen = sorted({p.hf_name for p in pieces} - {p.hf_name for p in keep})
    return keep, frozen


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


def adapter_tensors(seed: int, scale: float, pieces, rank: int) -> dict[str, torch.Tensor]:
    """PEFT-named LoRA tensors of θ + scale·z (A = Vᵀ, B = scale·U/√r), full HF shapes (SGLang shards)."""
    out = {}
    for name, shape in dict.fromkeys((p.hf_name, tuple(p.hf_shape)) for p in pieces):
        U, V = factors(seed, name, shape, rank)
        pre = "base_model.model." + name[: -len(".weight")]
        out[pre + ".lora_A.weight"] = V.t().contiguous()
        out[pre + ".lora_B.weight"] = (U * (scale / math.sqrt(rank))).contiguous()
    return out


def adapter_config(pieces, rank: int) -> dict:
    mods = sorted({p.hf_name.split(".")[-2] for p in pieces})
    return {"r": rank, "lora_alpha": rank, "target_modules": mods, "peft_type": "LORA",
            "task_type": "CAUSAL_LM", "bias": "none"}


class LowRank:
    """The step's view of the adaptable pieces (perturb/base.py's interface)."""
    name = "lowrank"

    def __init__(self, pieces, rank: int, adapters=None, on_change: Callable[[], None] = lambda: None,
                 replay: bool = False):
        self.pieces, frozen = adaptable(pieces)
        if not self.pieces:
            raise ValueError("--perturb lowrank: none of the trainable parameters is a matrix SGLang's LoRA "
                             f"can adapt ({', '.join(TARGETS)}); this model or --trainable leaves nothing")
        self.frozen, self.rank, self.adapters = frozen, rank, adapters
        self.on_change, self.replay = on_change, replay
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"--rank must be an integer >= 1, got {rank!r}")

    def losses_at(self, points: Sequence[tuple[int, float]], loss: Callable[[], float]) -> list[float]:
        """loss() at θ + scale·z(seed) for each (seed, scale) point — all in one batch with adapters."""
        if self.replay:
            return [finite(loss()) for _ in points]
        if self.adapters is not None:
            tensors = [None if sc == 0 else adapter_tensors(s, sc, self.pieces, self.rank) for s, sc in points]
            return [finite(v) for v in self.adapters.losses(tensors, adapter_config(self.pieces, self.rank), loss)]
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

"""z(seed, HF parameter name, HF element index): MeZO's Gaussian direction, the same on every device.

Counter-based, never `torch.randn` (whose CUDA stream depends on the GPU model) and never stored:
  key    = first 8 bytes of blake2b(f"{seed}/{name}")                    (Python, once per tensor)
  h      = splitmix64(key + (i // 4 + 1) * GAMMA)                        (uint64, wrap-around)
  u      = 16-bit lane (i % 4) of h                                      (one hash → four draws)
  z[i]   = TABLE[u],  TABLE[u] = Φ⁻¹((u + ½) / 65536), rescaled to unit variance
So z is a 65,536-level quantized N(0, 1) (tails cut at ±4.2): integer ops and a table lookup only — no
transcendental function whose last bit differs between CPU, CUDA and compilers — so every layout
(fused, tied, padded, TP-sharded) and every device draws bit-identical noise for the same HF element.

The in-place ops (`Add`, `Update`) and their torch arithmetic (`apply`) are defined here too;
noise_sweep.py applies them to the weights (C on CPU, Triton on GPU, or this torch code: same bits).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

VERSION = "splitmix64-quantile/1"  # recorded in every trajectory: replays need the same z
GAMMA = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
CHUNK = 1 << 20  # elements per noise chunk: big enough to amortise dispatch, small enough for cache


def _s64(x: int) -> int:
    x &= MASK64
    return x - (1 << 64) if x >> 63 else x


def stream_key(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=8).digest(), "little")


def _table() -> torch.Tensor:
    u = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536
    t = torch.special.ndtri(u)
    return (t / t.pow(2).mean().sqrt()).to(torch.float32)


TABLE = _table()
_tables: dict[torch.device, torch.Tensor] = {}
_consts: dict[torch.device, tuple] = {}


def constants_on(device: torch.device):
    if device not in _tables:
        _tables[device] = TABLE.to(device)
        _consts[device] = tuple(torch.tensor(_s64(c), dtype=torch.int64, device=device)
                                for c in (GAMMA, M1, M2))
    return _tables[device], _consts[device]


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 viewed as uint64."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    x ^= _srl(x, 30)
    x *= m1
    x ^= _srl(x, 27)
    x *= m2
    x ^= _srl(x, 31)
    return x


def gaussian_range(key: int, start: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z for HF flat indices start .. start+n-1 of the tensor with stream `key` (float32, 1-D)."""
    device = torch.device(device)
    table, (gamma, m1, m2) = constants_on(device)
    b0, b1 = start // 4, (start + n - 1) // 4 + 1
    # splitmix64 state for block b: key + (b + 1) * GAMMA  (wraps mod 2^64 in int64)
    x = torch.arange(b0 + 1, b1 + 1, dtype=torch.int64, device=device) * gamma
    x += torch.tensor(_s64(key), dtype=torch.int64, device=device)
    h = _splitmix64(x, m1, m2)
    lanes = torch.stack([h & 0xFFFF, _srl(h, 16) & 0xFFFF, _srl(h, 32) & 0xFFFF, _srl(h, 48)], dim=1)
    off = start - 4 * b0
    return table[lanes.reshape(-1)[off: off + n]]


def gaussian_reference(key: int, index: int) -> float:
    """Pure-Python z for one element: the definition the tensor code must match bit for bit."""
    b, lane = divmod(index, 4)
    x = (key + (b + 1) * GAMMA) & MASK64
    x = ((x ^ (x >> 30)) * M1) & MASK64
    x = ((x ^ (x >> 27)) * M2) & MASK64
    x ^= x >> 31
    return TABLE[(x >> (16 * lane)) & 0xFFFF].item()


@dataclass(frozen=True)
class Add:
    """w += z·scale"""
    scale: float


@dataclass(frozen=True)
class Update:
    """w -= z·coef + w·decay   (MeZO's w ← w − lr·(g·z + wd·w) with coef = lr·g, decay = lr·wd)"""
    coef: float
    decay: float = 0.0


def apply(view: torch.Tensor, z: torch.Tensor, ops: Sequence, decays: bool) -> None:
    # Separate multiply and add (no alpha=, no FMA): each op rounds once, identically on any layout.
    for op in ops:
        if isinstance(op, Add):
            view.add_(z * op.scale)
        else:
            step = z * op.coef
            if op.decay and decays:
                step = step + view * op.decay
            view.sub_(step)


def op_scalars(ops: Sequence) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Per op: kind (0 Add, 1 Update), coefficient and decay — the scalars rounded to float32 exactly as
    torch rounds a Python float multiplied into an fp32 tensor (the fused kernels must match torch)."""
    kinds = [0 if isinstance(o, Add) else 1 for o in ops]
    a = torch.tensor([o.scale if isinstance(o, Add) else o.coef for o in ops], dtype=torch.float32)
    b = torch.tensor([0.0 if isinstance(o, Add) else o.decay for o in ops], dtype=torch.float32)
    return kinds, a, b

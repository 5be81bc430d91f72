"""GPU path of noise_sweep.sweep: one Triton kernel that derives z in registers (same counter hash and
quantile table as noise.py, bit for bit) and applies the in-place ops in a single pass over the weights.

Exactness: fp fusion is disabled at launch (torch rounds z·a and w + t separately); fp32 → bf16/fp16
conversions round to nearest even, like torch. Tested on CPU with TRITON_INTERPRET=1 against the C and
torch paths (tests/test_noise_triton.py); on a GPU by benchmarks/gpu_check.sh.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .noise import constants_on, op_scalars

BLOCK = 1024


@triton.jit
def _round(v, OUT_DTYPE: tl.constexpr):
    """fp32 value as stored in OUT_DTYPE (round to nearest even), still as fp32. bf16 by bit arithmetic,
    so the result does not depend on how a Triton build converts."""
    if OUT_DTYPE == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    elif OUT_DTYPE == tl.float16:
        return v.to(tl.float16).to(tl.float32)
    else:
        return v


@triton.jit
def _op(v, z, a, b, KIND: tl.constexpr, DECAY: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """Add: v + z·a.  Update: v − (z·a + v·b), each product and sum rounded as torch rounds it."""
    t = z * a
    if KIND == 1:
        if DECAY:
            t = t + _round(v * b, OUT_DTYPE)
        return _round(v - t, OUT_DTYPE)
    else:
        return _round(v + t, OUT_DTYPE)


@triton.jit
def _sweep_kernel(w_ptr, n, key, start, table_ptr, a0, b0, a1, b1,
                  NOPS: tl.constexpr, KIND0: tl.constexpr, KIND1: tl.constexpr, DECAY: tl.constexpr,
                  OUT_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = (start + offs).to(tl.uint64)
    x = key + ((idx >> 2) + 1) * 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    u = (x >> ((idx & 3) * 16)) & 0xFFFF
    z = tl.load(table_ptr + u.to(tl.int32), mask=mask, other=0.0)
    v = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = _op(v, z, a0, b0, KIND0, DECAY, OUT_DTYPE)
    if NOPS == 2:
        v = _op(v, z, a1, b1, KIND1, DECAY, OUT_DTYPE)
    if OUT_DTYPE == tl.bfloat16:  # v is already a bf16 value: keep its top half exactly
        v16 = (v.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16)
        tl.store(w_ptr + offs, v16.to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(w_ptr + offs, v.to(OUT_DTYPE), mask=mask)


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def apply(flat: torch.Tensor, key: int, start: int, ops, decays: bool) -> None:
    """flat: contiguous 1-D view (HF indices start..start+n-1). At most two ops per launch."""
    assert len(ops) in (1, 2)
    table = constants_on(flat.device)[0]
    kinds, a, b = op_scalars(ops)
    assert kinds.count(1) <= 1
    a, b = a.tolist(), b.tolist()
    decay = any(bb != 0.0 for bb in b) and decays
    a += [0.0] * (2 - len(a))
    b += [0.0] * (2 - len(b))
    kinds += [0] * (2 - len(kinds))
    n = flat.numel()
    _sweep_kernel[(triton.cdiv(n, BLOCK),)](
        flat, n, key, start, table, a[0], b[0], a[1], b[1], NOPS=len(ops), KIND0=kinds[0], KIND1=kinds[1],
        DECAY=decay, OUT_DTYPE=_TL[flat.dtype], BLOCK=BLOCK, enable_fp_fusion=False)


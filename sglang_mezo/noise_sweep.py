"""`sweep`, the only weight-changing primitive: per chunk it draws z (noise.py) once and applies a list of
in-place ops to the engine's tensor views, so restore + update cost one noise generation. It dispatches to
the C kernel on CPU (noise_native.c, built with gcc on first use), the Triton kernel on CUDA, or the torch
reference; all give the same bits. `sweep_masked` is its Sparse MeZO form (perturb/sparse.py): the torch
reference arithmetic with z zeroed outside each matrix's small-magnitude weights.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Iterable, Sequence

import torch

from .noise import CHUNK, TABLE, apply, gaussian_range, op_scalars, stream_key


def _ranges(p):
    """(contiguous 1-D view, HF flat start index) pairs covering the piece."""
    v = p.view
    if v.is_contiguous() and (v.dim() == 1 or tuple(v.shape[1:]) == tuple(p.hf_shape[1:])):
        row = 1
        for d in p.hf_shape[1:]:
            row *= d
        yield v.view(-1), p.hf_start[0] * row
    else:  # column shard (TP row-parallel): one contiguous range per row
        C = p.hf_shape[1]
        for r in range(v.shape[0]):
            yield v[r], (p.hf_start[0] + r) * C + p.hf_start[1]


def sweep(pieces: Iterable, seed: int, ops: Sequence, chunk: int = CHUNK, impl: str | None = None) -> None:
    """Apply `ops` in place to every piece, with z drawn from (seed, piece.hf_name, HF index).

    impl: "native" (C, CPU only), "triton" (fused GPU kernel), "torch" (any device), or None = the
    fastest that applies (native on CPU, triton on CUDA). All give the same bits.
    """
    impl = impl or os.environ.get("SGLANG_MEZO_NOISE") or "auto"
    for p in pieces:
        key = stream_key(seed, p.hf_name)
        for flat, base in _ranges(p):
            if flat.numel() == 0:
                continue
            if impl in ("auto", "native") and flat.device.type == "cpu" and flat.dtype in _DT \
                    and flat.is_contiguous() and (lib := native_lib(required=impl == "native")) is not None:
                _native_apply(lib, flat, key, base, ops, p.decays)
                continue
            if impl == "triton" or (impl == "auto" and flat.is_cuda and flat.dtype in _DT
                                    and flat.is_contiguous() and _has_triton()):
                from . import noise_triton

                for i in range(0, len(ops), 2):  # the kernel takes up to two ops per pass
                    noise_triton.apply(flat, key, base, ops[i: i + 2], p.decays)
                continue
            for s in range(0, flat.numel(), chunk):
                n = min(chunk, flat.numel() - s)
                apply(flat[s: s + n], gaussian_range(key, base + s, n, flat.device), ops, p.decays)


def sweep_masked(pieces: Iterable, seeded_ops: Sequence[tuple[int, Sequence]], thresholds: dict,
                 chunk: int = CHUNK) -> None:
    """Sparse MeZO's sweep: for each (seed, ops) in order, `ops` applied with z(seed) zeroed wherever
    |w| > thresholds[piece.hf_name], the mask taken per chunk from the weights as they are on entry
    (before any of the ops). The torch reference arithmetic (`apply`) with z·m exact zeros, so each element
    goes through the same operations, in the same order, as sequential `sweep`s of its unmasked z."""
    for p in pieces:
        q = thresholds[p.hf_name]
        keys = [(stream_key(seed, p.hf_name), ops) for seed, ops in seeded_ops]
        for flat, base in _ranges(p):
            for s in range(0, flat.numel(), chunk):
                n = min(chunk, flat.numel() - s)
                part = flat[s: s + n]
                off = part.float().abs() > q          # outside the mask: z is exactly 0 there
                for key, ops in keys:
                    z = gaussian_range(key, base + s, n, flat.device).masked_fill_(off, 0.0)
                    apply(part, z, ops, p.decays)


_DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


_lib = None
_lib_error: str | None = None


def native_lib(required: bool = False):
    """The compiled C sweep (built once per source version into the cache dir), or None if no compiler."""
    global _lib, _lib_error
    if _lib is None and _lib_error is None:
        try:
            _lib = _build_native()
        except Exception as e:  # no gcc / no OpenMP: the torch path gives the same bits, only slower
            _lib_error = str(e)
            warnings.warn(f"sglang_mezo: native noise kernel unavailable, using torch ({e})")
    if _lib is None and required:
        raise RuntimeError(f"native noise kernel unavailable: {_lib_error}")
    return _lib


def _build_native():
    import ctypes
    import subprocess
    import tempfile
    from pathlib import Path

    src = Path(__file__).with_name("noise_native.c")
    code = src.read_bytes()
    # -march=native: the build is only valid on this CPU model, so the CPU's flags are part of the key
    tag = hashlib.blake2b(code + _cpu_flags(), digest_size=6).hexdigest()
    cache = Path(os.environ.get("SGLANG_MEZO_CACHE", Path.home() / ".cache" / "sglang_mezo"))
    so = cache / f"noise_native_{tag}.so"
    if not so.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / so.name
            subprocess.run([os.environ.get("CC", "gcc"), "-O3", "-march=native",
                            "-fopenmp", "-ffp-contract=off", "-fPIC", "-shared", str(src), "-o", str(out)],
                           check=True, capture_output=True)
            os.replace(out, so)
    lib = ctypes.CDLL(str(so))
    c = ctypes
    lib.sweep.argtypes = [c.c_void_p, c.c_int, c.c_int64, c.c_uint64, c.c_int64, c.c_void_p, c.c_int,
                          c.c_void_p, c.c_void_p, c.c_void_p, c.c_int, c.c_int]
    lib.sweep.restype = None
    return lib


def _cpu_flags() -> bytes:
    import platform

    try:
        with open("/proc/cpuinfo", "rb") as f:
            flags = next((l for l in f if l.startswith(b"flags")), b"")
    except OSError:
        flags = b""
    return platform.machine().encode() + flags


def _native_apply(lib, flat: torch.Tensor, key: int, base: int, ops: Sequence, decays: bool) -> None:
    import ctypes

    kind, a, b = op_scalars(ops)
    kinds = (ctypes.c_int * len(ops))(*kind)
    lib.sweep(flat.data_ptr(), _DT[flat.dtype], flat.numel(), key, base, TABLE.data_ptr(), len(ops),
              ctypes.addressof(kinds), a.data_ptr(), b.data_ptr(), int(decays), torch.get_num_threads())

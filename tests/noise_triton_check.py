"""Runs under TRITON_INTERPRET=1 (set before triton is imported): the Triton kernel vs the C and torch
paths, bit for bit. `python tests/noise_triton_check.py` prints JSON."""
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from sglang_mezo import noise, noise_sweep  # noqa: E402
from sglang_mezo.backends.base import Piece  # noqa: E402

OPS = [[noise.Add(1e-3)], [noise.Add(-2e-3)], [noise.Add(1e-3), noise.Update(7.5e-4, 1e-4)], [noise.Update(1e-3)]]
out = {}
for dt in (torch.float32, torch.bfloat16, torch.float16):
    base = (torch.randn(20011, generator=torch.Generator().manual_seed(0)) * 0.05).to(dt)
    res = {}
    for impl in ("torch", "native", "triton"):
        w = base.clone()
        pieces = [Piece("m.layers.0.w.weight", (20014,), w, (3,)), Piece("m.norm.weight", (20014,), w.clone(), (3,))]
        for ops in OPS:
            noise_sweep.sweep(pieces, 9, ops, impl=impl)
        res[impl] = torch.cat([pieces[0].view, pieces[1].view])
    out[str(dt)] = {"triton_vs_torch": int((res["triton"] != res["torch"]).sum()),
                    "triton_vs_native": int((res["triton"] != res["native"]).sum()),
                    "changed": int((res["triton"][: base.numel()] != base).sum())}
print(json.dumps(out))

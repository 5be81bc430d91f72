"""The fused Triton noise kernel draws the same z and rounds the same way as the CPU paths."""
import json

import pytest
import torch

from conftest import run_py


def test_triton_kernel_bit_identical_in_interpreter():
    res = json.loads(run_py(["tests/noise_triton_check.py"]).stdout.strip().splitlines()[-1])
    for dt, r in res.items():
        assert r["triton_vs_torch"] == 0 and r["triton_vs_native"] == 0, (dt, r)
        assert r["changed"] > 10000, (dt, r)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only: compiles the kernel for CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_on_cuda_matches_cpu(dtype):
    from sglang_mezo import noise, noise_sweep
    from sglang_mezo.backends.base import Piece

    base = (torch.randn(3_000_017) * 0.05).to(dtype)
    cpu, gpu = base.clone(), base.clone().cuda()
    for w, impl in ((cpu, "native"), (gpu, "triton")):
        noise_sweep.sweep([Piece("x.weight", (3_000_020,), w, (3,))], 4, [noise.Add(1e-3), noise.Update(1e-4, 1e-5)],
                    impl=impl)
    assert torch.equal(cpu, gpu.cpu())

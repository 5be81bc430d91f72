"""What SGLang 0.5.23 needs to run on a CPU-only machine, in one place.

`install()` must run before the first `import sglang`. On a machine with CUDA it does nothing: the
regular CUDA build of sglang/sgl_kernel/torchvision is used there. On CPU it
  * sets SGLANG_USE_CPU_ENGINE=1 (else rotary embedding imports vllm's CUDA ops);
  * puts `stubs/` first on sys.path *and* PYTHONPATH, so the scheduler processes SGLang spawns see the
    same import-only stand-ins: `sgl_kernel` (SGLang's CPU kernels are not on PyPI; without AMX every
    dense op runs `forward_native`, so no stubbed op is ever called for dense Llama/Qwen2/Mistral — a
    call raises NotImplementedError naming the op) and, only if the real one does not import,
    `torchvision` (PyPI only has CUDA builds; SGLang imports it for multimodal utils);
  * sets HF_HUB_OFFLINE=1 (a local path must never turn into a hub download).
The in-process ModelRunner we train with uses every core; a multi-process `sglang.Engine` on a small CPU
box wants OMP_NUM_THREADS=1 (2 threads beside SGLang's busy processes were 10–30× slower on 2 cores).
"""
from __future__ import annotations

import importlib.util
import os
import sys

STUBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubs")
_done = False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def install() -> bool:
    """Prepare this process (and the processes it spawns) for SGLang on CPU. Returns True if shims are on."""
    global _done
    if _done:
        return STUBS in sys.path
    _done = True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cuda_available():
        return False
    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"
    stub_dirs = [STUBS]
    if _real_torchvision_works():
        # Keep the real torchvision: hide only our sgl_kernel stub by using a dir without torchvision.
        stub_dirs = [os.path.join(STUBS, "_sgl_kernel_only")]
        os.makedirs(stub_dirs[0], exist_ok=True)
        link = os.path.join(stub_dirs[0], "sgl_kernel")
        if not os.path.exists(link):
            os.symlink(os.path.join(STUBS, "sgl_kernel"), link)
    for d in stub_dirs:
        if d not in sys.path:
            sys.path.insert(0, d)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(stub_dirs + [p for p in parts if p not in stub_dirs])
    return True


def _real_torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    import subprocess

    r = subprocess.run([sys.executable, "-c", "import torchvision.transforms"], capture_output=True)
    return r.returncode == 0

"""Write weights as a Hugging Face model folder that transformers and `sglang.launch_server` load."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .backends.layout import checkpoint_files

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_model(base_model: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype, out_dir: str | Path) -> Path:
    """Base checkpoint (cast to `dtype`) with `tensors` (HF name → tensor) replacing its own; config +
    tokenizer copied.

    Written to a temporary sibling and renamed into place, so `out_dir` is either the old or the new
    complete folder, never half of each.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    base = Path(base_model)
    cfg = json.loads((base / "config.json").read_text())
    tied = cfg.get("tie_word_embeddings", False)
    state: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(base_model):
        with safe_open(str(f), framework="pt") as st:
            for n in st.keys():
                t = tensors.get(n)
                if t is None:
                    t = st.get_tensor(n)
                    if t.is_floating_point():
                        t = t.to(dtype)
                state[n] = t.detach().cpu().contiguous()
    if tied and "lm_head.weight" in state and "model.embed_tokens.weight" in tensors:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg["torch_dtype"] = cfg["dtype"] = _DTYPE_NAMES[dtype]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in base.iterdir():  # tokenizer, generation config, chat template, ...
        if f.is_file() and f.suffix not in (".safetensors", ".bin") and f.name not in (
                "config.json", "model.safetensors.index.json"):
            shutil.copy2(f, tmp / f.name)
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir

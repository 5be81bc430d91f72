"""Shared helpers for the benchmarks: timing (min / median of repeats), machine info, JSON results,
tables, the SST-2 batch, and random Llama models of GPU sizes (built where the benchmark runs).

Every benchmark compares things measured in the same process and the same run: the machine is shared,
so absolute times move by ±10 % between runs while ratios measured side by side hold much better.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sglang_mezo import cpu_shims  # noqa: E402

cpu_shims.install()  # before anything imports sglang

import torch  # noqa: E402


# ----------------------------------------------------------------------------------------- timing
def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Wall-clock ms of `fn()`: warm-up calls not counted; min, median and every sample."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summary(samples)


def summary(samples_ms: Sequence[float]) -> dict:
    s = list(samples_ms)
    return {"min_ms": round(min(s), 3), "median_ms": round(statistics.median(s), 3), "n": len(s),
            "samples_ms": [round(x, 3) for x in s]}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict:
    """Time several callables round-robin (A B C A B C ...) so slow phases of a shared machine hit
    all of them alike; returns {name: summary}."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    sync()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            sync()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: summary(v) for k, v in samples.items()}


def ratio(a: dict, b: dict) -> dict:
    """a / b on min and on median."""
    return {"min": round(a["min_ms"] / b["min_ms"], 3), "median": round(a["median_ms"] / b["median_ms"], 3)}


# ------------------------------------------------------------------------------------ machine info
def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except Exception:
        return None


def machine_info() -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for mod in ("sglang", "transformers"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    return info


def write_result(name: str, data: dict, out_dir: str | Path | None = None) -> Path:
    """benchmarks/results/NAME.json (or out_dir/NAME.json), with machine info added; atomic."""
    d = Path(out_dir) if out_dir else RESULTS
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    payload = dict(data)
    payload.setdefault("machine", machine_info())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in cells[1:]])


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 100 else f"{c:.1f}"
    return str(c)


def base_parser(description: str):
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes / few repeats (CI-sized)")
    p.add_argument("--model", default=None, help="HF model folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--llama", default=None, metavar="SIZE",
                   help=f"instead of --model: a random-weight Llama built here, one of {sorted(LLAMA_PRESETS)}")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU, "
                                                  "bfloat16 on CUDA)")
    p.add_argument("--out-dir", default=None, help="where NAME.json goes (default benchmarks/results)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; default on CPU: torch's, or 1 when the machine is already "
                        "busy (1-minute load >= half the cores: 2 threads beside other jobs were 2-8x slower "
                        "and erratic here, 1 thread steady)")
    return p


def setup(args) -> str:
    """Apply --threads, resolve the model folder (building a random Llama if --llama), fill --dtype."""
    args.threads_note = "given" if args.threads else "torch default"
    if args.threads:
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available() and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], machine_info()["usable_cores"] or 1
        if load >= cores / 2 and torch.get_num_threads() > 1:
            torch.set_num_threads(1)
            args.threads_note = f"auto: 1 thread (machine busy: load {load:.1f} on {cores} cores)"
            print(f"[bench] {args.threads_note}; --threads N to override", flush=True)
    args.threads = torch.get_num_threads()
    if args.dtype is None:
        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    if getattr(args, "llama", None):
        return random_llama(args.llama, args.dtype)
    from sglang_mezo.models import resolve_model

    return resolve_model(args.model)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------ data
def sst2(n: int, split: str = "train"):
    from sglang_mezo import tasks

    spec = tasks.get_task("sst2")
    exs = tasks.load_split(spec, split)
    if len(exs) < n:
        raise SystemExit(f"SST-2 {split} has only {len(exs)} examples, {n} asked for")
    return spec, exs[:n]


# --------------------------------------------------------------------- random Llamas of GPU sizes
# (hidden, intermediate, layers, heads, kv_heads, vocab): Qwen2.5-0.5B/Llama-3.2-1B/3B/Llama-3-8B-like.
LLAMA_PRESETS = {
    "tiny": (64, 128, 2, 4, 2, 1000),
    "0.5b": (896, 4864, 24, 14, 2, 32000),
    "1b": (2048, 8192, 16, 32, 8, 32000),
    "3b": (3072, 8192, 28, 24, 8, 32000),
    "8b": (4096, 14336, 32, 32, 8, 32000),
}


def random_llama(size: str, dtype: str = "bfloat16", root: str | None = None) -> str:
    """A random-weight Llama of a preset size with the tiny BPE tokenizer of `make_tiny_llama`
    (SST-2 prompts tokenize byte-level; " terrible"/" great" are single tokens). Weights are drawn on
    the GPU when there is one (fast), saved once as safetensors and reused (keyed by size and dtype)."""
    if size not in LLAMA_PRESETS:
        raise SystemExit(f"--llama {size!r}: choose one of {sorted(LLAMA_PRESETS)}")
    base = Path(root or os.environ.get("SGLANG_MEZO_BENCH_MODELS", "/tmp/sglang_mezo_bench_models"))
    out = base / f"llama-{size}-{dtype}"
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return str(out)
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sglang_mezo.backends.base import hf_dtype
    from tests.tiny_models import make_tiny_llama

    tmp = base / f".build-{size}-{dtype}-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    make_tiny_llama(str(tmp), layers=1)  # tokenizer files (and a throwaway tiny model, overwritten)
    h, inter, layers, heads, kv, vocab = LLAMA_PRESETS[size]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=size == "0.5b")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):  # drawn where it will run, directly in the target dtype
        model = AutoModelForCausalLM.from_config(cfg, dtype=hf_dtype(dtype))
    with torch.no_grad():
        g = torch.Generator(device=dev).manual_seed(0)
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    for f in tmp.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(str(tmp), max_shard_size="4GB")
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    os.replace(tmp, out)
    return str(out)


def probe_sglang() -> int:
    """`python benchmarks/common.py --probe-sglang`: can this machine build an SGLang runner and score?
    (gpu_check.sh runs it once; on failure the benchmarks fall back to --backend hf and say so.)"""
    import tempfile

    from sglang_mezo.backends import make_backend
    from sglang_mezo.backends.base import ScoreRequest
    from tests.tiny_models import make_tiny_llama

    path = make_tiny_llama(tempfile.mkdtemp(prefix="probe-"))
    b = make_backend("sglang", path, "bfloat16" if torch.cuda.is_available() else "float32")
    r = b.score([ScoreRequest([1, 5, 6, 7], next_ids=[8, 9])])
    print("SGLANG_OK", r[0].next_logprobs, getattr(b.runner, "device", "?"), flush=True)
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--probe-sglang"]:
    sys.exit(probe_sglang())

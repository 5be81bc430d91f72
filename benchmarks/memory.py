"""Peak memory (process RSS) of a MeZO step vs plain inference of the same batch, and of the noise path.

    .venv/bin/python benchmarks/memory.py [--quick] [--batch 16] [--steps 3] [--noise-elements 134217728]

Each measurement runs in its own child process (a fresh interpreter; SGLang allows one runner per process,
and a high-water mark must not carry over). A child builds what it needs, then resets the kernel's RSS
high-water mark (`echo 5 > /proc/self/clear_refs`, which resets both VmHWM and getrusage's ru_maxrss) and
runs only the workload, so "workload peak" is the peak RSS while the workload ran and "steady" the RSS just
before it. ru_maxrss over the child's whole life (imports and model loading included) is reported too.
On GPUs the same children report torch.cuda.max_memory_allocated instead of / beside RSS.

  inference         SGLang runner: 2×steps plain forwards of the batch (what a step's forwards are)
  mezo_layerwise    SGLang runner: `steps` MeZO steps, exact layer-wise perturbation (scratch: one layer
                    + the weights outside the layers)
  mezo_inplace      SGLang runner: `steps` MeZO steps, MeZO's in-place +ε/−2ε/+ε
  hf_inference      transformers: 2×steps forwards of MeZO's own classification batch
  mezo_reference    transformers: `steps` steps of MeZO's own code (benchmarks/mezo_reference.py)
  noise_native      one `noise_sweep.sweep` (C kernel) over a tensor of --noise-elements fp32 elements
  noise_torch       the same sweep with the torch implementation (chunks of 2^20 elements)
  noise_mezo        MeZO's perturbation of the same tensor: torch.normal + `.data` rebinding
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure(workload) -> dict:
    import gc

    import torch

    gc.collect()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    steady_kb = _status_kb("VmRSS")
    life_maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_hwm()
    t0 = time.perf_counter()
    extra = workload() or {}
    if cuda:
        torch.cuda.synchronize()
    out = {"steady_rss_mb": steady_kb / 1024, "workload_peak_rss_mb": _status_kb("VmHWM") / 1024,
           "ru_maxrss_after_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "ru_maxrss_before_workload_mb": life_maxrss_before_kb / 1024, "hwm_reset": reset,
           "rss_end_mb": _status_kb("VmRSS") / 1024, "workload_s": round(time.perf_counter() - t0, 2), **extra}
    out["workload_peak_over_steady_mb"] = out["workload_peak_rss_mb"] - out["steady_rss_mb"]
    if cuda:
        out["cuda_before_mb"] = cuda_before / MB
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / MB
        out["cuda_peak_over_before_mb"] = (torch.cuda.max_memory_allocated() - cuda_before) / MB
    return out


# -------------------------------------------------------------------------------------- children
def child(kind: str, a: dict) -> dict:
    sys.path.insert(0, str(HERE))
    import common  # noqa: F401  (cpu shims before sglang)
    import torch

    if a.get("threads"):
        torch.set_num_threads(a["threads"])
    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo import perturb
    from sglang_mezo.backends import make_backend
    from sglang_mezo.mezo import mezo_step
    from sglang_mezo.settings import Settings
    from sglang_mezo.noise import Add
    from sglang_mezo.noise_sweep import sweep

    steps, dtype = a["steps"], a["dtype"]
    if kind.startswith("noise_"):
        dev = common.device()
        n = a["noise_elements"]
        t = torch.zeros(n, dtype=torch.float32, device=dev)  # touched: all pages resident
        t.add_(1.0)
        from sglang_mezo.backends.base import Piece

        piece = Piece("model.layers.0.mlp.up_proj.weight", (n,), t, (0,))
        if kind == "noise_native":
            wl = lambda: sweep([piece], 1, [Add(1e-3)], impl="native" if dev == "cpu" else None)  # noqa: E731
        elif kind == "noise_torch":
            wl = lambda: sweep([piece], 1, [Add(1e-3)], impl="torch")  # noqa: E731
        else:
            holder = torch.nn.Parameter(t, requires_grad=False)
            del t

            def wl():  # trainer.py zo_perturb_parameters, one tensor
                torch.manual_seed(1)
                z = torch.normal(mean=0, std=1, size=holder.data.size(), device=holder.data.device,
                                 dtype=holder.data.dtype)
                holder.data = holder.data + 1 * z * 1e-3
        r = _measure(wl)
        r["tensor_mb"] = n * 4 / MB
        return r

    spec, exs = common.sst2(a["batch"])
    model_path = a["model"]
    if kind in ("inference", "mezo_layerwise", "mezo_inplace"):
        backend = make_backend(a["backend"], model_path, dtype)
        enc = objectives.encode(exs, backend.tokenizer, spec.single_token_labels)
        pieces = backend.pieces
        largest = max(p.view.numel() * p.view.element_size() for p in pieces)
        total = sum(p.view.numel() * p.view.element_size() for p in pieces)
        backend.score(enc.requests)  # first forward outside the measurement: lazy allocations done
        if kind == "inference":
            def wl():
                for _ in range(2 * steps):
                    objectives.ce(objectives.candidate_scores(backend, enc), enc.labels)
        else:
            mode = kind.split("_", 1)[1]
            weights = perturb.make(mode, pieces, backend)
            loss = lambda: objectives.ce(objectives.candidate_scores(backend, enc), enc.labels)  # noqa: E731
            cfg = Settings(lr=1e-6, eps=1e-3)

            def wl():
                for s in range(steps):
                    mezo_step(weights, loss, [s + 1], cfg)
        r = _measure(wl)
        r.update(largest_tensor_mb=largest / MB, weights_mb=total / MB)
        if kind == "mezo_layerwise":
            r["layerwise_scratch_mb"] = sum(b.numel() * b.element_size() for b in weights._scratch.values()) / MB
        return r

    # transformers: MeZO's own code and plain inference of MeZO's own batch
    import numpy as np
    from transformers import AutoModelForCausalLM

    from mezo_reference import MeZOArgs, MeZOReference, classification_inputs
    from sglang_mezo.backends.base import hf_dtype
    from transformers import AutoTokenizer

    dev = common.device()
    tok = AutoTokenizer.from_pretrained(model_path)
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=hf_dtype(dtype)).to(dev).eval()
    inputs = classification_inputs(exs, tok, dev)
    ref = MeZOReference(hf, MeZOArgs(zo_eps=1e-3, learning_rate=1e-6))
    ref.zo_forward(hf, inputs)
    largest = max(p.numel() * p.element_size() for p in hf.parameters())
    if kind == "hf_inference":
        def wl():
            for _ in range(2 * steps):
                ref.zo_forward(hf, inputs)
    else:
        np.random.seed(0)

        def wl():
            for _ in range(steps):
                ref.step(hf, inputs)
    r = _measure(wl)
    r.update(largest_tensor_mb=largest / MB, weights_mb=sum(p.numel() * p.element_size() for p in hf.parameters()) / MB)
    return r


def run_child(kind: str, a: dict, timeout: int = 900) -> dict:
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-args", json.dumps(a)],
                       capture_output=True, text=True, timeout=timeout)
    lines = [l for l in p.stdout.splitlines() if l.startswith("@@RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"child {kind} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("@@RESULT "):])


def main():
    sys.path.insert(0, str(HERE))
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        kind = sys.argv[i + 1]
        a = json.loads(sys.argv[sys.argv.index("--child-args") + 1])
        print("@@RESULT " + json.dumps(child(kind, a)), flush=True)
        return
    import common
    from common import base_parser, machine_info, setup, table, write_result

    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="MeZO steps per child (default 2; --quick 1)")
    p.add_argument("--backend", default="sglang", choices=["sglang", "hf"])
    p.add_argument("--noise-elements", type=int, default=None,
                   help="elements of the noise tensor (default 134,217,728 ≈ the embedded model; --quick 2^25)")
    p.add_argument("--only", default=None, help="comma list of children to run (default: all)")
    p.add_argument("--skip-reference", action="store_true", help="skip the transformers children")
    args = p.parse_args()
    steps = args.steps or (1 if args.quick else 2)
    noise_n = args.noise_elements or ((1 << 25) if args.quick else (1 << 27))
    model_path = setup(args)
    start_info = machine_info()
    a = {"model": model_path, "dtype": args.dtype, "batch": args.batch, "steps": steps, "backend": args.backend,
         "noise_elements": noise_n, "threads": args.threads}
    kinds = ["inference", "mezo_layerwise", "mezo_inplace", "hf_inference", "mezo_reference",
             "noise_native", "noise_torch", "noise_mezo"]
    if args.skip_reference:
        kinds = [k for k in kinds if k not in ("hf_inference", "mezo_reference")]
    if args.only:
        kinds = [k for k in kinds if k in args.only.split(",")]
    print(f"model {model_path} ({args.dtype}), batch {args.batch}, {steps} steps per child, noise tensor "
          f"{noise_n:,} elements, {args.threads} threads ({args.threads_note})", flush=True)
    res = {}
    for k in kinds:
        res[k] = run_child(k, a)
        print(f"  {k}: workload peak {res[k]['workload_peak_rss_mb']:.1f} MB RSS "
              f"(steady {res[k]['steady_rss_mb']:.1f}, life ru_maxrss {res[k]['ru_maxrss_after_mb']:.1f})", flush=True)

    # on a GPU the weights live in device memory: compare torch.cuda peaks there, RSS on CPU
    peak = "cuda_peak_mb" if any("cuda_peak_mb" in r for r in res.values()) else "workload_peak_rss_mb"
    verdict = {"metric": peak}
    if "inference" in res:
        inf = res["inference"]
        for k in ("mezo_layerwise", "mezo_inplace"):
            if k in res:
                extra = res[k][peak] - inf[peak]
                verdict[k] = {"peak_over_inference_mb": round(extra, 1),
                              "largest_tensor_mb": round(inf["largest_tensor_mb"], 1),
                              "within_inference_plus_largest_tensor": extra <= inf["largest_tensor_mb"]}
    if "hf_inference" in res and "mezo_reference" in res:
        verdict["mezo_reference"] = {"peak_over_hf_inference_mb": round(
            res["mezo_reference"][peak] - res["hf_inference"][peak], 1),
            "largest_tensor_mb": round(res["hf_inference"]["largest_tensor_mb"], 1)}
    for k in ("noise_native", "noise_torch", "noise_mezo"):
        if k in res:
            over = res[k]["cuda_peak_over_before_mb"] if peak == "cuda_peak_mb" else res[k]["workload_peak_over_steady_mb"]
            verdict[k] = {"peak_over_steady_mb": round(over, 1), "tensor_mb": round(res[k]["tensor_mb"], 1)}

    rows = []
    for k, r in res.items():
        rows.append([k, r["steady_rss_mb"], r["workload_peak_rss_mb"], r["workload_peak_over_steady_mb"],
                     r["ru_maxrss_after_mb"], r.get("largest_tensor_mb", r.get("tensor_mb", ""))]
                    + ([r.get("cuda_before_mb", ""), r.get("cuda_peak_mb", "")] if peak == "cuda_peak_mb" else []))
    print(table(rows, ["child", "steady MB", "workload peak MB", "peak - steady", "life ru_maxrss MB",
                       "largest tensor MB"] + (["cuda before MB", "cuda peak MB"] if peak == "cuda_peak_mb" else [])))
    print(table([[k, json.dumps(v)] for k, v in verdict.items() if k != "metric"], [f"comparison ({peak})", "result"]))
    path = write_result("memory", {
        "benchmark": "memory", "model": model_path, "dtype": args.dtype, "backend": args.backend,
        "batch": args.batch, "steps": steps, "noise_elements": noise_n, "threads": args.threads,
        "threads_note": args.threads_note, "children": res, "verdict": verdict,
        "notes": "RSS in MiB. Each child is a fresh process; the RSS high-water mark is reset right before "
                 "the workload (clear_refs 5), so 'workload peak' excludes import/model-load transients; "
                 "'life ru_maxrss' includes them. MeZO-step extra = workload peak(mezo) - workload peak"
                 "(inference). Goal: extra <= the largest single weight tensor.",
        "machine_start": start_info}, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

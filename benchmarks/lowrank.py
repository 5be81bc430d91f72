"""Low-rank perturbations through SGLang's multi-LoRA: what 2n adapters in one batch cost.

    .venv/bin/python benchmarks/lowrank.py [--quick] [--batch 16] [--repeats 5] [--ns 1,4,8] [--ranks 1,4,16]

(a) throughput: the same batch (B SST-2 prompts, each repeated 2n times) with every copy under its own
    rank-r adapter vs with no adapter, one forward each, same engine, timed round-robin → ratio
    no-adapter ms / adapter ms (1.0 = adapters are free; goal ≥ 0.8 at n = 8 on CPU torch_native).
    Also: the same 2n·B evaluations the full-rank way (2n forwards of B, layer-wise ±εz) against the
    one batched adapter forward, and the per-step costs beside the forward: building + loading +
    unloading the 2n adapters, and the in-place update (low-rank U·Vᵀ vs full-rank noise sweep).
Writes benchmarks/results/lowrank.json (section "throughput") and lowrank.md.
"""
from __future__ import annotations

import common  # noqa: F401  (path + cpu shims before sglang)

import json
from pathlib import Path

import torch

from common import RESULTS, base_parser, interleaved, machine_info, ratio, setup, sst2, table, timeit, write_result


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; --quick 2)")
    p.add_argument("--ns", default="1,4,8", help="directions per forward (2n adapters)")
    p.add_argument("--ranks", default="4", help="adapter ranks to time at every n")
    p.add_argument("--lora-backend", default=None,
                   help="SGLang LoRA backend (default: torch_native on CPU, triton on CUDA; also csgmv, triton_v2)")
    args = p.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    ns = [int(x) for x in args.ns.split(",")]
    ranks = [int(x) for x in args.ranks.split(",")]
    model_path = setup(args)
    start = machine_info()

    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo import perturb
    from sglang_mezo.perturb import lowrank
    from sglang_mezo.backends import make_backend
    from sglang_mezo.perturb.lowrank import adapter_config, adapter_tensors

    B = 4 if args.quick else args.batch
    max_n = max(ns)
    backend = make_backend("sglang", model_path, args.dtype, max_total_tokens=32768,
                           lora={"max_lora_rank": max(ranks), "max_loras_per_batch": 2 * max_n,
                                 **({"lora_backend": args.lora_backend} if args.lora_backend else {})})
    spec, exs = sst2(B)
    enc = objectives.encode(exs, backend.tokenizer, spec.single_token_labels)
    reqs = enc.requests
    pieces, frozen = lowrank.adaptable(backend.pieces)
    print(f"model {model_path}, B={B}, {len(pieces)} adapted matrices, {repeats} repeats, "
          f"{torch.get_num_threads()} threads ({args.threads_note})", flush=True)
    from sglang.srt.lora.lora_registry import LoRARef

    rows, out = [], {"batch": B, "prompt_tokens": sum(len(r.ids) for r in reqs), "rows": []}
    layerwise = perturb.make("layerwise", backend.pieces, backend)
    for r in ranks:
        for n in ns:
            k = 2 * n
            cfg = adapter_config(pieces, r)
            refs = []
            t_build = timeit(lambda: [adapter_tensors(s, 1e-3 * sg, pieces, r) for s in range(n) for sg in (1, -1)],
                             repeats=1, warmup=0)
            for s in range(n):
                for sg in (1, -1):
                    ref = LoRARef(lora_name=f"b{r}-{s}-{sg}", lora_path=f"bench/{r}/{s}/{sg}", pinned=False)
                    res = backend.runner.load_lora_adapter_from_tensors(ref, adapter_tensors(s, 1e-3 * sg, pieces, r), cfg)
                    assert res.success, res.error_message
                    refs.append(ref)
            ids = [ref.lora_id for ref in refs for _ in reqs]
            big = [q for _ in refs for q in reqs]
            with torch.no_grad():
                t = interleaved({"no_adapter": lambda: backend._score_with(big, [None] * len(big)),
                                 "adapters": lambda: backend._score_with(big, ids)}, repeats=repeats)
            # the full-rank way to the same 2n·B evaluations: 2n forwards of B with layer-wise ±εz
            full = timeit(lambda: layerwise.losses(0, [1e-3, -1e-3] * n, lambda: backend.score(reqs) and 0.0),
                          repeats=max(1, repeats // 2))
            t_load = timeit(lambda: [backend.runner.unload_lora_adapter(x) for x in refs] and
                            [backend.runner.load_lora_adapter_from_tensors(x, adapter_tensors(0, 1e-3, pieces, r), cfg)
                             for x in refs], repeats=1, warmup=0)
            for ref in refs:
                backend.runner.unload_lora_adapter(ref)
            row = {"rank": r, "n": n, "adapters": k, "requests": len(big), "no_adapter": t["no_adapter"],
                   "adapters_ms": t["adapters"], "throughput_ratio": ratio(t["no_adapter"], t["adapters"]),
                   "fullrank_2n_forwards": full, "batched_vs_fullrank_speedup": ratio(full, t["adapters"]),
                   "build_adapters_ms": t_build["median_ms"], "unload_reload_ms": t_load["median_ms"]}
            out["rows"].append(row)
            rows.append([r, n, k, len(big), t["no_adapter"]["median_ms"], t["adapters"]["median_ms"],
                         row["throughput_ratio"]["median"], full["median_ms"], row["batched_vs_fullrank_speedup"]["median"],
                         t_build["median_ms"], t_load["median_ms"]])
            print(json.dumps(row), flush=True)
    # the update: low-rank in place vs a full-rank sweep, per step
    w = {r: perturb.make("lowrank", pieces, backend, rank=r) for r in ranks}
    upd = {f"lowrank_r{r}": (lambda r=r: w[r].update(1, 0.0 + 1e-12, 0.0)) for r in ranks}
    upd["fullrank_sweep"] = lambda: layerwise.update(1, 1e-12, 0.0)
    tu = interleaved(upd, repeats=max(2, repeats // 2))
    out["update_ms"] = {k: v["median_ms"] for k, v in tu.items()}
    out["frozen_tensors"] = len(frozen)
    out["lora_backend"] = backend.runner.lora_manager.lora_backend.__class__.__name__
    headers = ["rank", "n", "adapters", "requests", "no-adapter ms", "adapters ms", "throughput ratio",
               "full-rank 2n fwd ms", "batched speedup", "build ms", "unload+load ms"]
    md = table(rows, headers)
    out["machine_start"] = start
    path = write_result("lowrank", {"throughput": out, **_other_sections(args.out_dir)}, args.out_dir)
    note = ("\n\nUpdate per step (ms, median): " + ", ".join(f"{k} {v:.0f}" for k, v in out["update_ms"].items()) +
            f"\n\nmodel {model_path}, B = {B} SST-2 prompts repeated per adapter, float32, "
            f"{args.threads} threads; commit {start['git_commit']}, load {start['loadavg_1_5_15']}\n")
    _write_md(args.out_dir, "throughput", "## (a) A batch carrying 2n adapters vs the same batch with none\n\n" + md + note)
    print(md + note)
    print(path)


def _other_sections(out_dir=None) -> dict:
    """Keep the other sections (learning) of an existing lowrank.json."""
    try:
        old = json.loads((Path(out_dir or RESULTS) / "lowrank.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in old.items() if k not in ("throughput", "machine")}


def _write_md(out_dir, section: str, text: str) -> None:
    """benchmarks/results/lowrank.md holds one block per section, replaced in place."""
    path = Path(out_dir or RESULTS) / "lowrank.md"
    blocks = {}
    if path.exists():
        cur = None
        for line in path.read_text().splitlines(keepends=True):
            if line.startswith("<!-- section "):
                cur = line.split()[2]
                blocks[cur] = ""
            elif cur:
                blocks[cur] += line
    blocks[section] = text + "\n"
    path.write_text("# Low-rank perturbations through SGLang's multi-LoRA (benchmarks/lowrank.py, "
                    "benchmarks/lowrank_learning.py)\n\n" +
                    "".join(f"<!-- section {k} -->\n{v}" for k, v in sorted(blocks.items())))


if __name__ == "__main__":
    main()

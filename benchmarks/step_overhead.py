"""One MeZO step vs two plain forward passes of the same batch through the same engine.

    .venv/bin/python benchmarks/step_overhead.py [--quick] [--batch 16[,64]] [--repeats 7] [--backend sglang]

A two-point MeZO step is, at best, two forwards. Everything else is overhead, broken down here:
  noise      the noise sweeps of `sglang_mezo.noise_sweep.sweep` over all pieces, as the step runs them:
             layerwise: +εz, −εz (one full sweep each, layer by layer) and the update sweep;
             inplace:   +εz, −2εz, then restore and update fused (one sweep with two ops)
  scratch    layerwise only: each layer (and the outside weights) copied to scratch and back, per forward
  objective  turning the engine's log-probs into candidate scores and the CE loss, per forward
  python     the remainder (hooks, batch building, dispatch, bookkeeping)
The step and the two forwards are timed round-robin in one process; the components separately after.
The noise/scratch costs do not depend on the batch; the forwards do, so the ratio falls as batches grow.
"""
from __future__ import annotations

import common  # noqa: F401  (path + cpu shims before sglang)

import torch

from common import (base_parser, interleaved, machine_info, ratio, setup, sst2, table, timeit,
                    write_result)


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", default="16", help="prompts per batch; a comma list runs several (e.g. 16,64)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7; --quick 3)")
    p.add_argument("--backend", default="sglang", choices=["sglang", "hf"])
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-6, help="nonzero so the update sweep is part of the step")
    args = p.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    batches = [int(b) for b in str(args.batch).split(",")]
    model_path = setup(args)
    start_info = machine_info()

    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo import perturb
    from sglang_mezo.backends import make_backend
    from sglang_mezo.mezo import mezo_step
    from sglang_mezo.settings import Settings
    from sglang_mezo.noise import Add, Update
    from sglang_mezo.noise_sweep import sweep

    backend = make_backend(args.backend, model_path, args.dtype)
    pieces = backend.pieces
    n_params = sum(p.view.numel() for p in pieces)
    cfg = Settings(lr=args.lr, eps=args.eps)
    weights = {m: perturb.make(m, pieces, backend) for m in ("layerwise", "inplace")}
    print(f"model {model_path} ({n_params / 1e6:.1f} M params, {args.dtype}), backend {args.backend}, "
          f"{repeats} repeats, {torch.get_num_threads()} threads ({args.threads_note})")

    # ---- components that do not depend on the batch (each timed as the step uses it)
    eps = args.eps
    sign = [1.0]

    def one_sweep():  # one Add sweep over every piece (alternating sign: the weights stay put)
        sign[0] = -sign[0]
        sweep(pieces, 7, [Add(sign[0] * eps)])

    def fused_sweep():  # inplace's restore + update: one sweep, two ops
        sweep(pieces, 7, [Add(0.0), Update(0.0)])

    def update_sweep():  # layerwise's update
        sweep(pieces, 7, [Update(0.0)])

    lw = weights["layerwise"]

    def scratch_roundtrip():  # what Layerwise._at copies, once per forward
        for group, tag in [(lw.outside, "forward")] + [(ps, "window") for _, ps in lw.windows]:
            with lw._saved(group, tag):
                pass

    comp = interleaved({"sweep_add": one_sweep, "sweep_restore_update": fused_sweep,
                        "sweep_update": update_sweep, "scratch_roundtrip": scratch_roundtrip},
                       repeats=repeats, warmup=1)
    noise_ms = {"layerwise": 2 * comp["sweep_add"]["median_ms"] + comp["sweep_update"]["median_ms"],
                "inplace": 2 * comp["sweep_add"]["median_ms"] + comp["sweep_restore_update"]["median_ms"]}
    scratch_ms = {"layerwise": 2 * comp["scratch_roundtrip"]["median_ms"], "inplace": 0.0}

    per_batch, rows = {}, []
    seed = [1000]
    for B in batches:
        spec, exs = sst2(B)
        enc = objectives.encode(exs, backend.tokenizer, spec.single_token_labels)
        n_tokens = sum(len(r.ids) for r in enc.requests)

        def loss():
            return objectives.ce(objectives.candidate_scores(backend, enc), enc.labels)

        def two_forwards():
            backend.score(enc.requests)
            backend.score(enc.requests)

        def step(mode):
            def run():
                seed[0] += 1
                mezo_step(weights[mode], loss, [seed[0]], cfg)
            return run

        main_t = interleaved({"two_forwards": two_forwards, "step_layerwise": step("layerwise"),
                              "step_inplace": step("inplace")}, repeats=repeats, warmup=1)
        res = backend.score(enc.requests)
        obj_t = timeit(lambda: objectives.ce(objectives.scores(res, enc), enc.labels),
                       repeats=max(repeats, 5), warmup=1)
        fwd = main_t["two_forwards"]
        breakdown, ratios = {}, {}
        for mode in ("layerwise", "inplace"):
            st = main_t[f"step_{mode}"]
            obj = 2 * obj_t["median_ms"]
            rest = st["median_ms"] - fwd["median_ms"] - noise_ms[mode] - scratch_ms[mode] - obj
            breakdown[mode] = {"step_ms": st["median_ms"], "two_forwards_ms": fwd["median_ms"],
                               "noise_ms": round(noise_ms[mode], 2), "scratch_ms": round(scratch_ms[mode], 2),
                               "objective_ms": round(obj, 3), "python_remainder_ms": round(rest, 2)}
            ratios[mode] = ratio(st, fwd)
            rows.append([B, n_tokens, mode, st["min_ms"], st["median_ms"], fwd["min_ms"], fwd["median_ms"],
                         ratios[mode]["min"], ratios[mode]["median"], noise_ms[mode], scratch_ms[mode], obj, rest])
        per_batch[str(B)] = {"batch": B, "tokens": n_tokens, "timings": main_t, "objective": obj_t,
                             "ratio_step_over_two_forwards": ratios, "breakdown_median_ms": breakdown}

    print(table(rows, ["batch", "tokens", "mode", "step min", "step med", "2 fwd min", "2 fwd med",
                       "ratio min", "ratio med", "noise", "scratch", "objective", "python rest"]))
    print("batch-independent components (ms):")
    print(table([[k, v["min_ms"], v["median_ms"]] for k, v in comp.items()], ["component", "min", "median"]))
    first = per_batch[str(batches[0])]
    path = write_result("step_overhead", {
        "benchmark": "step_overhead", "model": model_path, "dtype": args.dtype, "backend": args.backend,
        "n_params": n_params, "repeats": repeats, "threads": args.threads, "threads_note": args.threads_note,
        "eps": eps, "lr": args.lr, "goal_ratio": 1.25,
        "batch": first["batch"], "ratio_step_over_two_forwards": first["ratio_step_over_two_forwards"],
        "components": comp, "per_batch": per_batch,
        "notes": "ratio = step / two plain forwards (backend.score twice), min over min and median over "
                 "median, timed round-robin. noise = 2 Add sweeps + the update sweep (layerwise) or the "
                 "fused restore+update sweep (inplace); scratch = 2 copy-to-scratch-and-back round trips "
                 "(layerwise); objective = candidate scores + CE, twice; python = step - 2 forwards - the "
                 "rest (medians; can be negative within noise).",
        "machine_start": start_info}, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

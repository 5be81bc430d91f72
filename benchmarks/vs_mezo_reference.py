"""Step time: MeZO's own step (benchmarks/mezo_reference.py, a faithful copy of large_models' zo_step +
zo_update on transformers) vs sglang_mezo's step on the SGLang engine — same model, dtype, batch, data.

    .venv/bin/python benchmarks/vs_mezo_reference.py [--quick] [--batch 16] [--repeats 5]

MeZO's step: 4 regenerations of z with torch.normal over every parameter (+1, −2, +1, update), each
rebinding param.data to a new tensor, and 2 forwards of B×(number of candidates) left-padded sequences with
full-vocabulary log-softmax (train_as_classification). Ours: sglang_mezo.mezo.mezo_step on the SGLang
ModelRunner (layerwise and inplace), the objective `ce` over the candidates' next-token log-probs of B
packed prompts. With single-token label words both compute the same loss; the script checks that the two
losses agree at the unperturbed weights before timing.
"""
from __future__ import annotations

import common  # noqa: F401

import numpy as np
import torch

from common import base_parser, interleaved, machine_info, ratio, setup, sst2, table, write_result
from mezo_reference import MeZOArgs, MeZOReference, classification_inputs


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; --quick 2)")
    p.add_argument("--backend", default="sglang", choices=["sglang", "hf"], help="our engine")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-6)
    args = p.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    model_path = setup(args)
    start_info = machine_info()

    from transformers import AutoModelForCausalLM

    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo import perturb
    from sglang_mezo.backends import make_backend
    from sglang_mezo.backends.base import hf_dtype
    from sglang_mezo.mezo import mezo_step
    from sglang_mezo.settings import Settings

    ours = make_backend(args.backend, model_path, args.dtype)
    dev = common.device()
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=hf_dtype(args.dtype)).to(dev).eval()
    spec, exs = sst2(args.batch)
    enc = objectives.encode(exs, ours.tokenizer, spec.single_token_labels)
    ref_inputs = classification_inputs(exs, ours.tokenizer, dev)
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"model {model_path} ({n_params / 1e6:.1f} M params, {args.dtype}), ours: {args.backend}, "
          f"batch {args.batch}: ours {sum(len(r.ids) for r in enc.requests)} packed tokens, MeZO "
          f"{tuple(ref_inputs['input_ids'].shape)} padded; {repeats} repeats, {torch.get_num_threads()} threads "
          f"({args.threads_note})")

    def our_loss():
        return objectives.ce(objectives.candidate_scores(ours, enc), enc.labels)

    ref = MeZOReference(hf, MeZOArgs(zo_eps=args.eps, learning_rate=args.lr))
    loss_ours0, loss_ref0 = our_loss(), float(ref.zo_forward(hf, ref_inputs))
    print(f"loss at the unperturbed weights: ours {loss_ours0:.6f}, MeZO's {loss_ref0:.6f}")

    np.random.seed(0)  # MeZO draws each step's seed from NumPy's global generator
    cfg = Settings(lr=args.lr, eps=args.eps)
    weights = {m: perturb.make(m, ours.pieces, ours) for m in ("layerwise", "inplace")}
    seed = [0]

    def our_step(mode):
        def run():
            seed[0] += 1
            mezo_step(weights[mode], our_loss, [seed[0]], cfg)
        return run

    main_t = interleaved({"mezo_reference_step": lambda: ref.step(hf, ref_inputs),
                          "ours_layerwise": our_step("layerwise"), "ours_inplace": our_step("inplace")},
                         repeats=repeats, warmup=1)

    # where MeZO's step goes: one perturbation sweep (seed + torch.normal + rebinding per param) x 4,
    # one forward x 2
    ref.named_parameters_to_optim = [(n, p) for n, p in hf.named_parameters() if p.requires_grad]
    flip = [1]

    def ref_sweep():
        flip[0] = -flip[0]
        ref.zo_perturb_parameters(random_seed=123, scaling_factor=flip[0])

    parts = interleaved({"mezo_perturb_sweep": ref_sweep, "mezo_forward": lambda: ref.zo_forward(hf, ref_inputs),
                         "ours_forward": lambda: ours.score(enc.requests)}, repeats=repeats, warmup=1)

    rows = []
    ratios = {}
    for mode in ("layerwise", "inplace"):
        r = ratio(main_t["mezo_reference_step"], main_t[f"ours_{mode}"])
        ratios[mode] = r
        rows.append([f"ours ({mode})", main_t[f"ours_{mode}"]["min_ms"], main_t[f"ours_{mode}"]["median_ms"],
                     r["min"], r["median"]])
    rows.insert(0, ["MeZO reference", main_t["mezo_reference_step"]["min_ms"],
                    main_t["mezo_reference_step"]["median_ms"], 1.0, 1.0])
    print(table(rows, ["step", "min ms", "median ms", "MeZO/this (min)", "MeZO/this (median)"]))
    ps, mf = parts["mezo_perturb_sweep"]["median_ms"], parts["mezo_forward"]["median_ms"]
    print(table([["MeZO: 4 perturbation sweeps", 4 * ps], ["MeZO: 2 forwards", 2 * mf],
                 ["ours: 2 forwards (engine)", 2 * parts["ours_forward"]["median_ms"]]],
                ["part (medians)", "ms"]))
    path = write_result("vs_mezo_reference", {
        "benchmark": "vs_mezo_reference", "model": model_path, "dtype": args.dtype, "backend": args.backend,
        "n_params": n_params, "batch": args.batch, "repeats": repeats, "threads": args.threads,
        "threads_note": args.threads_note, "eps": args.eps, "lr": args.lr,
        "ours_tokens_packed": sum(len(r.ids) for r in enc.requests),
        "mezo_input_shape": list(ref_inputs["input_ids"].shape),
        "loss_at_start": {"ours": loss_ours0, "mezo": loss_ref0, "abs_diff": abs(loss_ours0 - loss_ref0)},
        "timings": main_t, "parts": parts,
        "speedup_mezo_over_ours": ratios, "goal_speedup": 3.0,
        "mezo_breakdown_median_ms": {"perturb_sweeps_x4": 4 * ps, "forwards_x2": 2 * mf,
                                     "remainder": main_t["mezo_reference_step"]["median_ms"] - 4 * ps - 2 * mf},
        "notes": "speedup = MeZO reference step time / our step time (min/min, median/median), timed "
                 "round-robin in one process. The reference is benchmarks/mezo_reference.py.",
        "machine_start": start_info}, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

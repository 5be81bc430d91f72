"""Weight drift after K perturb/restore cycles with lr = 0: how many elements differ from the start.

    .venv/bin/python benchmarks/drift.py [--quick] [--cycles 1000] [--batch 4] [--layers 2]

Real MeZO steps with a real loss and lr = 0 (so the only thing that can change a weight is the
perturbation's round trip), on the transformers backend and a tiny random Llama (make_tiny_llama), per dtype:
  ours      sglang_mezo layerwise: mezo_step with the exact layer-wise perturbation (forward hooks + scratch)
  ours_inplace  sglang_mezo's in-place mode (MeZO's +ε/−2ε/+ε, with our counter-based noise)
  mezo      MeZO's own code (benchmarks/mezo_reference.py: torch.manual_seed + torch.normal per parameter,
            `.data` rebinding, +1/−2/+1, then zo_update — with lr = 0 it subtracts lr·(g·z) = 0 exactly)
Every cycle runs both forward passes (CE over SST-2 label words) and, for the in-place methods, the
restore. The count is over every trainable element (bitwise inequality of the stored values).
"""
from __future__ import annotations

import common  # noqa: F401

import tempfile
import time

import numpy as np

from common import base_parser, machine_info, sst2, table, write_result
from mezo_reference import MeZOArgs, MeZOReference, classification_inputs

DTYPES = ("float32", "bfloat16", "float16")


def _changed(before: dict, params) -> tuple[int, float]:
    n, num, den = 0, 0.0, 0.0
    for name, t in params:
        b = before[name]
        n += int((t.view(-1) != b.view(-1)).sum())  # NaN != NaN counts as changed too
        num += float((t.double() - b.double()).pow(2).sum())
        den += float(b.double().pow(2).sum())
    return n, (num / den) ** 0.5 if den else 0.0


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=None, help="K (default 1000; --quick 100)")
    p.add_argument("--batch", type=int, default=2, help="SST-2 prompts per forward")
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the tiny Llama")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--dtypes", default=",".join(DTYPES))
    args = p.parse_args()
    K = args.cycles or (100 if args.quick else 1000)
    from common import setup

    args.dtype = args.dtype or "float32"  # unused: every dtype in --dtypes runs
    if args.model is None and args.llama is None:
        from tests.tiny_models import make_tiny_llama

        model_path = make_tiny_llama(tempfile.mkdtemp(prefix="drift-tiny-"), layers=args.layers)
        setup(args)
        model_desc = f"make_tiny_llama(layers={args.layers}) (random weights, hidden 64, vocab 1000)"
    else:
        model_path = setup(args)
        model_desc = model_path
    start_info = machine_info()

    from transformers import AutoModelForCausalLM

    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo import perturb
    from sglang_mezo.backends import make_backend
    from sglang_mezo.backends.base import hf_dtype
    from sglang_mezo.mezo import mezo_step
    from sglang_mezo.settings import Settings

    spec, exs = sst2(args.batch)
    checkpoints = sorted({1, 10, 100, K} & set(range(1, K + 1)))
    cfg = Settings(lr=0.0, eps=args.eps)
    out = {"ours": {}, "mezo": {}, "ours_inplace": {}}
    detail, rows = {}, []
    total_elems = None
    for dt in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        for method in ("ours", "ours_inplace", "mezo"):
            t0 = time.perf_counter()
            if method == "mezo":
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(model_path)
                dev = common.device()
                model = AutoModelForCausalLM.from_pretrained(model_path, dtype=hf_dtype(dt)).to(dev).eval()
                inputs = classification_inputs(exs, tok, dev)
                ref = MeZOReference(model, MeZOArgs(zo_eps=args.eps, learning_rate=0.0))
                params = lambda: [(n, q.data) for n, q in model.named_parameters()]  # noqa: E731  (rebound!)
                np.random.seed(0)
                cycle = lambda k: ref.step(model, inputs)  # noqa: E731
            else:
                backend = make_backend("hf", model_path, dt)
                enc = objectives.encode(exs, backend.tokenizer, spec.single_token_labels)
                weights = perturb.make("layerwise" if method == "ours" else "inplace", backend.pieces, backend)
                loss = lambda: objectives.ce(objectives.candidate_scores(backend, enc), enc.labels)  # noqa: E731
                params = lambda: [(q.hf_name, q.view) for q in backend.pieces]  # noqa: E731
                cycle = lambda k: mezo_step(weights, loss, [k], cfg, k)  # noqa: E731
            before = {n: t.detach().clone() for n, t in params()}
            n_el = sum(t.numel() for t in before.values())
            total_elems = n_el
            track, losses = {}, []
            for k in range(1, K + 1):
                r = cycle(k)
                if k in checkpoints:
                    common.sync()
                    track[k] = _changed(before, params())
                if k == 1:
                    losses.append(r.loss_plus[0] if hasattr(r, "loss_plus") else r[0])
            n_changed, rel = track[K]
            out[method][dt] = n_changed
            detail.setdefault(method, {})[dt] = {
                "changed": n_changed, "elements": n_el, "fraction": n_changed / n_el,
                "relative_l2_drift": rel, "changed_at": {str(k): v[0] for k, v in track.items()},
                "seconds": round(time.perf_counter() - t0, 1), "first_loss_plus": losses[0] if losses else None}
            rows.append([dt, method, n_changed, n_el, f"{100 * n_changed / n_el:.2f} %", f"{rel:.2e}",
                         " ".join(f"{k}:{v[0]}" for k, v in track.items()), f"{time.perf_counter() - t0:.0f}s"])
            print(f"  {dt:9s} {method:13s} changed {n_changed}/{n_el} after {K} cycles "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    print(table(rows, ["dtype", "method", f"changed after {K}", "elements", "fraction", "rel. L2 drift",
                       "changed after k cycles", "time"]))
    path = write_result("drift", {
        "cycles": K, "ours": out["ours"], "mezo": out["mezo"], "ours_inplace": out["ours_inplace"],
        "elements": total_elems, "model": model_desc, "backend": "hf", "batch": args.batch, "eps": args.eps,
        "lr": 0.0, "detail": detail, "threads": args.threads, "threads_note": args.threads_note,
        "notes": "ours = sglang_mezo layerwise mode; ours_inplace = sglang_mezo inplace mode; mezo = MeZO's "
                 "zo_step + zo_update (benchmarks/mezo_reference.py). Each cycle = one full step with both "
                 "forward passes and lr = 0. 'changed' counts elements whose stored value differs from the "
                 "start (bitwise, over all trainable tensors).",
        "machine_start": start_info}, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

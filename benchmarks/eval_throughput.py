"""Evaluation throughput: sglang_mezo's batched engine scoring vs MeZO's one-example-at-a-time evaluation.

    .venv/bin/python benchmarks/eval_throughput.py [--quick] [--n 128] [--repeats 3] [--batch-size 64]

  ours (sglang)     objectives.evaluate on the SGLang ModelRunner: all candidates of `batch_size` examples
                    in one packed prefill, next-token log-probs at the last position
  ours (hf)         the same objectives.evaluate on the transformers backend (right-padded batches): shows
                    how much comes from batching alone and how much from the engine
  MeZO              large_models/run.py Framework.evaluate (benchmarks/mezo_reference.py): per example, one
                    [1, L] forward per candidate with full logits and log-softmax
All on SST-2 test examples, same model and dtype, one process; the script also checks that the
predictions agree.
"""
from __future__ import annotations

import common  # noqa: F401

import torch

from common import base_parser, machine_info, setup, sst2, table, write_result
from mezo_reference import evaluate_one_at_a_time


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="SST-2 test examples (default 128; --quick 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; --quick 1)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per engine batch (ours)")
    p.add_argument("--backend", default="sglang", choices=["sglang", "hf"], help="our engine")
    p.add_argument("--no-hf-batched", action="store_true", help="skip the batched-transformers row")
    args = p.parse_args()
    n = args.n or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    model_path = setup(args)
    start_info = machine_info()

    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo.backends import make_backend

    ours = make_backend(args.backend, model_path, args.dtype)
    # one transformers model serves MeZO's evaluation and (batched) the `hf` row
    hf_backend = ours if args.backend == "hf" else make_backend("hf", model_path, args.dtype)
    hf, dev = hf_backend.model, hf_backend.device
    if args.no_hf_batched or args.backend == "hf":
        hf_backend = None
    spec, exs = sst2(n, "test")
    print(f"model {model_path} ({args.dtype}), {n} SST-2 test examples, {repeats} repeats, "
          f"{torch.get_num_threads()} threads ({args.threads_note})")

    runs = {f"ours_{args.backend}": lambda: objectives.evaluate(ours, exs, spec.single_token_labels, args.batch_size),
            "mezo_one_at_a_time": lambda: evaluate_one_at_a_time(hf, ours.tokenizer, exs, dev)}
    if hf_backend is not None:
        runs["ours_hf_batched"] = lambda: objectives.evaluate(hf_backend, exs, spec.single_token_labels,
                                                              args.batch_size)
    import time

    results, samples = {}, {k: [] for k in runs}
    for k, f in runs.items():  # warm-up (first forward of each path)
        f() if k != "mezo_one_at_a_time" else evaluate_one_at_a_time(hf, ours.tokenizer, exs[:2], dev)
    for _ in range(repeats):
        for k, f in runs.items():
            common.sync()
            t0 = time.perf_counter()
            results[k] = f()
            common.sync()
            samples[k].append(time.perf_counter() - t0)

    base = f"ours_{args.backend}"
    summ = {}
    for k, s in samples.items():
        summ[k] = {"min_s": round(min(s), 3), "median_s": round(sorted(s)[len(s) // 2], 3), "samples_s": s,
                   "examples_per_s_best": round(n / min(s), 2),
                   "examples_per_s_median": round(n / sorted(s)[len(s) // 2], 2),
                   "accuracy": results[k]["accuracy"]}
    mezo = summ["mezo_one_at_a_time"]
    speed = {k: {"min": round(mezo["min_s"] / v["min_s"], 2), "median": round(mezo["median_s"] / v["median_s"], 2)}
             for k, v in summ.items()}
    # prediction agreement with MeZO's evaluation
    enc_preds = []
    for i in range(0, n, args.batch_size):
        chunk = exs[i: i + args.batch_size]
        s = objectives.candidate_scores(ours, objectives.encode(chunk, ours.tokenizer, spec.single_token_labels))
        enc_preds += s.argmax(1).tolist()
    agree = sum(a == b for a, b in zip(enc_preds, results["mezo_one_at_a_time"]["predictions"])) / n

    print(table([[k, v["min_s"], v["median_s"], v["examples_per_s_best"], v["examples_per_s_median"],
                  speed[k]["min"], speed[k]["median"], v["accuracy"]] for k, v in summ.items()],
                ["evaluation", "min s", "median s", "ex/s (best)", "ex/s (median)", "x MeZO (min)",
                 "x MeZO (median)", "accuracy"]))
    print(f"predictions equal to MeZO's evaluation on {agree * 100:.1f} % of examples")
    path = write_result("eval_throughput", {
        "benchmark": "eval_throughput", "model": model_path, "dtype": args.dtype, "backend": args.backend,
        "n_examples": n, "batch_size": args.batch_size, "repeats": repeats, "threads": args.threads,
        "threads_note": args.threads_note, "results": summ,
        "speedup_over_mezo": speed, "speedup": speed[base], "goal_speedup": 10.0,
        "prediction_agreement_with_mezo": agree,
        "notes": "speedup = MeZO evaluation time / this evaluation time (min/min, median/median).",
        "machine_start": start_info}, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

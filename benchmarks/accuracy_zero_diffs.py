"""How often is the SPSA difference of the accuracy objective exactly 0? (issue: objectives)

On a batch of B, −accuracy moves in steps of 1/B, so L+ − L− is often exactly 0 and the step does
nothing. Measured on the embedded SmolLM2-135M, SST-2 train batches, sglang backend, lr = 0 (weights
never change; exact layer-wise perturbation), for several batch sizes and eps; also what n-SPSA buys:
the chance that all n queries of a step are zero.

    .venv/bin/python benchmarks/accuracy_zero_diffs.py [--queries 40] [--batches 8,16,32,64] [--eps 1e-3,1e-2]
"""
import argparse
import json
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--batches", default="8,16,32,64")
    ap.add_argument("--eps", default="1e-3,1e-2")
    args = ap.parse_args()
    from sglang_mezo import cpu_shims
    from sglang_mezo import perturb

    cpu_shims.install()
    from sglang_mezo import tasks
    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo.backends import make_backend
    from sglang_mezo.models import embedded_default_model

    backend = make_backend("sglang", embedded_default_model())
    weights = perturb.make("layerwise", backend.pieces, backend)
    train = tasks.load_split(tasks.get_task("sst2"), "train")
    rng = random.Random(0)
    rows = []
    for eps in [float(e) for e in args.eps.split(",")]:
        for B in [int(b) for b in args.batches.split(",")]:
            zeros, diffs, t0 = 0, [], time.time()
            for q in range(args.queries):
                ex = rng.sample(train, B)
                enc = objectives.encode(ex, backend.tokenizer)
                loss = lambda: objectives.neg_accuracy(objectives.candidate_scores(backend, enc), enc.labels)  # noqa
                lp, lm = weights.losses(rng.getrandbits(32), [eps, -eps], loss)
                diffs.append(lp - lm)
                zeros += lp == lm
            p0 = zeros / args.queries
            rows.append({"eps": eps, "batch": B, "queries": args.queries, "zero_fraction": p0,
                         "all_zero_n2": p0 ** 2, "all_zero_n4": p0 ** 4,
                         "mean_abs_diff": sum(abs(d) for d in diffs) / len(diffs), "wall_s": time.time() - t0})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'eps':>7} {'batch':>5} {'P(diff=0)':>10} {'n=2: all 0':>11} {'n=4: all 0':>11}")
    for r in rows:
        print(f"{r['eps']:7.0e} {r['batch']:5d} {r['zero_fraction']:10.2f} {r['all_zero_n2']:11.2f} {r['all_zero_n4']:11.2f}")
    out = ROOT / "benchmarks" / "results" / "accuracy_zero_diffs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep rows of other (eps, batch) settings measured by earlier invocations
        new = {(r["eps"], r["batch"]) for r in rows}
        rows = [r for r in json.loads(out.read_text())["rows"] if (r["eps"], r["batch"]) not in new] + rows
        rows.sort(key=lambda r: (r["eps"], r["batch"]))
    from common import machine_info  # host, versions, git commit of this run

    commit = machine_info()["git_commit"]
    rows = [r if "git_commit" in r else {**r, "git_commit": commit} for r in rows]
    out.write_text(json.dumps({"model": "SmolLM2-135M-Instruct (embedded)", "task": "sst2 train batches",
                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Generation: our batched generation on the SGLang ModelRunner vs transformers `generate` one example at a
time (as MeZO's SQuAD code runs it), and the time split of one MeZO step on a generation objective.

    .venv/bin/python benchmarks/generation_throughput.py [--quick] [--n 32] [--repeats 2] [--batch 16]

throughput   SQuAD test prompts (MeZO's template), greedy, ≤16 new tokens, stop at newline; examples/s of
             both, timed round-robin in one process, and the generated tokens compared (must be equal)
step split   one MeZO step with the f1 objective on a batch of SQuAD train prompts (no LM watch): the
             two batched generations, the reward, and the rest = the perturbation sweeps (+ update),
             for both perturbation modes (inplace: 4 sweeps per step; layerwise: every layer is
             perturbed and restored around each of its forwards, i.e. once per generated token)
"""
from __future__ import annotations

import common  # noqa: F401

import time

from common import base_parser, interleaved, machine_info, ratio, setup, table, write_result


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="test prompts for throughput (default 32; --quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 2; --quick 1)")
    p.add_argument("--batch", type=int, default=16, help="MeZO step batch")
    args = p.parse_args()
    n = args.n or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 2)
    model_path = setup(args)
    start = machine_info()

    from sglang_mezo.objectives import generation as ro
    from sglang_mezo import perturb
    from sglang_mezo import rewards, tasks
    from sglang_mezo.backends import make_backend
    from sglang_mezo.mezo import mezo_step
    from sglang_mezo.settings import Settings

    spec = tasks.get_task("squad")
    test = tasks.subsample(tasks.load_split(spec, "test"), n, 42)
    train = tasks.subsample(tasks.load_split(spec, "train"), args.batch, 42)
    gen = {"max_new_tokens": spec.max_new_tokens, "stop": list(spec.stop)}
    sgl = make_backend("sglang", model_path, args.dtype)
    hf = make_backend("hf", model_path, args.dtype)
    prompts = [e.prompt for e in test]

    outs = {}
    fns = {"ours (sglang, batched)": lambda: outs.__setitem__("sglang", sgl.generate(prompts, **gen)),
           "hf generate, one at a time": lambda: outs.__setitem__("hf", hf.generate(prompts, **gen))}
    t = interleaved(fns, repeats=repeats, warmup=0)
    same = [a.token_ids == b.token_ids for a, b in zip(outs["sglang"], outs["hf"])]
    eps = {k: n / (v["median_ms"] / 1e3) for k, v in t.items()}
    thr = {"n": n, "timings": t, "examples_per_s": eps,
           "speedup": ratio(t["hf generate, one at a time"], t["ours (sglang, batched)"]),
           "same_tokens": sum(same), "new_tokens_total": sum(len(g.token_ids) for g in outs["sglang"]),
           "f1": sum(rewards.f1(g.text, e.answers) for g, e in zip(outs["sglang"], test)) / n}
    print(table([[k, f"{v:.2f}"] for k, v in eps.items()], ["generation", "examples/s"]))
    print(f"speedup {thr['speedup']}, identical outputs {sum(same)}/{n}")
    del hf

    # --- step split: f1 objective, greedy, no LM watch
    batch = ro.encode(train, sgl.tokenizer)
    fn = rewards.get_reward("f1")
    split = {}
    for mode in ("inplace", "layerwise"):
        weights = perturb.make(mode, sgl.pieces, sgl)
        rows = []
        for r in range(repeats):
            m = ro.Measure(sgl, batch, "f1", "f1", fn, gen, seed=r, watch=False)
            t0 = time.perf_counter()
            mezo_step(weights, m, [1000 + r], Settings(lr=0.0, eps=1e-2))  # lr 0: the model stays put
            dt = time.perf_counter() - t0
            s = m.summary()
            rows.append({"step_s": dt, "generations_s": s["generate_s"], "reward_s": s["reward_s"],
                         "sweeps_and_rest_s": dt - s["generate_s"] - s["reward_s"]})
        split[mode] = {k: min(r[k] for r in rows) for k in rows[0]}
    # the same two generations without MeZO: what layer-wise perturbation adds inside the forwards
    t_plain = []
    for r in range(repeats):
        t0 = time.perf_counter()
        sgl.generate(batch.prompt_ids, seed=r, **gen)
        sgl.generate(batch.prompt_ids, seed=r, **gen)
        t_plain.append(time.perf_counter() - t0)
    split["two_plain_generations_s"] = min(t_plain)
    print(table([[m, *(f"{v:.2f}" for v in s.values())] for m, s in split.items() if isinstance(s, dict)],
                ["perturb", "step s", "2 generations s", "reward s", "sweeps + rest s"]))
    print(f"two plain generations (no perturbation): {split['two_plain_generations_s']:.2f} s")
    write_result("generation_throughput", {
        "what": __doc__, "model": model_path, "dtype": args.dtype, "threads": args.threads,
        "threads_note": args.threads_note, "throughput": thr,
        "step_split": {"batch": args.batch, "objective": "f1", "watch": False, **split},
        "machine_at_start": start})


if __name__ == "__main__":
    main()

"""Learning per forward pass: which rule gets furthest on SST-2 for a fixed number of forward passes.

    .venv/bin/python benchmarks/learning_per_forward.py [--budget 200] [--seeds 13,21,42] [--methods ...]
        [--parallel 2] [--work DIR]

Every run is `sglang-mezo train` (SST-2, k = 16 per class, ce, B = 16, the embedded SmolLM2-135M, float32)
in its own process, one thread, pinned to its own core. The budget is counted in forward batches of B
sequences: a step of two-point MeZO costs 2, n-SPSA 2n, FZOO n + 1 (L0 and n perturbed points), and a
low-rank step the same sequences (its 2n adapters ride in one engine batch, so it makes fewer engine calls
for the same compute: `engine_calls` says how many). Every method gets the same budget, hence fewer steps
when a step costs more.

lr is chosen per method on dev: each lr of the method's grid runs on data seed 13; the lr whose run reached
the best dev accuracy (ties: the later dev curve's mean, then the smaller lr) runs the other seeds. eps is
1e-3 for all (MeZO's). Test = the full 872-sentence SST-2 test set, model = the best dev step (`--keep best`).

Results: benchmarks/results/learning_per_forward.json (every run, resumable: a finished run is not rerun),
.md (the table, written after every run) and .png (mean dev accuracy against forward passes).
"""
from __future__ import annotations

import common  # noqa: F401  (path + cpu shims)

import fcntl
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from common import RESULTS, ROOT, machine_info

B = 16
LR_MEZO = (2e-5, 5e-5)      # MeZO-scaled rules: g = ΔL / 2ε is the directional derivative
LR_FZOO = (5e-4, 2e-3)      # FZOO's g = ΔL / σ is O(1): the lr carries the gradient's scale
# name -> (train flags, forward batches of B per step, lr grid, what it is)
METHODS = {
    "mezo": ([], 2, LR_MEZO, "MeZO two-point (reference)"),
    "nspsa4": (["--n-queries", "4"], 8, LR_MEZO, "n-SPSA, n = 4 directions averaged"),
    "fzoo4": (["--estimator", "fzoo", "--n-queries", "4"], 5, LR_FZOO, "FZOO, n = 4 one-sided, step / σ"),
    "sparse75": (["--sparsity", "0.75"], 2, LR_MEZO, "Sparse MeZO: z on the 75 % smallest-magnitude weights of each matrix"),
    "lowrank4": (["--perturb", "lowrank", "--rank", "4", "--lowrank-targets", "projections"], 2, LR_MEZO,
                 "low-rank r = 4, projections only"),
    "lowrank4_all": (["--perturb", "lowrank", "--rank", "4", "--lowrank-targets", "all"], 2, LR_MEZO,
                     "low-rank r = 4, every matrix (+ embedding / lm_head)"),
    "lowrank4_fzoo8": (["--perturb", "lowrank", "--rank", "4", "--lowrank-targets", "projections", "--estimator",
                        "fzoo", "--n-queries", "8"], 9, LR_FZOO,
                       "low-rank r = 4 FZOO (projections), 8 directions in one engine batch"),
}
REFERENCE = "mezo"
OUT = RESULTS / "learning_per_forward.json"
_lock = threading.Lock()


def load() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {"runs": {}, "lr": {}}


@contextmanager
def shared():
    """The results file, read and written under a file lock: two invocations (say, methods added later)
    may run at once and each adds its runs."""
    with open(OUT.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def save(res: dict) -> None:
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(OUT)


def key(method: str, lr: float, seed: int) -> str:
    return f"{method}|{lr:g}|{seed}"


def run_one(method: str, lr: float, seed: int, budget: int, n_test: int, work: Path, core: int,
            code: Path = ROOT) -> dict:
    flags, per_step, _, _ = METHODS[method]
    steps = max(1, budget // per_step)
    out = work / f"{method}_lr{lr:g}_s{seed}"
    cmd = [sys.executable, "-m", "sglang_mezo", "train", "--task", "sst2", "--k-shot", "16", "--seed", str(seed),
           "--objective", "ce", "--batch-size", str(B), "--lr", str(lr), "--eps", "1e-3", "--steps", str(steps),
           "--eval-every", str(max(1, steps // 6)), "--n-test", str(n_test), "--progress-off", "--out", str(out),
           "--overwrite", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    t0 = time.time()
    done = finished(out, lr, seed, steps, per_step)
    if done is None:
        pr = subprocess.run(["taskset", "-c", str(core), *cmd], cwd=code, capture_output=True, text=True, env=env)
        if pr.returncode != 0:
            return {"error": (pr.stderr or pr.stdout)[-1500:], "cmd": " ".join(cmd)}
        done = finished(out, lr, seed, steps, per_step)
    zero, test, best_step, dev = done
    return {"method": method, "lr": lr, "seed": seed, "steps": steps, "forwards": steps * per_step,
            "engine_calls": steps * (1 if "lowrank" in method else per_step),
            "zero_shot_test": zero, "test": test, "best_step": best_step,
            "best_dev": dict((s_ // per_step, a) for s_, a in dev)[best_step],
            "dev_curve": dev, "minutes": round((time.time() - t0) / 60, 2)}


def finished(out: Path, lr: float, seed: int, steps: int, per_step: int):
    """(zero-shot test, test at the best dev step, best step, dev curve) of a run folder that finished with
    these settings, else None (a run killed with its driver is picked up, not rerun)."""
    try:
        cfg = json.loads((out / "config.json").read_text())
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return None
    if (cfg.get("lr"), cfg.get("seed"), cfg.get("steps")) != (lr, seed, steps):
        return None
    zero = next((m["accuracy"] for m in lines if m.get("split") == "test" and m.get("zero_shot")), None)
    final = next((m for m in lines if m.get("split") == "test" and "best_step" in m), None)
    if zero is None or final is None:
        return None
    dev = [[m["step"] * per_step, m["accuracy"]] for m in lines if m.get("split") == "dev"]
    return zero, final["accuracy"], final["best_step"], dev


def chosen_lr(res: dict, method: str, grid_seed: int) -> float | None:
    runs = [r for r in res["runs"].values() if r.get("method") == method and r.get("seed") == grid_seed
            and "error" not in r]
    if len(runs) < len(METHODS[method][2]):
        return None
    best = max(runs, key=lambda r: (r["best_dev"], statistics.mean(a for _, a in r["dev_curve"][1:] or [[0, 0]]),
                                    -r["lr"]))
    return best["lr"]


def reach(curve: list, target: float) -> int | None:
    """Forward batches at the first dev evaluation at or above `target` (None: never within the budget)."""
    return next((f for f, a in curve if a >= target - 1e-9), None)


def table(res: dict, seeds: list[int]) -> tuple[str, dict]:
    rows, summ = [], {}
    ref_final = {r["seed"]: r["dev_curve"][-1][1] for r in res["runs"].values()
                 if r.get("method") == REFERENCE and r["lr"] == res.get("lr", {}).get(REFERENCE)}
    for m, (_, per_step, grid, what) in METHODS.items():
        grid = res.get("grid", {}).get(m, grid)   # a narrower grid an invocation ran (--lrs)
        lr = res.get("lr", {}).get(m)
        runs = [r for r in res["runs"].values() if r.get("method") == m and r["lr"] == lr and r["seed"] in seeds]
        if lr is None or not runs:
            continue
        tests = [r["test"] for r in runs]
        to_ref = [reach(r["dev_curve"], ref_final[r["seed"]]) for r in runs if r["seed"] in ref_final]
        s = {"lr": lr, "grid": list(grid), "seeds": [r["seed"] for r in runs], "test": tests,
             "test_mean": statistics.mean(tests), "test_std": statistics.pstdev(tests) if len(tests) > 1 else 0.0,
             "best_dev_mean": statistics.mean(r["best_dev"] for r in runs),
             "zero_shot_mean": statistics.mean(r["zero_shot_test"] for r in runs),
             "forwards": runs[0]["forwards"], "steps": runs[0]["steps"], "engine_calls": runs[0]["engine_calls"],
             "forwards_to_reference_final_dev": to_ref}
        summ[m] = s
        reached = ", ".join("—" if x is None else str(x) for x in to_ref) or "n/a"
        rows.append(f"| {m} | {what} | {lr:g} ({', '.join(f'{g:g}' for g in grid)}) | {len(runs)} | "
                    f"{s['steps']} | {s['forwards']} | {s['engine_calls']} | {s['zero_shot_mean']:.3f} | "
                    f"**{s['test_mean']:.3f} ± {s['test_std']:.3f}** | {' / '.join(f'{t:.3f}' for t in tests)} | "
                    f"{s['best_dev_mean']:.3f} | {reached} |")
    head = ("| method | rule | lr (grid) | seeds | steps | forward batches | engine calls | zero-shot test | "
            "test mean ± std | test per seed | best dev mean | forwards to MeZO's final dev |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(rows), summ


def report(res: dict, args) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    md, summ = table(res, seeds)
    res["summary"] = summ
    save(res)
    grid = "\n".join(f"| {r['method']} | {r['lr']:g} | {r['seed']} | {r['best_dev']:.3f} | {r['test']:.3f} | "
                     f"{r['minutes']} |" for r in sorted(res["runs"].values(), key=lambda r: (r.get("method", ""),
                                                                                              r.get("seed", 0),
                                                                                              r.get("lr", 0)))
                     if "error" not in r)
    errors = [f"- {k}: {r['error'][-300:]!r}" for k, r in res["runs"].items() if "error" in r]
    text = (f"# Learning per forward pass (benchmarks/learning_per_forward.py)\n\n"
            f"SST-2, k = 16 per class, data seeds {args.seeds}, ce, B = {B}, eps 1e-3, budget {args.budget} forward "
            f"batches of {B} sequences per run, test = all {args.n_test} test sentences at the best dev step "
            f"(dev = 32 sentences, every ~1/6 of the run), the embedded SmolLM2-135M float32, one thread per run. "
            f"lr chosen per method on dev (seed {seeds[0]}) from its grid. Commits: "
            f"{sorted({r.get('commit', res['commit']) for r in res['runs'].values()})}, {res['machine']}.\n\n{md}\n\n"
            "forwards to MeZO's final dev: per seed, the forward batches at the first dev evaluation that reached "
            "MeZO two-point's final dev accuracy on that seed (— : not within the budget).\n\n"
            "## Every run\n\n| method | lr | seed | best dev | test | minutes |\n|---|---|---|---|---|---|\n"
            f"{grid}\n" + ("\n## Failed runs\n\n" + "\n".join(errors) + "\n" if errors else ""))
    OUT.with_suffix(".md").write_text(text)
    plot(res, seeds)


def plot(res: dict, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in METHODS:
        lr = res.get("lr", {}).get(m)
        runs = [r for r in res["runs"].values() if r.get("method") == m and r["lr"] == lr and r["seed"] in seeds]
        if not runs:
            continue
        n = min(len(r["dev_curve"]) for r in runs)
        xs = [runs[0]["dev_curve"][i][0] for i in range(n)]
        ys = [statistics.mean(r["dev_curve"][i][1] for r in runs) for i in range(n)]
        ax.plot(xs, ys, marker="o", label=f"{m} (lr {lr:g}, {len(runs)} seeds)")
    ax.set_xlabel(f"forward batches of {B} sequences")
    ax.set_ylabel("dev accuracy (mean over seeds)")
    ax.set_title("SST-2 k=16, SmolLM2-135M: dev accuracy against forward passes")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=110)


def main():
    global OUT
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=200, help="forward batches of B sequences per run")
    p.add_argument("--seeds", default="13,21,42", help="data seeds; the first one chooses lr")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    p.add_argument("--n-test", type=int, default=872)
    p.add_argument("--parallel", type=int, default=2, help="runs at once, one core each")
    p.add_argument("--cores", default="", help="the cores runs are pinned to, e.g. 0,1 (default: 0 … parallel-1)")
    p.add_argument("--work", default="/tmp/learning_per_forward", help="run folders (models: not kept in git)")
    p.add_argument("--lrs", default="", help="this invocation's lr grid for its methods, e.g. 2e-5 (default: "
                   "each method's own)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--code", default=str(ROOT), help="the checkout whose `sglang-mezo train` runs (its commit "
                   "is recorded with each run)")
    p.add_argument("--results", default=str(OUT), help="results .json (the .md and .png go beside it)")
    args = p.parse_args()
    OUT = Path(args.results)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            p.error(f"--methods: unknown {m!r} (have {list(METHODS)})")
    if args.lrs:  # a narrower grid (say, the runs that fit the time left): the table reports it as the grid
        for m in methods:
            METHODS[m] = (*METHODS[m][:2], tuple(float(x) for x in args.lrs.split(",")), METHODS[m][3])
    work = Path(args.work)
    code = Path(args.code).resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True,
                            text=True).stdout.strip()
    info = machine_info()
    machine = f"{info['usable_cores']} cores ({info['processor']}), torch {info['torch']}"
    with shared():
        res = load()
        res.setdefault("commit", commit)
        res["machine"] = machine
        if args.report_only:
            report(res, args)
            return
    cores = [int(c) for c in args.cores.split(",")] if args.cores else list(range(args.parallel))

    def job(m, lr, seed):
        core = cores.pop()
        try:
            r = run_one(m, lr, seed, args.budget, args.n_test, work, core, code)
        finally:
            cores.append(core)
        with _lock, shared():
            res.update(load())
            res["runs"][key(m, lr, seed)] = {**r, "commit": commit}
            if args.lrs:
                res.setdefault("grid", {})[m] = list(METHODS[m][2])
            lr_m = chosen_lr(res, m, seeds[0])
            if lr_m is not None:
                res["lr"][m] = lr_m
            report(res, args)
            print(json.dumps({k: r.get(k) for k in ("method", "lr", "seed", "test", "best_dev", "minutes",
                                                    "error")}), flush=True)
        return r

    with ThreadPoolExecutor(args.parallel) as ex:
        # stage 1: every lr of every method on the first seed; stage 2: the chosen lr on the other seeds
        futs = [ex.submit(job, m, lr, seeds[0]) for m in methods for lr in METHODS[m][2]
                if key(m, lr, seeds[0]) not in res["runs"] or "error" in res["runs"][key(m, lr, seeds[0])]]
        pending = {m: [s for s in seeds[1:]] for m in methods}
        later = []
        while futs or any(pending.values()):
            for m in methods:
                lr = chosen_lr(res, m, seeds[0])
                if lr is not None and pending[m]:
                    for s in pending[m]:
                        k = key(m, lr, s)
                        if k not in res["runs"] or "error" in res["runs"][k]:
                            later.append(ex.submit(job, m, lr, s))
                    pending[m] = []
            futs = [f for f in futs if not f.done()]
            if not futs and any(pending.values()):  # a method whose grid failed: its seeds cannot run
                break
            time.sleep(5 if futs else 0)
        for f in later:
            f.result()
    with shared():
        res.update(load())
        report(res, args)


if __name__ == "__main__":
    main()

"""The measured result of issue "Optimise what the engine generates": the embedded SmolLM2-135M on SQuAD
v1.1 (CPU) — zero-shot vs MeZO with `lm` (teacher-forced NLL of the answer) vs MeZO with `f1` (reward
on greedy generations), the same steps (= the same number of objective evaluations, two per step),
each final model evaluated on the same 1,000 test questions (official dev set, drawn with seed 42).
Runs the CLI commands below (resumable: finished parts are read back) and writes
benchmarks/results/generation.{json,md} and generation_curves.png.

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/squad_generation.py [--steps 50] [--jobs 2] &
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs"
COMMON = ["--task", "squad", "--k-shot", "0", "--n-train", "1000", "--n-dev", "50", "--n-test", "20",
          "--seed", "42", "--batch-size", "8", "--perturb", "inplace", "--eval-batch-size", "25"]
OBJECTIVES = {"lm": ["--objective", "lm", "--lr", "1e-5", "--eps", "1e-3"],
              "f1": ["--objective", "f1", "--lr", "1e-4", "--eps", "1e-2"]}


def run(cmd: list[str], env, log: Path) -> dict:
    line = " ".join(shlex.quote(c) for c in cmd)
    print("$", line, flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    if p.returncode:
        sys.exit(f"failed ({log}):\n{log.read_text()[-3000:]}")
    out = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    out["wall_s"] = round(time.time() - t0, 1)
    out["command"] = "sglang-mezo " + " ".join(cmd[3:])
    return out


def cached(path: Path, fn):
    if path.exists():
        return json.loads(path.read_text())
    res = fn()
    path.write_text(json.dumps(res, indent=1))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each 1 thread)")
    ap.add_argument("--only", default=None, help="comma list of lm,f1,zero_shot (the table needs all three)")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="runs stopped early: evaluate each trajectory replayed up to this step")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    exe = [sys.executable, "-m", "sglang_mezo"]
    RUNS.mkdir(exist_ok=True)
    work = RUNS / "squad_gen"
    work.mkdir(exist_ok=True)

    def train(name):
        out = work / name
        if args.stop_at:  # the run was stopped after S steps: its model is the trajectory replayed to S
            steps = len((out / "trajectory.jsonl").read_text().splitlines()) - 1
            if steps < args.stop_at:
                sys.exit(f"{out}: {steps} steps recorded, --stop-at {args.stop_at}")
            return cached(work / f"{name}.replay.json", lambda: {**run(
                exe + ["replay", "--trajectory", str(out / "trajectory.jsonl"), "--upto", str(args.stop_at),
                       "--out", str(out / f"model_step{args.stop_at}")], env, work / f"{name}.replay.log"),
                "best_step": args.stop_at})
        return cached(work / f"{name}.train.json", lambda: run(
            exe + ["train", *COMMON, *OBJECTIVES[name], "--steps", str(args.steps), "--eval-every",
                   str(args.eval_every), "--out", str(out), "--overwrite", "--progress-off"], env,
            work / f"{name}.train.log"))

    def test(name):
        folder = f"model_step{args.stop_at}" if args.stop_at else "model"
        model = [] if name == "zero_shot" else ["--model", str(work / name / folder)]
        return cached(work / f"{name}.test.json", lambda: run(
            exe + ["eval", "--task", "squad", "--split", "test", "--limit", str(args.n_test), "--seed", "42",
                   "--batch-size", "25", *model], env, work / f"{name}.test.log"))

    def pipeline(name):
        if name == "zero_shot":
            return {"test": test(name)}
        return {"train": train(name), "test": test(name)}

    names = args.only.split(",") if args.only else ["lm", "f1", "zero_shot"]
    with ThreadPoolExecutor(args.jobs) as pool:
        dict(zip(names, pool.map(pipeline, names)))
    if all((work / f"{n}.test.json").exists() for n in ("lm", "f1", "zero_shot")):
        report({n: pipeline(n) for n in ("lm", "f1", "zero_shot")}, args, work)  # all cached by now


def curves(out: Path, upto: int | None) -> dict:
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in metrics if upto is None or m["step"] <= upto]
    steps = [m for m in metrics if "time_s" in m]
    return {"step": [m["step"] for m in steps], "reward": [m.get("reward") for m in steps],
            "lm_loss": [m.get("lm_loss") for m in steps],
            "dev": [(m["step"], m["f1"], m["em"], m.get("lm_loss")) for m in metrics if m.get("split") == "dev"],
            "median_step_s": sorted(m["time_s"] for m in steps)[len(steps) // 2] if steps else None,
            "median_split_s": {k: sorted(m["time_split"][k] for m in steps)[len(steps) // 2]
                               for k in (steps[0]["time_split"] if steps else {})}}


def report(res: dict, args, work: Path) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = {"task": "squad", "model": "SmolLM2-135M-Instruct (embedded), fp32", "commit": commit,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "threads_per_run": os.environ.get("OMP_NUM_THREADS", "1"), "jobs": args.jobs},
           "protocol": {"train": 1000, "dev": 50, "test": args.n_test, "steps": args.stop_at or args.steps,
                        "stopped_early": bool(args.stop_at), "batch": 8,
                        "greedy": True, "max_new_tokens": 16, "stop": "\\n", "perturb": "inplace",
                        "forward_passes_per_step": 2},
           "runs": {}}
    for name, r in res.items():
        row = {"test_em": r["test"]["em"], "test_f1": r["test"]["f1"], "test_n": r["test"]["n"],
               "eval_command": r["test"]["command"], "eval_wall_s": r["test"]["wall_s"]}
        if "train" in r:
            c = curves(work / name, args.stop_at)
            cfg = json.loads((work / name / "config.json").read_text())
            row.update(command=r["train"]["command"], best_step=r["train"]["best_step"],
                       config={k: cfg[k] for k in ("objective", "lr", "eps", "batch_size", "perturb", "steps",
                                                   "seed", "split_sizes", "generation")}, **c)
        doc["runs"][name] = row
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generation.json").write_text(json.dumps(doc, indent=1))
    z = doc["runs"]["zero_shot"]
    lines = [f"SQuAD v1.1, embedded SmolLM2-135M fp32, greedy (≤16 new tokens, stop at newline); test = "
             f"{z['test_n']} questions of the official dev set (seed 42). Commit {commit[:10]}.", "",
             "| run | objective | steps × batch | test EM | test F1 | model step | s/step (median) |",
             "|---|---|---|---|---|---|---|",
             f"| zero-shot | — | — | {100 * z['test_em']:.1f} | {100 * z['test_f1']:.1f} | — | — |"]
    for name in ("lm", "f1"):
        r = doc["runs"][name]
        lines.append(f"| MeZO | `{name}` | {args.stop_at or args.steps} × 8 | {100 * r['test_em']:.1f} | {100 * r['test_f1']:.1f} "
                     f"| {r['best_step']} | {r['median_step_s']:.1f} |")
    (RESULTS / "generation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(doc)


def plot(doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for name in ("lm", "f1"):
        r = doc["runs"][name]
        axes[0].plot(r["step"], r["reward"], lw=0.8, label=f"MeZO {name}")
        axes[1].plot(r["step"], r["lm_loss"], lw=0.8, label=f"MeZO {name}")
        axes[2].plot([d[0] for d in r["dev"]], [d[1] for d in r["dev"]], marker="o", label=f"MeZO {name}")
    for ax, y in zip(axes, ("train batch F1 (mean of ±εz)", "train LM loss (mean of ±εz)", "dev F1 (50)")):
        ax.set_xlabel("step")
        ax.set_ylabel(y)
        ax.legend()
    fig.suptitle("SQuAD, SmolLM2-135M: MeZO on lm vs on f1 (the same steps)")
    fig.tight_layout()
    fig.savefig(RESULTS / "generation_curves.png", dpi=110)


if __name__ == "__main__":
    main()

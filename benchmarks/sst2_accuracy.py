"""The measured result of issue "Objectives, tasks and evaluation": MeZO on the embedded SmolLM2-135M,
SST-2, CPU — zero-shot vs MeZO with the `ce` and the `accuracy` objective, in MeZO's two settings
(k = 16 per class, seed 42; and 1,000 train / 500 dev). Runs the CLI commands below one after another
and writes benchmarks/results/sst2_accuracy.{json,md} and sst2_curves.png.

    .venv/bin/python benchmarks/sst2_accuracy.py [--steps 400] [--threads 1]
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run(cmd: list[str], env) -> dict:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"failed:\n{p.stderr[-3000:]}")
    out = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    out["wall_s"] = round(time.time() - t0, 1)
    out["command"] = " ".join(cmd[1:])
    print(json.dumps(out), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--only", default=None, help="comma list of run names")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": args.threads}
    exe = [sys.executable, "-m", "sglang_mezo"]
    settings = {
        "k16": ["--k-shot", "16", "--seed", "42", "--eval-every", "50"],
        "n1000": ["--k-shot", "0", "--n-train", "1000", "--n-dev", "500", "--seed", "42", "--eval-every", "100"],
    }
    objectives = {"ce": ["--objective", "ce", "--batch-size", "16", "--lr", "2e-5", "--eps", "1e-3"],
                  "accuracy": ["--objective", "accuracy", "--batch-size", "32", "--lr", "1e-5", "--eps", "1e-3"]}
    results = {"zero_shot": run(exe + ["eval", "--task", "sst2", "--split", "test"], env)}
    only = set(args.only.split(",")) if args.only else None
    for sname, sargs in settings.items():
        for oname, oargs in objectives.items():
            name = f"{sname}_{oname}"
            if only and name not in only:
                continue
            out = ROOT / "runs" / f"sst2_{name}"
            results[name] = run(exe + ["train", "--task", "sst2", "--steps", str(args.steps), *sargs, *oargs,
                                       "--out", str(out), "--overwrite", "--progress-off"], env)
            results[name]["metrics"] = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()
                                        if '"split"' in l]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sst2_accuracy.json").write_text(json.dumps(results, indent=1))
    zs = results["zero_shot"]["accuracy"]
    lines = ["| run | objective | steps | batch | lr | eps | zero-shot test | MeZO test | gain | best dev step | wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if name == "zero_shot":
            continue
        a = dict(zip(r["command"].split()[1::2], r["command"].split()[2::2]))
        lines.append(f"| {name} | {a.get('--objective')} | {r['steps']} | {a.get('--batch-size')} | {a.get('--lr')} "
                     f"| {a.get('--eps')} | {zs:.3f} | {r['test_accuracy']:.3f} | {100 * (r['test_accuracy'] - zs):+.1f} "
                     f"| {r['best_step']} | {r['wall_s'] / 60:.0f} min |")
    (RESULTS / "sst2_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        if name != "zero_shot":
            dev = [m for m in r["metrics"] if m["split"] == "dev"]
            ax.plot([m["step"] for m in dev], [m["accuracy"] for m in dev], marker="o", label=name)
    ax.axhline(zs, ls="--", c="gray", label="zero-shot (test)")
    ax.set_xlabel("MeZO step")
    ax.set_ylabel("dev accuracy")
    ax.set_title("SST-2, SmolLM2-135M-Instruct, MeZO on CPU (sglang backend)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "sst2_curves.png", dpi=110)


if __name__ == "__main__":
    main()

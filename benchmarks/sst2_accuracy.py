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


SETTINGS = {
    "k16": ["--k-shot", "16", "--seed", "42", "--eval-every", "50"],
    "n1000": ["--k-shot", "0", "--n-train", "1000", "--n-dev", "500", "--seed", "42", "--eval-every", "100"],
}
OBJECTIVES = {"ce": ["--objective", "ce", "--batch-size", "16", "--lr", "2e-5", "--eps", "1e-3"],
              "accuracy": ["--objective", "accuracy", "--batch-size", "32", "--lr", "1e-4", "--eps", "1e-2"]}


def summarize(name: str, out: Path) -> dict:
    """A finished run's numbers, read back from its output directory."""
    cfg = json.loads((out / "config.json").read_text())
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "split" in m]
    test = [m for m in evals if m["split"] == "test" and "best_step" in m]
    if not test:
        raise SystemExit(f"{out}: run not finished")
    steps = [m for m in metrics if "time_s" in m]
    return {"objective": cfg["objective"], "steps": cfg["steps"], "batch": cfg["batch_size"], "lr": cfg["lr"],
            "eps": cfg["eps"], "k_shot": cfg["k_shot"], "split_sizes": cfg["split_sizes"],
            "test_accuracy": test[-1]["accuracy"], "best_step": test[-1]["best_step"],
            "dev": [(m["step"], m["accuracy"]) for m in evals if m["split"] == "dev"],
            "median_step_s": sorted(m["time_s"] for m in steps)[len(steps) // 2],
            "wall_min": ((out / "metrics.jsonl").stat().st_mtime - (out / "config.json").stat().st_mtime) / 60}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--only", default=None, help="comma list of runs (k16_ce, k16_accuracy, n1000_ce, ...)")
    ap.add_argument("--table-only", action="store_true", help="rebuild the table from runs/ without training")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": args.threads}
    exe = [sys.executable, "-m", "sglang_mezo"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    zs_file = RESULTS / "sst2_zero_shot.json"
    if not args.table_only:
        if not zs_file.exists():
            zs_file.write_text(json.dumps(run(exe + ["eval", "--task", "sst2", "--split", "test"], env)))
        only = set(args.only.split(",")) if args.only else None
        for sname, sargs in SETTINGS.items():
            for oname, oargs in OBJECTIVES.items():
                name = f"{sname}_{oname}"
                if only is None or name in only:
                    run(exe + ["train", "--task", "sst2", "--steps", str(args.steps), *sargs, *oargs,
                               "--out", str(ROOT / "runs" / f"sst2_{name}"), "--overwrite", "--progress-off"], env)
    zs = json.loads(zs_file.read_text())["accuracy"]
    results = {"zero_shot_test_accuracy": zs, "commands": {}, "runs": {}}
    for sname, sargs in SETTINGS.items():
        for oname, oargs in OBJECTIVES.items():
            name, out = f"{sname}_{oname}", ROOT / "runs" / f"sst2_{sname}_{oname}"
            if (out / "metrics.jsonl").exists():
                try:
                    results["runs"][name] = summarize(name, out)
                except SystemExit as e:
                    print(e)
                    continue
                results["commands"][name] = (f"sglang-mezo train --task sst2 --steps {results['runs'][name]['steps']} "
                                             + " ".join(sargs + oargs) + f" --out runs/sst2_{name}")
    from common import machine_info  # benchmarks/common.py: host, versions, git commit of this checkout

    results["machine"] = {**machine_info(), "measured_at_commit": machine_info()["git_commit"],
                          "commit_note": "the checkout's commit when the runs were summarised"}
    (RESULTS / "sst2_accuracy.json").write_text(json.dumps(results, indent=1))
    lines = ["| run | objective | train / dev / test | steps | batch | lr | eps | zero-shot test | MeZO test | gain "
             "| best dev step | s/step (median) | wall |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        sz = r["split_sizes"]
        lines.append(f"| {name} | {r['objective']} | {sz['train']} / {sz['dev']} / {sz['test']} | {r['steps']} "
                     f"| {r['batch']} | {r['lr']:g} | {r['eps']:g} | {100 * zs:.1f} | {100 * r['test_accuracy']:.1f} "
                     f"| {100 * (r['test_accuracy'] - zs):+.1f} | {r['best_step']} | {r['median_step_s']:.1f} "
                     f"| {r['wall_min']:.0f} min |")
    (RESULTS / "sst2_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results["runs"].items():
        ax.plot([d[0] for d in r["dev"]], [d[1] for d in r["dev"]], marker="o", label=name)
    ax.axhline(zs, ls="--", c="gray", label="zero-shot (test)")
    ax.set_xlabel("MeZO step")
    ax.set_ylabel("dev accuracy")
    ax.set_title("SST-2, SmolLM2-135M-Instruct, MeZO on CPU (sglang backend)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "sst2_curves.png", dpi=110)


if __name__ == "__main__":
    main()

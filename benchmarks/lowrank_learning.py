"""Learning at an equal number of forward passes: full-rank MeZO vs low-rank (r = 1, 4, 16) vs low-rank with
n directions per forward, SST-2 k = 16 on the embedded model.

    .venv/bin/python benchmarks/lowrank_learning.py [--sequences 2048] [--batch-size 16] [--lr 3e-5]

Budget = sequences evaluated in training (a two-point step with n directions evaluates 2·n·B): every
run gets the same budget, so a run with n = 8 takes 8× fewer steps than one with n = 1. Each run is
`sglang-mezo train` in its own process (same seed, data, lr, eps); test = the first `--n-test` LM-BFF
SST-2 test sentences (the same subset for every run), model = the best dev step. Writes the section
"learning" of benchmarks/results/lowrank.json and lowrank.md.
"""
from __future__ import annotations

import common  # noqa: F401  (path + cpu shims)

import json
import subprocess
import sys
import tempfile
import time

from pathlib import Path

from common import RESULTS, ROOT, machine_info, table, write_result


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=2048, help="training sequences per run (forward budget)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--model", default=None, help="HF model folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--out-dir", default=None, help="where lowrank.json goes (default benchmarks/results)")
    p.add_argument("--runs", default="full,r1,r4,r16,r4n8", help="full | rR | rRnN | rRnNfzoo, comma-separated")
    args = p.parse_args()
    start = machine_info()
    rows, out = [], []
    for name in args.runs.split(","):
        flags, n = [], 1
        if name != "full":
            r, _, rest = name[1:].partition("n")
            n = int(rest.removesuffix("fzoo")) if rest else 1
            flags = ["--perturb", "lowrank", "--rank", r, "--n-queries", str(n)]
            if rest.endswith("fzoo"):
                flags += ["--estimator", "fzoo"]
        per_step = (2 * n if "fzoo" not in name else n + 1) * args.batch_size
        steps = max(1, args.sequences // per_step)
        d = tempfile.mkdtemp(prefix=f"lowrank_{name}_")
        cmd = [sys.executable, "-m", "sglang_mezo", "train", "--task", "sst2", "--k-shot", "16", "--seed", "42",
               "--objective", "ce", "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--eps",
               str(args.eps), "--steps", str(steps), "--eval-every", str(max(1, steps // 4)), "--n-test",
               str(args.n_test), "--progress-off", "--out", d, "--overwrite", *flags]
        if args.model:
            cmd += ["--model", args.model]
        t0 = time.time()
        pr = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if pr.returncode != 0:
            raise SystemExit(f"{name} failed:\n{pr.stderr[-2000:]}")
        res = json.loads([l for l in pr.stdout.splitlines() if l.startswith("{")][-1])
        wall = time.time() - t0
        row = {"run": name, "n_directions": n, "steps": steps, "sequences": steps * per_step,
               "zero_shot_test": res["zero_shot_test_accuracy"], "test": res["test_accuracy"],
               "best_dev": res["best_dev_accuracy"], "best_step": res["best_step"], "wall_s": round(wall, 1),
               "command": " ".join(cmd[2:])}
        out.append(row)
        rows.append([name, n, steps, row["sequences"], row["zero_shot_test"], row["test"], row["best_dev"],
                     row["best_step"], round(wall / 60, 1)])
        print(json.dumps(row), flush=True)
    md = table(rows, ["run", "n", "steps", "sequences", "zero-shot test", "test", "best dev", "best step", "min"])
    note = (f"\n\nSST-2 k = 16 (seed 42), ce, B = {args.batch_size}, lr {args.lr}, eps {args.eps}, test = "
            f"first {args.n_test} test sentences; commit {start['git_commit']}, load at start "
            f"{start['loadavg_1_5_15']}\n")
    print(md + note)
    from lowrank import _write_md

    path = Path(args.out_dir or RESULTS) / "lowrank.json"
    prev = json.loads(path.read_text()) if path.exists() else {}
    prev.pop("machine", None)
    prev["learning"] = {"rows": out, "args": vars(args), "machine_start": start}
    write_result("lowrank", prev, args.out_dir)
    _write_md(args.out_dir, "learning", "## (c) Learning at an equal number of forward passes\n\n" + md + note)


if __name__ == "__main__":
    main()

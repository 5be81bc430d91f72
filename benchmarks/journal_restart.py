"""Reliability of `sglang-mezo serve --mezo-run-dir` on the embedded SmolLM2-135M (fp32, CPU).

    .venv/bin/python benchmarks/journal_restart.py [--kills 3] [--journal-steps 1000] [--model DIR]

1. Kills: start the server, run /mezo/train (SST-2, batch 4), poll /mezo/status and record every
   acknowledged step id, `kill -9` the whole process group after a few steps; restart with the same run
   dir; count the acknowledged steps missing from the journal (must be 0) and check the restored server
   holds the journal's steps. Repeated `--kills` times.
2. Restart time: the journal gets `--journal-steps` more step lines (valid records: each step's
   gradient follows from its recorded losses, lr 1e-7, so the replay does the real in-place update of
   every weight), then the server is restarted and timed until /health answers, against the same
   server's start time with an empty journal.
Writes benchmarks/results/journal_restart.json.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_helpers import free_port  # noqa: E402


def start(model, run_dir, log):
    port = free_port()
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "sglang_mezo", "serve", "--model-path", model, "--host", "127.0.0.1",
                          "--port", str(port), "--dtype", "float32", "--log-level", "warning", "--mezo-run-dir",
                          str(run_dir)], cwd=str(ROOT), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        assert p.poll() is None, f"server exited, see {log}"
        try:
            if requests.get(url + "/health", timeout=10).status_code == 200:
                return p, url, time.time() - t0
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.5)


def kill(p):
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def main():
    from sglang_mezo import trajectory
    from sglang_mezo.mezo import StepRecord, estimate
    from sglang_mezo.models import embedded_default_model
    from sglang_mezo.settings import Settings, step_seeds

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--journal-steps", type=int, default=1000)
    args = ap.parse_args()
    model = args.model or embedded_default_model()
    work = Path(tempfile.mkdtemp(prefix="journal_restart."))
    run = work / "run"
    body = {"task": "sst2", "lr": 1e-6, "eps": 1e-3, "batch_size": 4, "seed": 11, "steps": 100000, "interval_s": 0}
    acked, kills, lost, restarts = set(), [], 0, []
    p, url, fresh_s = start(model, run, work / "s0.log")
    for k in range(args.kills):
        requests.post(url + "/mezo/train", json=body, timeout=60).raise_for_status()
        first = None
        while True:
            st = requests.get(url + "/mezo/status", timeout=60).json()
            if st.get("last"):
                acked.add(st["last"]["step"])
                first = first or st["last"]["step"]
            if st["done"] >= 3:
                break
            time.sleep(0.05)
        kill(p)
        t = trajectory.load(run / "trajectory.jsonl")
        missing = acked - {r.step for r in t.taken}
        lost += len(missing)
        p, url, restart_s = start(model, run, work / f"s{k + 1}.log")
        held = requests.get(url + "/mezo/status", timeout=60).json()["steps"]
        assert held == len(t.records), (held, len(t.records))
        kills.append({"journaled_steps": len(t.records), "acknowledged_max": max(acked), "missing": sorted(missing),
                      "restart_s": round(restart_s, 1)})
        print(kills[-1], flush=True)
    kill(p)

    t = trajectory.load(run / "trajectory.jsonl")
    n0 = len(t.records)
    cfg = Settings(lr=1e-7, eps=1e-3)
    w = trajectory.TrajectoryWriter(run / "trajectory.jsonl", keep_bytes=t.size)
    for step in range(n0 + 1, n0 + args.journal_steps + 1):
        lp, lm = 2.0 + 1e-3 * (step % 7), 2.0 - 1e-3 * (step % 5)
        grads, _, _ = estimate([lp, lm], cfg)
        w.append(StepRecord(step, step_seeds(11, step, 1), grads, cfg.lr, cfg.eps, 0.0, "two_point", [lp], [lm]))
    w.close()
    p, url, big_s = start(model, run, work / "big.log")
    held = requests.get(url + "/mezo/status", timeout=60).json()["steps"]
    kill(p)
    replay_line = [l for l in open(work / "big.log") if "restored" in l][-1].strip()
    out = {"model": model, "kills_survived": len(kills), "acknowledged_steps": len(acked),
           "acknowledged_steps_lost": lost, "kills": kills, "start_s_empty_journal": round(fresh_s, 1),
           "journal_steps": n0 + args.journal_steps, "restored_steps": held,
           "restart_s_with_journal": round(big_s, 1), "restore_log": replay_line}
    print(json.dumps(out, indent=1))
    (ROOT / "benchmarks/results/journal_restart.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

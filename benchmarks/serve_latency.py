"""Request latency of a `sglang-mezo serve` server with and without MeZO training running (same run).

    .venv/bin/python benchmarks/serve_latency.py [--model DIR] [--requests 200] [--batch-size 16]

Starts the server on loopback, sends `--requests` sequential /generate requests (8 new tokens) with no
training, then the same while /mezo/train runs, and prints p50/p90/p99 and the ratio. Writes
benchmarks/results/serve_latency.json. Default model: a tiny random Llama built here (fast on CPU);
`--model` for the embedded SmolLM2 (`python -c 'from sglang_mezo.models import embedded_default_model as m; print(m())'`).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def measure(url, n):
    lat = []
    for i in range(n):
        t = time.perf_counter()
        r = requests.post(url + "/generate", json={"text": f"the film number {i} was",
                          "sampling_params": {"max_new_tokens": 8, "temperature": 0}}, timeout=300)
        r.raise_for_status()
        lat.append(time.perf_counter() - t)
    return {"p50_ms": 1000 * pct(lat, 50), "p90_ms": 1000 * pct(lat, 90), "p99_ms": 1000 * pct(lat, 99),
            "mean_ms": 1000 * sum(lat) / len(lat), "n": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--interval", type=float, default=0.0, help="/mezo/train interval_s between steps")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from sglang_mezo.models import make_tiny_llama

    model = args.model or make_tiny_llama(tempfile.mkdtemp(prefix="tiny_llama_"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "sglang_mezo", "serve", "--model-path", model, "--host",
                             "127.0.0.1", "--port", str(port), "--dtype", "float32", "--log-level", "error"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        measure(url, 10)  # warm-up
        idle = measure(url, args.requests)
        r = requests.post(url + "/mezo/train", json={"task": "sst2", "steps": 100000, "lr": 1e-6, "eps": 1e-3,
                                                      "batch_size": args.batch_size, "seed": 1,
                                                      "interval_s": args.interval}, timeout=60)
        r.raise_for_status()
        time.sleep(2)
        busy = measure(url, args.requests)
        steps = requests.get(url + "/mezo/status", timeout=600).json()
        res = {"model": model, "interval_s": args.interval, "batch_size": args.batch_size, "idle": idle, "training": busy, "steps_during_measurement": steps.get("done"),
               "p50_ratio": busy["p50_ms"] / idle["p50_ms"], "p99_ratio": busy["p99_ms"] / idle["p99_ms"],
               "threads": os.environ.get("OMP_NUM_THREADS", "1 (serve default on CPU)"),
               "date": time.strftime("%Y-%m-%d %H:%M")}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    print(f"{'':10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for k in ("idle", "training"):
        print(f"{k:10} {res[k]['p50_ms']:8.1f} {res[k]['p90_ms']:8.1f} {res[k]['p99_ms']:8.1f}")
    print(f"MeZO steps taken while measuring: {res['steps_during_measurement']}; p50 x{res['p50_ratio']:.2f}, "
          f"p99 x{res['p99_ratio']:.2f}")
    from common import machine_info  # host, versions, git commit of this run

    res["machine"] = machine_info()
    out = ROOT / "benchmarks" / "results" / "serve_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()).get("runs", []) if out.exists() else []
    runs = [r for r in runs if r.get("interval_s") != args.interval] + [res]
    out.write_text(json.dumps({"runs": sorted(runs, key=lambda r: r["interval_s"])}, indent=1))


if __name__ == "__main__":
    main()

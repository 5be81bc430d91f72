"""Request latency of a `sglang-mezo serve` server with and without MeZO training running (same run).

    .venv/bin/python benchmarks/serve_latency.py [--model DIR] [--requests 200] [--batch-size 16]
        [--perturbs layerwise,lowrank] [--rank 4] [--n-queries 1]

For each perturbation mode (a server of its own: full-rank `layerwise` pauses serving for whole steps,
`lowrank` runs its ±ε forwards as adapter requests beside user traffic and pauses only for updates):
starts the server on loopback, sends `--requests` sequential /generate requests (8 new tokens) with no
training, then the same while /mezo/train runs, and prints p50/p90/p99/max and the ratios to idle.
Writes benchmarks/results/serve_latency.json (one run per mode and interval). Default model: a tiny random Llama built here (fast on CPU);
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
            "max_ms": 1000 * max(lat), "mean_ms": 1000 * sum(lat) / len(lat), "n": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--interval", type=float, default=0.0, help="/mezo/train interval_s between steps")
    ap.add_argument("--perturbs", default="layerwise,lowrank", help="modes to measure, one server each")
    ap.add_argument("--rank", type=int, default=4, help="lowrank: rank of each direction")
    ap.add_argument("--n-queries", type=int, default=1, help="directions per step (lowrank: 2n adapters)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_latency.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import make_tiny_llama

    model = args.model or make_tiny_llama(tempfile.mkdtemp(prefix="tiny_llama_"))
    results = [run_mode(model, mode, args) for mode in args.perturbs.split(",")]
    from common import machine_info  # host, versions, git commit of this run

    info = machine_info()
    print(f"{'':22} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for res in results:
        for k in ("idle", "training"):
            r = res[k]
            print(f"{res['perturb'] + ' ' + k:22} {r['p50_ms']:8.1f} {r['p90_ms']:8.1f} {r['p99_ms']:8.1f} "
                  f"{r['max_ms']:8.1f}")
        print(f"  {res['perturb']}: {res['steps_during_measurement']} steps while measuring; p50 x"
              f"{res['p50_ratio']:.2f}, p99 x{res['p99_ratio']:.2f}, max x{res['max_ratio']:.2f}")
        res["machine"] = info
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()).get("runs", []) if out.exists() else []
    key = lambda r: (r.get("perturb", "layerwise"), r["interval_s"])  # noqa: E731
    new = {key(r) for r in results}
    runs = [r for r in runs if key(r) not in new] + results
    out.write_text(json.dumps({"runs": sorted(runs, key=key)}, indent=1))


def run_mode(model, mode, args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    extra = ["--mezo-perturb", mode] + (["--mezo-rank", str(args.rank)] if mode == "lowrank" else [])
    proc = subprocess.Popen([sys.executable, "-m", "sglang_mezo", "serve", "--model-path", model, "--host",
                             "127.0.0.1", "--port", str(port), "--dtype", "float32", "--log-level", "error",
                             *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
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
                                                      "n_queries": args.n_queries, "interval_s": args.interval},
                          timeout=60)
        r.raise_for_status()
        time.sleep(2)
        busy = measure(url, args.requests)
        steps = requests.get(url + "/mezo/status", timeout=600).json()
        if steps.get("error"):
            raise SystemExit(f"{mode}: training failed: {steps['error']}")
        return {"perturb": mode, "rank": args.rank if mode == "lowrank" else None, "n_queries": args.n_queries,
                "model": model, "interval_s": args.interval, "batch_size": args.batch_size, "idle": idle,
                "training": busy, "steps_during_measurement": steps.get("done"),
                "max_update_s": steps.get("max_update_s"), "max_forward_s": steps.get("max_forward_s"),
                "p50_ratio": busy["p50_ms"] / idle["p50_ms"], "p99_ratio": busy["p99_ms"] / idle["p99_ms"],
                "max_ratio": busy["max_ms"] / idle["max_ms"],
                "threads": os.environ.get("OMP_NUM_THREADS", "1 (serve default on CPU)"),
                "date": time.strftime("%Y-%m-%d %H:%M")}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()

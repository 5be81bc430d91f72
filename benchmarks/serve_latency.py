"""What training while serving costs users, measured as a user would: the OpenAI Python client.

    flock /tmp/sglang_mezo_cpu.lock .venv/bin/python benchmarks/serve_latency.py [--model DIR]
        [--perturbs layerwise,lowrank] [--requests 24] [--batch-size 16] [--quiet 0.5]

For each perturbation mode (full-rank `layerwise`, `lowrank --mezo-rank 4`) and each training condition
(`none`; `continuous`: /mezo/train with interval_s 0; `idle`: "schedule": "idle" with quiet_s --quiet), a
fresh `sglang-mezo serve` (so no run leaks into the next) is driven at three user loads:
  sequential   one client, requests back to back
  concurrent   --clients clients, each back to back
  paced        one client, one request every --pace seconds (idle gaps between requests)
Each client alternates streamed and non-streamed chat completions (8 new tokens, temperature 0).
Reported per cell: p50/p99/max of the request latency and p50/p99 of the time to first token (streamed),
their ratios to the `none` cell of the same mode and load, and training steps per minute during the load
(with the /mezo/status figures: engine time fraction on training, user queue wait). Writes
benchmarks/results/serve_latency.{json,md} with the commit and the machine's load average.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Name a colour.", "Say hello.", "What is two plus two?", "Name a fruit.", "Give me a word."]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else None


def chat(client, model, i, stream):
    """(latency s, time to first token s or None) of one chat completion."""
    t = time.perf_counter()
    msgs = [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}]
    if not stream:
        client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
        return time.perf_counter() - t, None
    first = None
    for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0,
                                                stream=True):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t
    return time.perf_counter() - t, first


def drive(url, model, load, args):
    from openai import OpenAI

    clients, per, pace = {"sequential": (1, args.requests, 0.0), "paced": (1, args.paced_requests, args.pace),
                          "concurrent": (args.clients, args.requests // args.clients, 0.0)}[load]
    lat, ttft = [], []

    def client_loop(c):
        client = OpenAI(base_url=url + "/v1", api_key="none", timeout=600, max_retries=0)
        for j in range(per):
            t0 = time.perf_counter()
            total, first = chat(client, model, 1000 * c + j, stream=j % 2 == 1)
            lat.append(total)
            if first is not None:
                ttft.append(first)
            if pace:
                time.sleep(max(0.0, pace - (time.perf_counter() - t0)))

    s0, t0 = status(url), time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, s1 = time.perf_counter() - t0, status(url)
    steps = (s1.get("done") or 0) - (s0.get("done") or 0)
    return {"load": load, "clients": clients, "n": len(lat), "p50_s": pct(lat, 50), "p99_s": pct(lat, 99),
            "max_s": max(lat), "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "wall_s": wall,
            "steps": steps, "steps_per_min": 60 * steps / wall,
            "status": {k: s1.get(k) for k in ("train_engine_fraction", "user_queue_wait_ms", "max_update_s",
                                              "max_forward_s", "steps_per_min", "error")}}


def status(url):
    return requests.get(url + "/mezo/status", timeout=600).json()


def serve(model, mode, args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--mezo-perturb", mode] + (["--mezo-rank", str(args.rank)] if mode == "lowrank" else [])
    extra += args.serve_args.split() if mode == "lowrank" or "piece" not in args.serve_args else []
    proc = subprocess.Popen([sys.executable, "-m", "sglang_mezo", "serve", "--model-path", model, "--host",
                             "127.0.0.1", "--port", str(port), "--dtype", "float32", "--log-level", "error",
                             *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(url + "/health", timeout=2).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit(f"{mode}: server did not come up")


def run_cell(model, mode, cond, args):
    proc, url = serve(model, mode, args)
    try:
        from openai import OpenAI

        warm = OpenAI(base_url=url + "/v1", api_key="none", timeout=600, max_retries=0)
        for i in range(3):
            chat(warm, model, i, stream=i % 2 == 1)
        if cond != "none":
            body = {"task": "sst2", "steps": 1_000_000, "lr": 1e-6, "eps": 1e-3, "batch_size": args.batch_size,
                    "seed": 1, "n_queries": 1, "interval_s": 0}
            if cond == "idle":
                body.update(schedule="idle", quiet_s=args.quiet)
            requests.post(url + "/mezo/train", json=body, timeout=60).raise_for_status()
            time.sleep(2)
        out = []
        for load in args.loads.split(","):
            r = drive(url, model, load, args)
            r.update(perturb=mode, training=cond)
            out.append(r)
            print(f"{mode:9} {cond:10} {load:10} p50 {r['p50_s']:.3f} p99 {r['p99_s']:.3f} max {r['max_s']:.3f} "
                  f"ttft p50 {r['ttft_p50_s']:.3f} steps/min {r['steps_per_min']:.1f}", flush=True)
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a full-rank step holds the scheduler: it ends the hard way
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def step_costs(model, args):
    """Where a full-rank step's time goes, per batch size: its forwards, and the rest (the pause of user
    traffic, the perturbation and update sweeps, the cache flushes). The idle schedule delays a user by at
    most one step, so this is the user's worst case under it."""
    import statistics

    proc, url = serve(model, "layerwise", args)
    try:
        out = []
        for b in [int(x) for x in args.step_costs.split(",")]:
            reps = []
            for i in range(4):
                t = time.perf_counter()
                r = requests.post(url + "/mezo/step", json={"task": "sst2", "batch_size": b, "lr": 1e-6, "eps": 1e-3,
                                                             "seed": 7 + i}, timeout=600)
                r.raise_for_status()
                j = r.json()
                reps.append((time.perf_counter() - t, j["time_s"], sum(j["forwards_s"]), len(j["forwards_s"])))
            reps = reps[1:]  # the first step of a size warms up
            med = lambda k: statistics.median(x[k] for x in reps)  # noqa: E731
            out.append({"batch_size": b, "http_s": med(0), "step_s": med(1), "forwards_s": med(2),
                        "forwards": reps[0][3], "one_forward_s": med(2) / reps[0][3],
                        "pause_sweeps_flushes_s": med(1) - med(2)})
            print(json.dumps(out[-1]), flush=True)
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def costs_table(costs):
    lines = ["| step batch | one forward s | forwards s | pause + sweeps + flushes s | step s (scheduler) | "
             "step s (HTTP) |", "|---|---|---|---|---|---|"]
    for c in costs:
        lines.append(f"| {c['batch_size']} | {c['one_forward_s']:.3f} | {c['forwards_s']:.3f} | "
                     f"{c['pause_sweeps_flushes_s']:.3f} | {c['step_s']:.3f} | {c['http_s']:.3f} |")
    return "\n".join(lines)


def table(rows):
    base = {(r["perturb"], r["load"]): r for r in rows if r["training"] == "none"}
    lines = ["| mode | training | step batch | load | p50 s | p99 s | max s | TTFT p50 s | p99 ÷ idle p99 | max ÷ idle max "
             "| TTFT p99 ÷ idle | steps/min | engine on training | user queue wait p99 ms | commit, load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get((r["perturb"], r["load"]))
        if b is None:
            continue
        st = r["status"] if r["training"] != "none" else {}
        qw = (st.get("user_queue_wait_ms") or {}).get("p99")
        frac = st.get("train_engine_fraction")
        quiet = f", quiet {r['quiet_s']:g} s" if r.get("quiet_s") is not None else ""
        quiet += f", `{r['serve_args']}`" if r.get("serve_args") and r["training"] != "none" else ""
        lines.append(f"| {r['perturb']} | {r['training']} | {r.get('batch_size') or ''}{quiet} | {r['load']} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | "
                     f"{r['max_s']:.2f} | {r['ttft_p50_s']:.2f} | ×{r['p99_s'] / b['p99_s']:.2f} | "
                     f"×{r['max_s'] / b['max_s']:.2f} | ×{r['ttft_p99_s'] / b['ttft_p99_s']:.2f} | "
                     f"{r['steps_per_min']:.1f} | {'' if frac is None else f'{frac:.0%}'} | "
                     f"{'' if qw is None else f'{qw:.0f}'} | {r.get('commit', '')[:7]}, "
                     f"{r.get('loadavg_1', float('nan')):.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--perturbs", default="layerwise,lowrank")
    ap.add_argument("--conditions", default="none,continuous,idle")
    ap.add_argument("--loads", default="sequential,concurrent,paced")
    ap.add_argument("--requests", type=int, default=24, help="per load (concurrent: split over the clients)")
    ap.add_argument("--paced-requests", type=int, default=10)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--pace", type=float, default=2.0, help="paced load: seconds between request starts")
    ap.add_argument("--quiet", type=float, default=0.5, help="idle schedule: quiet_s")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--serve-args", default="", help="extra `serve` flags, e.g. '--mezo-piece-tokens 16' "
                    "(low-rank servers only when it names a piece size)")
    ap.add_argument("--step-costs", default="", help="also measure full-rank steps of these batch sizes, "
                    "e.g. 1,2,4,16: their forwards and the rest (pause, sweeps, flushes)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_latency"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import machine_info  # host, versions, git commit, load average

    if args.model is None:
        from sglang_mezo.models import embedded_default_model
        args.model = embedded_default_model()
    load_before = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    # a cell measured now replaces its old row (same mode, training, load, extra serve flags)
    key = lambda r: (r["perturb"], r["training"], r["load"], r.get("serve_args", ""))  # noqa: E731
    rows = [r for r in old.get("rows", []) if "training" in r]
    costs = old.get("step_costs")
    if args.step_costs:
        costs = {"commit": machine_info()["git_commit"], "loadavg_1": os.getloadavg()[0],
                 "rows": step_costs(args.model, args)}
    for mode in [m for m in args.perturbs.split(",") if m]:
        for cond in args.conditions.split(","):
            new = run_cell(args.model, mode, cond, args)
            for r in new:
                r.update(commit=machine_info()["git_commit"], loadavg_1=os.getloadavg()[0], requests=args.requests,
                         batch_size=args.batch_size if cond != "none" else None,
                         quiet_s=args.quiet if cond == "idle" else None, serve_args=args.serve_args)
            rows = [r for r in rows if key(r) not in {key(n) for n in new}] + new
            out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows, "step_costs": costs},
                                                           indent=1))
    info = {**machine_info(), "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())}
    order = {m: i for i, m in enumerate(("layerwise", "lowrank", "none", "continuous", "idle", "sequential",
                                          "concurrent", "paced"))}
    rows.sort(key=lambda r: [order.get(k, 9) for k in key(r)[:3]] + [key(r)[3]])
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "machine": info, "rows": rows,
                                                   "step_costs": costs}, indent=1))
    md = (f"# serve_latency: chat completions (OpenAI client) while training\n\nLast invocation: commit "
          f"{info['git_commit'][:7]}{' (dirty)' if info['git_dirty'] else ''}, {info['date']}, {info['usable_cores']} "
          f"cores, load average before {load_before[0]:.2f} after {info['loadavg_after'][0]:.2f}; model "
          f"{Path(args.model).name} fp32; {args.requests} requests per load ({args.clients} concurrent clients; "
          f"paced: one every {args.pace:g} s, {args.paced_requests}); low-rank rank {args.rank}. Each row: the "
          "training step's batch (and the idle schedule's quiet_s), the commit and 1-min load average it ran "
          "at; ratios are against the no-training row of the same mode and load.\n\n" + table(rows) + "\n")
    if costs:
        md += (f"\n## Where a full-rank step's time goes (commit {costs['commit'][:7]}, load "
               f"{costs['loadavg_1']:.1f}; median of 3 steps after one warm-up)\n\n" + costs_table(costs["rows"]) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

"""Data-parallel MeZO across `sglang-mezo serve` replicas, and TP = 2 vs TP = 1, measured on this machine.

    .venv/bin/python benchmarks/data_parallel.py [--model DIR] [--steps 20] [--batch-size 16]

1. Two replicas, each pinned to one core (taskset, one OpenMP thread), driven by the coordinator
   (`sglang_mezo.replicas.train_replicas`) for --steps steps: step time, bytes exchanged per step.
   Both replicas save; max |Δθ| between them (goal 0).
2. Replica A rolled back to the base weights (exact), then driven alone with the full batch on its one
   core, same seeds and batches: step time, |L(2 replicas) − L(1 replica)| per step (goal ≤ 1e-6 rel).
3. /mezo/step on replica A (TP = 1, one core) vs a `--tp 2` server (ranks on cores 0 and 1).
`--only-interleaved N`: the forward half of a step (/mezo/losses), two replicas vs one, alternated for
N rounds (the sequential runs above see different machine load; this comparison does not).
Writes benchmarks/results/data_parallel.json. Default model: the embedded SmolLM2-135M (fp32).
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model, log, cores, *extra, env=None):
    port = free_port()
    cmd = ["taskset", "-c", cores, sys.executable, "-m", "sglang_mezo", "serve", "--model-path", model,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--log-level", "warning", *extra]
    p = subprocess.Popen(cmd, cwd=str(ROOT), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if p.poll() is not None:
            raise SystemExit(f"server exited, see {log}")
        try:
            if requests.get(url + "/health", timeout=10).status_code == 200:
                return p, url
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow on a busy machine
            pass
        time.sleep(1)
    raise SystemExit(f"server did not start, see {log}")


def stop(p):
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)


def step_times(url, examples, n):
    """Seconds of n /mezo/step calls (server-side time_s) on fixed examples, then rolled back."""
    from sglang_mezo.serve import MezoClient

    c = MezoClient(url)
    t = [c.step(examples=examples, lr=1e-5, eps=1e-3, seed=3)["time_s"] for _ in range(n)]
    c.rollback(n)
    return t


def interleaved(model, work, examples, rounds):
    """The forward half of a step (/mezo/losses at ±eps: no state changes), two replicas with half the
    batch each vs one replica with all of it, alternated round by round so the shared machine's load
    hits both alike. Seconds per round, as the coordinator sees them."""
    from sglang_mezo.replicas import Coordinator

    pa, a = start(model, work / "ia.log", "0")
    pb, b = start(model, work / "ib.log", "1")
    try:
        body = {"objective": "ce", "eps": 1e-3, "chat_template": False}
        two, one = Coordinator([a, b], body), Coordinator([a], body)
        for c in (two, one):
            c.set_batch(examples)
        t2, t1 = [], []
        for r in range(rounds):
            for c, out in ((two, t2), (one, t1)):
                t0 = time.perf_counter()
                c.each("losses", lambda rep, ex: rep.client.losses(r, [1e-3, -1e-3], examples=ex, **body))
                out.append(round(time.perf_counter() - t0, 3))
        return {"rounds": rounds, "two_replicas_s": t2, "one_replica_s": t1,
                "two_median": statistics.median(t2), "one_median": statistics.median(t1),
                "speedup": statistics.median(t1) / statistics.median(t2)}
    finally:
        stop(pa)
        stop(pb)


def dp_rows(model, work, examples, n):
    """`serve --dp-size 2` (ranks on cores 0 and 1) vs `--dp-size 1` (core 0): n /mezo/step calls at the
    same seeds, alternated step by step; step time and losses, and the DP ranks' checksum agreement."""
    from sglang_mezo.serve import MezoClient

    p1, u1 = start(model, work / "dp1.log", "0")
    p2, u2 = start(model, work / "dp2.log", "0,1", "--dp-size", "2", env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"})
    try:
        c1, c2 = MezoClient(u1), MezoClient(u2)
        r1, r2 = [], []
        for _ in range(n):
            for c, out in ((c1, r1), (c2, r2)):
                out.append(c.step(examples=examples, lr=1e-5, eps=1e-3, seed=3))
        same = c2.checksum() == c1.checksum()   # dp-2's answers only if both ranks agree
        rel = max(abs(a - b) / max(abs(a), 1e-30) for x, y in zip(r1, r2)
                  for a, b in zip(x["loss_plus"] + x["loss_minus"], y["loss_plus"] + y["loss_minus"]))
        for c in (c1, c2):
            c.rollback(n)
        return [{"dp_size": d, "s_per_step": [round(x["time_s"], 3) for x in r],
                 "s_per_step_median": statistics.median(x["time_s"] for x in r),
                 "loss_plus": [x["loss_plus"][0] for x in r], "loss_minus": [x["loss_minus"][0] for x in r]}
                for d, r in ((1, r1), (2, r2))] + [{"loss_rel_diff_max_dp2_vs_dp1": rel,
                                                    "weights_equal_dp2_vs_dp1_after_steps": same}]
    finally:
        stop(p1)
        stop(p2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tp-steps", type=int, default=5)
    ap.add_argument("--only-dp-size", type=int, default=0, metavar="STEPS",
                    help="run only `serve --dp-size 2` vs `--dp-size 1` (STEPS steps each) and add the rows")
    ap.add_argument("--only-interleaved", type=int, default=0, metavar="ROUNDS",
                    help="run only the interleaved forward-half timing (ROUNDS rounds) and add it to the JSON")
    args = ap.parse_args()
    if args.only_dp_size:
        from sglang_mezo import tasks
        from sglang_mezo.models import resolve_model

        data = tasks.splits(tasks.get_task("sst2"), k_shot=16, seed=42)["train"][: args.batch_size]
        ex = [{"prompt": e.prompt, "candidates": list(e.candidates), "label": e.label} for e in data]
        out = ROOT / "benchmarks/results/data_parallel.json"
        res = json.loads(out.read_text())
        with tempfile.TemporaryDirectory() as work:
            rows = dp_rows(resolve_model(args.model), Path(work), ex, args.only_dp_size)
        res["dp_size"] = {"rows": rows, "batch_size": args.batch_size, "load_avg_start": os.getloadavg(),
                          "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                       capture_output=True, text=True).stdout.strip()}
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["dp_size"], indent=2))
        return
    if args.only_interleaved:
        from sglang_mezo import tasks
        from sglang_mezo.models import resolve_model

        data = tasks.splits(tasks.get_task("sst2"), k_shot=16, seed=42)["train"][: args.batch_size]
        ex = [{"prompt": e.prompt, "candidates": list(e.candidates), "label": e.label} for e in data]
        out = ROOT / "benchmarks/results/data_parallel.json"
        res = json.loads(out.read_text())
        res["interleaved_forward_half"] = {"load_avg_start": os.getloadavg(), **interleaved(
            resolve_model(args.model), Path(tempfile.mkdtemp(prefix="dp_bench_")), ex, args.only_interleaved)}
        res["interleaved_forward_half"]["load_avg_end"] = os.getloadavg()
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["interleaved_forward_half"], indent=2))
        return
    from safetensors.torch import load_file

    from sglang_mezo.models import resolve_model
    from sglang_mezo.replicas import train_replicas
    from sglang_mezo.serve import MezoClient
    from sglang_mezo.settings import Settings

    model = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="dp_bench_"))
    saves = work / "saves"
    saves.mkdir()
    cfg = dict(task="sst2", lr=1e-5, eps=1e-3, batch_size=args.batch_size, seed=42, k_shot=16,
               steps=args.steps, progress=False)
    res = {"model": model, "steps": args.steps, "batch_size": args.batch_size, "task": "sst2 k=16, ce",
           "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}}
    pa, a = start(model, work / "a.log", "0", "--mezo-save-dir", str(saves))
    pb, b = start(model, work / "b.log", "1", "--mezo-save-dir", str(saves))
    try:
        two = train_replicas(Settings(out=str(work / "dp2"), **cfg), [a, b], checksum_every=5)
        MezoClient(a).save("a")
        MezoClient(b).save("b")
        ta, tb = load_file(str(saves / "a/model/model.safetensors")), load_file(str(saves / "b/model/model.safetensors"))
        max_diff = max((ta[k].float() - tb[k].float()).abs().max().item() for k in ta)
        stop(pb)
        MezoClient(a).rollback(args.steps)      # exact: base weights reloaded, nothing to replay
        one = train_replicas(Settings(out=str(work / "dp1"), **cfg), [a], checksum_every=5)
        l2 = [json.loads(l) for l in open(work / "dp2/trajectory.jsonl")][1:]
        l1 = [json.loads(l) for l in open(work / "dp1/trajectory.jsonl")][1:]
        rel = [abs(x - y) / abs(y) for r2, r1 in zip(l2, l1) for k in ("loss_plus", "loss_minus")
               for x, y in zip(r2[k], r1[k])]
        m2 = [json.loads(l) for l in open(work / "dp2/metrics.jsonl")]
        m1 = [json.loads(l) for l in open(work / "dp1/metrics.jsonl")]
        res["two_replicas"] = {"s_per_step_median": two["s_per_step_median"],
                               "s_per_step": [round(m["time_s"], 3) for m in m2],
                               "bytes_per_step_median": two["bytes_per_step_median"],
                               "max_abs_weight_diff_between_replicas": max_diff,
                               "checksums_equal_every_5_steps": all(
                                   "weights_sha256" in m for m in m2 if m["step"] % 5 == 0)}
        res["one_replica_full_batch"] = {"s_per_step_median": one["s_per_step_median"],
                                         "s_per_step": [round(m["time_s"], 3) for m in m1],
                                         "bytes_per_step_median": one["bytes_per_step_median"]}
        res["speedup_two_vs_one"] = one["s_per_step_median"] / two["s_per_step_median"]
        res["loss_rel_diff_max"] = max(rel)
        res["loss_abs_diff_max"] = max(abs(x - y) for r2, r1 in zip(l2, l1) for k in ("loss_plus", "loss_minus")
                                       for x, y in zip(r2[k], r1[k]))
        MezoClient(a).rollback(args.steps)
        from sglang_mezo import tasks

        data = tasks.splits(tasks.get_task("sst2"), k_shot=16, seed=42)["train"][: args.batch_size]
        ex = [{"prompt": e.prompt, "candidates": list(e.candidates), "label": e.label} for e in data]
        tp1 = step_times(a, ex, args.tp_steps)
    finally:
        for p in (pa, pb):
            if p.poll() is None:
                stop(p)
    pt, t = start(model, work / "tp2.log", "0,1", "--tp", "2", "--mezo-save-dir", str(saves),
                  env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"})
    try:
        tp2 = step_times(t, ex, args.tp_steps)
        # the TP = 2 save (every rank's shards, padded heads left out) equals the replay of its trajectory
        MezoClient(t).step(examples=ex, lr=1e-5, eps=1e-3, seed=3)
        MezoClient(t).save("tp2")
    finally:
        stop(pt)
    subprocess.run([sys.executable, "-m", "sglang_mezo", "replay", "--trajectory", str(saves / "tp2/trajectory.jsonl"),
                    "--out", str(work / "tp2_replayed")], check=True, cwd=str(ROOT), capture_output=True)
    ts, tr = load_file(str(saves / "tp2/model/model.safetensors")), load_file(str(work / "tp2_replayed/model.safetensors"))
    res["tp2_save_equals_replay_bitwise"] = all(ts[k].equal(tr[k]) for k in ts)
    res["tp"] = {"tp1_one_core_s_per_step": tp1, "tp2_two_cores_s_per_step": tp2,
                 "tp1_median": statistics.median(tp1), "tp2_median": statistics.median(tp2),
                 "speedup_tp2_vs_tp1": statistics.median(tp1) / statistics.median(tp2)}
    res["machine"]["load_avg_end"] = os.getloadavg()
    out = ROOT / "benchmarks/results/data_parallel.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

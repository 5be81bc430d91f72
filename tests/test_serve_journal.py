"""`serve --mezo-run-dir`: the write-ahead journal on real servers (tiny Llama, CPU) — kill -9 in the middle
of /mezo/train and restart, a rollback journaled and restored, a torn last line, a mismatched journal
refused, /mezo/stop and SIGTERM ending training at a step boundary, and a resumed `train --replicas`."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
import torch
from safetensors.torch import load_file

from conftest import ROOT, cli
from serve_helpers import PROCS, free_port, post_ok, running_server
from sglang_mezo import trajectory

STEP = {"task": "sst2", "lr": 1e-3, "eps": 1e-2, "batch_size": 4, "seed": 3}


def _serve(model, run_dir, log, *extra):
    return running_server(model, log, "--mezo-run-dir", str(run_dir), *extra, start_timeout=600)


def _journal(run_dir):
    return trajectory.load(run_dir / "trajectory.jsonl")


def _status(url):
    return requests.get(url + "/mezo/status", timeout=60).json()


def _checksum(url):
    return requests.get(url + "/mezo/checksum", timeout=300).json()["weights_sha256"]


def _train_until(url, done: int, acked: set, timeout: float = 600) -> dict:
    """Poll /mezo/status until `done` steps of the running /mezo/train are acknowledged; every step id
    a reply showed goes into `acked`."""
    deadline = time.time() + timeout
    while True:
        st = _status(url)
        if st.get("last"):
            acked.add(st["last"]["step"])
        assert st["error"] is None, st
        if st["done"] >= done:
            return st
        assert time.time() < deadline and st["running"], st
        time.sleep(0.05)


def _tensors_sha256(path) -> str:
    t = load_file(str(path))
    h = hashlib.sha256()
    for k in sorted(t):
        h.update(k.encode() + t[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_kill9_mid_training_restart_restores_every_acknowledged_step(tiny_model, tmp_path):
    run, saves = tmp_path / "run", tmp_path / "saves"
    saves.mkdir()
    acked = set()
    # 1: three steps, two rolled back, then kill -9: the restart must serve the rolled-back weights
    with _serve(tiny_model, run, tmp_path / "s1.log", "--mezo-save-dir", str(saves)) as url:
        acked |= {post_ok(url, "/mezo/step", STEP)["step"] for _ in range(3)}
        assert post_ok(url, "/mezo/rollback", {"steps": 2}) == {"steps": 1, "rolled_back": 2}
        rolled = _checksum(url)
        os.killpg(PROCS[url].pid, signal.SIGKILL)
    assert acked == {1, 2, 3}
    # 2: restored; continuous training killed in the middle of a step
    with _serve(tiny_model, run, tmp_path / "s2.log", "--mezo-save-dir", str(saves)) as url:
        assert _status(url)["steps"] == 1 and _checksum(url) == rolled  # the rollback, restored exactly
        post_ok(url, "/mezo/train", {**STEP, "steps": 100000, "interval_s": 0}, 202)
        _train_until(url, 6, acked)
        os.killpg(PROCS[url].pid, signal.SIGKILL)
    t = _journal(run)
    assert acked <= {r.step for r in t.taken}, (acked, [r.step for r in t.taken])  # no acknowledged step lost
    assert t.rollbacks == 1 and [r.step for r in t.records] == list(range(1, len(t.records) + 1))
    n = len(t.records)
    assert n >= max(acked) >= 7
    with open(run / "trajectory.jsonl", "ab") as f:  # what a crash in the middle of a write leaves
        f.write(b'{"step": 9999, "seeds": [12')
    # 3: restored past the torn line; the model equals an offline replay of the journal, bit for bit
    t0 = time.time()
    with _serve(tiny_model, run, tmp_path / "s3.log", "--mezo-save-dir", str(saves)) as url:
        restart_s = time.time() - t0
        assert _status(url)["steps"] == n
        post_ok(url, "/mezo/save", {"path": "restored"})
        assert post_ok(url, "/mezo/save", {"path": "seeds", "model": False}) == {"path": "seeds", "steps": n,
                                                                                "model": False}
        res = post_ok(url, "/mezo/step", STEP)  # numbering and seed stream continue
        from sglang_mezo.settings import step_seeds

        assert res["step"] == n + 1 and res["seeds"] == step_seeds(STEP["seed"], n + 1, 1)
    log = (tmp_path / "s3.log").read_text()
    assert f"restored {n} steps" in log and "cut short by a crash" in log, log[-3000:]
    assert sorted(p.name for p in (saves / "seeds").iterdir()) == ["trajectory.jsonl"]
    assert trajectory.read(saves / "seeds/trajectory.jsonl")[1] == t.records
    cli("replay", "--trajectory", str(run / "trajectory.jsonl"), "--upto", str(n), "--out", str(tmp_path / "rep"))
    served, rep = saves / "restored/model/model.safetensors", tmp_path / "rep/model.safetensors"
    a, b = load_file(str(served)), load_file(str(rep))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _tensors_sha256(served) == _tensors_sha256(rep)
    print(json.dumps({"kills_survived": 2, "acknowledged": len(acked), "journaled_steps": len(t.taken),
                      "steps_lost": len(acked - {r.step for r in t.taken}), "restored": n,
                      "restart_s_tiny": round(restart_s, 1)}))


def test_a_journal_for_another_setup_is_refused_at_start(tiny_model, tiny_tied_model, tmp_path):
    """Refused before SGLang starts, naming the mismatch; nothing is served."""
    from sglang_mezo.noise import VERSION
    from sglang_mezo.serve.journal import model_sha256

    run = tmp_path / "run"
    run.mkdir()
    trajectory.write(run / "trajectory.jsonl", {"base_model": tiny_model, "base_model_sha256": model_sha256(tiny_model),
                                                "dtype": "float32", "noise": VERSION, "perturb": "layerwise"}, [])
    for model, extra, named in (
            (tiny_tied_model, (), rf"base model \(content sha256\): journal \w+\.\.\. \({tiny_model}\), this server "
                                  rf"\w+\.\.\. \({tiny_tied_model}\)"),
            (tiny_model, ("--dtype", "bfloat16"), "dtype: journal float32, this server bfloat16"),
            (tiny_model, ("--mezo-perturb", "lowrank", "--mezo-rank", "2"),
             r"perturbation mode \(--mezo-perturb\): journal layerwise, this server lowrank")):
        args = ["--model-path", model, "--port", str(free_port()), "--mezo-run-dir", str(run), *extra]
        if "--dtype" not in extra:
            args += ["--dtype", "float32"]
        p = subprocess.run([sys.executable, "-m", "sglang_mezo", "serve", *args], capture_output=True, text=True,
                           timeout=300, cwd=str(ROOT))
        assert p.returncode != 0 and re.search(named, p.stderr), p.stderr[-2000:]
        assert "is not replayed" in p.stderr


@pytest.mark.parametrize("mode", ["full", "lowrank"])
def test_stop_and_sigterm_end_training_at_a_step_boundary(tiny_model, tmp_path, mode):
    extra = ("--mezo-perturb", "lowrank", "--mezo-rank", "2") if mode == "lowrank" else ()
    run, acked = tmp_path / "run", set()
    body = {**STEP, "steps": 100000, "interval_s": 0}
    with _serve(tiny_model, run, tmp_path / "s.log", *extra) as url:
        proc = PROCS[url]
        post_ok(url, "/mezo/train", body, 202)
        _train_until(url, 2, acked)
        r = post_ok(url, "/mezo/stop", {})  # returns once training has stopped; the server stays up
        assert r["stopped"] and r["running"] is False and r["done"] >= 2 and r["error"] is None, r
        assert _status(url)["steps"] == len(_journal(run).records) == r["last"]["step"]
        assert requests.get(url + "/health", timeout=60).status_code == 200
        assert post_ok(url, "/mezo/stop", {})["stopped"] is False  # nothing running: nothing to stop

        post_ok(url, "/mezo/train", body, 202)
        st = _train_until(url, 3, acked)
        step_s = st["last"]["time_s"]
        t0 = time.time()
        os.kill(proc.pid, signal.SIGTERM)  # the main process only, as a supervisor sends it
        seen = st["last"]["step"]
        while proc.poll() is None:
            try:
                seen = max(seen, (_status(url).get("last") or {}).get("step") or 0)
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.time() - t0 < 300, "the server did not exit within 300 s of SIGTERM"
            time.sleep(0.05)
        exit_s = time.time() - t0
    t, log = _journal(run), (tmp_path / "s.log").read_text()
    m = re.search(r"training stopped; the last step is (\d+)", log)
    assert m, log[-3000:]
    assert int(m[1]) == t.records[-1].step >= seen >= max(acked)
    print(json.dumps({"mode": mode, "sigterm_to_exit_s": round(exit_s, 1), "step_s": round(step_s, 2)}))
    assert exit_s < step_s + 60, (exit_s, step_s)


def test_replicas_coordinator_resumes_where_it_was_killed(tiny_model, tmp_path):
    """`train --replicas`: coordinator and one replica killed -9 mid-run; the replica restarts from its
    journal, `train --resume` continues, and the run equals an uninterrupted one (same records, same
    final weights)."""
    admin, out = "admin-key-j", tmp_path / "dp"
    env = {**os.environ, "SGLANG_MEZO_ADMIN_API_KEY": admin}
    keys = ("--admin-api-key", admin)

    def train(urls, dest, *extra):
        return [sys.executable, "-m", "sglang_mezo", "train", "--replicas", ",".join(urls), "--task", "sst2",
                "--lr", "1e-3", "--eps", "1e-2", "--batch-size", "8", "--seed", "7", "--steps", "8",
                "--checksum-every", "2", "--out", str(dest), "--progress-off", *extra]

    with _serve(tiny_model, tmp_path / "ra", tmp_path / "a.log", *keys) as a:
        with _serve(tiny_model, tmp_path / "rb", tmp_path / "b.log", *keys) as b:
            p = subprocess.Popen(train([a, b], out), env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            deadline = time.time() + 600
            while not ((out / "trajectory.jsonl").exists() and
                       (out / "trajectory.jsonl").read_text().count("\n") >= 4):  # header + 3 steps
                assert time.time() < deadline and p.poll() is None
                time.sleep(0.05)
            p.kill()
            p.wait()
            os.killpg(PROCS[b].pid, signal.SIGKILL)
        killed_at = len(_journal(out).records)
        assert 3 <= killed_at < 8
        with _serve(tiny_model, tmp_path / "rb", tmp_path / "b2.log", *keys) as b:  # restored from its journal
            r = subprocess.run(train([a, b], out, "--resume"), env=env, cwd=str(ROOT), capture_output=True,
                               text=True, timeout=900)
            assert r.returncode == 0, r.stderr[-3000:]
            resumed = [json.loads(l) for l in open(out / "trajectory.jsonl")][1:]
            assert [x["step"] for x in resumed] == list(range(1, 9))
            final = requests.get(a + "/mezo/checksum", timeout=300, headers={"Authorization": f"Bearer {admin}"})
            assert final.json()["weights_sha256"] == resumed[-1]["extra"]["weights_sha256"]
            # the same run without interruption, from the base weights
            for u in (a, b):
                rb = requests.post(u + "/mezo/rollback", json={"steps": 8}, timeout=300,
                                   headers={"Authorization": f"Bearer {admin}"})
                assert rb.status_code == 200, rb.text
            r = subprocess.run(train([a, b], tmp_path / "dp_once"), env=env, cwd=str(ROOT), capture_output=True,
                               text=True, timeout=900)
            assert r.returncode == 0, r.stderr[-3000:]
    once = [json.loads(l) for l in open(tmp_path / "dp_once/trajectory.jsonl")][1:]
    strip = [{k: v for k, v in x.items() if k != "extra"} for x in resumed]
    assert strip == [{k: v for k, v in x.items() if k != "extra"} for x in once]
    assert resumed[-1]["extra"]["weights_sha256"] == once[-1]["extra"]["weights_sha256"]

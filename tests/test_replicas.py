"""Data-parallel MeZO across two real `sglang-mezo serve` replicas on loopback (tiny Llama, CPU):
same trajectory as one replica with the full batch, bit-identical replicas, named failures."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
import torch
from safetensors.torch import load_file

from conftest import cli
from serve_helpers import PROCS, free_port, running_server

ADMIN, USER = "admin-key-r", "user-key-r"
KEYS = ("--api-key", USER, "--admin-api-key", ADMIN)
RUN = dict(task="sst2", lr=1e-3, eps=1e-2, batch_size=8, seed=7, k_shot=16)


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("replica_saves")
    (d / "a").mkdir()
    (d / "b").mkdir()
    return d


@pytest.fixture(scope="module")
def replicas(tiny_model, save_dir, tmp_path_factory):
    """Two replicas of the tiny model, one OpenMP thread each (serve's CPU default)."""
    logs = tmp_path_factory.mktemp("replicas")
    with running_server(tiny_model, logs / "a.log", *KEYS, "--mezo-save-dir", str(save_dir / "a"),
                        start_timeout=600) as a, \
            running_server(tiny_model, logs / "b.log", *KEYS, "--mezo-save-dir", str(save_dir / "b"),
                           start_timeout=600) as b:
        yield a, b


def _client(url):
    from sglang_mezo.serve import MezoClient

    return MezoClient(url, admin_api_key=ADMIN)


def _cfg(out, **kw):
    from sglang_mezo.settings import Settings

    return Settings(out=str(out), progress=False, **{**RUN, **kw})


def _run(urls, out, every=2, timeout=600, **kw):
    from sglang_mezo.replicas import train_replicas

    return train_replicas(_cfg(out, **kw), urls, every, timeout, ADMIN)


def _lines(path):
    return [json.loads(l) for l in open(path, encoding="utf-8")][1:]


def test_bad_input_is_named_before_any_step(replicas, tmp_path):
    from sglang_mezo.replicas import ReplicaError

    a, b = replicas
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReplicaError, match=rf"replica 1 \({dead}\) does not answer"):
        _run([a, dead], tmp_path / "dead", steps=1)
    with pytest.raises(ReplicaError, match=rf"--batch-size 1 .* replica 1 \({b}\) would get no examples"):
        _run([a, b], tmp_path / "small", steps=1, batch_size=1)
    _client(b).step(task="sst2", lr=1e-3, seed=1, batch_size=4)   # b is one step ahead of a
    try:
        with pytest.raises(ReplicaError, match=rf"replica 1 \({b}\) has a different trajectory head"):
            _run([a, b], tmp_path / "heads", steps=1)
    finally:
        _client(b).rollback(1)
    with pytest.raises(ReplicaError, match=r"replica 0 .*unknown objective"):
        _run([a, b], tmp_path / "obj", steps=1, objective="nope")
    # either replica may be the late one: a tiny model can answer /mezo/info within 1 ms
    with pytest.raises(ReplicaError, match=r"replica [01] \(.*\) answered late: no reply to /mezo/\w+ within 0.001 s"):
        _run([a, b], tmp_path / "late", steps=1, timeout=0.001)
    time.sleep(3)  # let the replicas finish the request nobody waited for
    assert not any((tmp_path / d).exists() for d in ("dead", "small", "heads", "obj", "late"))  # nothing written
    # the replica ops change (or hash) the served model: admin key only, like the other /mezo routes
    for path, method in (("/mezo/losses", "post"), ("/mezo/apply", "post"), ("/mezo/info", "get")):
        r = getattr(requests, method)(a + path, json={}, headers={"Authorization": f"Bearer {USER}"}, timeout=60)
        assert r.status_code == 401, (path, r.status_code)
    r = requests.post(a + "/mezo/apply", json={"record": {"step": 1}}, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400 and "record" in r.json()["error"]


def test_two_replicas_match_one_replica_and_stay_identical(replicas, save_dir, tmp_path):
    a, b = replicas
    env = {**os.environ, "SGLANG_MEZO_ADMIN_API_KEY": ADMIN}
    p = subprocess.run([sys.executable, "-m", "sglang_mezo", "train", "--replicas", f"{a},{b}", "--task", "sst2",
                        "--lr", "1e-3", "--eps", "1e-2", "--batch-size", "8", "--seed", "7", "--steps", "4",
                        "--checksum-every", "2", "--out", str(tmp_path / "dp2"), "--progress-off"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    two = _lines(tmp_path / "dp2/trajectory.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    assert all(r["extra"]["shard_sizes"] == [4, 4] for r in two)
    assert [("weights_sha256" in r["extra"]) for r in two] == [False, True, False, True]
    ca, cb = _client(a).checksum(), _client(b).checksum()
    assert ca == cb == two[-1]["extra"]["weights_sha256"]   # bit-identical replicas

    # what the replicas hold is what the trajectory replays to
    _client(a).save("dp2")
    cli("replay", "--trajectory", str(tmp_path / "dp2/trajectory.jsonl"), "--out", str(tmp_path / "rep"))
    held, rep = load_file(str(save_dir / "a/dp2/model/model.safetensors")), load_file(str(tmp_path / "rep/model.safetensors"))
    assert all(torch.equal(held[k], rep[k]) for k in held)

    # one replica with the full batch, from the same base weights: the same trajectory
    for u in (a, b):
        _client(u).rollback(4)
    _run([a], tmp_path / "dp1", steps=4)
    one = _lines(tmp_path / "dp1/trajectory.jsonl")
    assert [r["seeds"] for r in one] == [r["seeds"] for r in two]
    for r1, r2 in zip(one, two):
        for k in ("loss_plus", "loss_minus"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-6)
    _client(a).rollback(4)


def test_replicas_behind_sglang_router(replicas, save_dir, tmp_path):
    """The recipe of docs/scale-out.md: user traffic through sglang-router (round robin over both
    replicas), `train --replicas` training both; every routed answer is what the saved weights give."""
    from transformers import AutoModelForCausalLM

    a, b = replicas
    port = free_port()
    log = open(tmp_path / "router.log", "w")
    router = subprocess.Popen([sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", a, b,
                               "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
                               "--api-key", USER], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    probe = {"input_ids": [1, 20, 30, 40, 50], "return_logprob": True,
             "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    user = {"Authorization": f"Bearer {USER}"}   # the router asks users for the key it shows the workers
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.post(url + "/generate", json=probe, headers=user, timeout=30).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline and router.poll() is None, (tmp_path / "router.log").read_text()[-2000:]
            time.sleep(1)
        _run([a, b], tmp_path / "routed", steps=2)
        assert _client(a).checksum() == _client(b).checksum()
        _client(a).save("routed")
        m = AutoModelForCausalLM.from_pretrained(str(save_dir / "a/routed/model"), dtype=torch.float32).eval()
        for _ in range(4):  # round robin: both replicas answer
            out = requests.post(url + "/generate", json=probe, headers=user, timeout=60).json()
            got = [(lp, tid) for lp, tid, *_ in out["meta_info"]["output_token_logprobs"]]
            ids = probe["input_ids"] + [tid for _, tid in got]
            with torch.no_grad():
                lp = torch.log_softmax(m(torch.tensor([ids])).logits[0], -1)
            n = len(probe["input_ids"])
            want = [lp[n + j - 1, tid].item() for j, (_, tid) in enumerate(got)]
            assert [tid for _, tid in got] == lp[n - 1:-1].argmax(-1).tolist()  # greedy under the saved weights
            assert [v for v, _ in got] == pytest.approx(want, abs=1e-4)
    finally:
        os.killpg(router.pid, signal.SIGTERM)
        router.wait(30)
        log.close()
        for u in (a, b):
            from sglang_mezo.serve import MezoClient

            c = MezoClient(u, api_key=USER, admin_api_key=ADMIN)
            if c.status()["steps"]:
                c.rollback(c.status()["steps"])


def test_replica_serving_another_model_is_named(replicas, tiny_tied_model, tmp_path):
    from sglang_mezo.replicas import ReplicaError

    a, _ = replicas
    with running_server(tiny_tied_model, tmp_path / "other.log", *KEYS, start_timeout=600) as other:
        with pytest.raises(ReplicaError, match=rf"replica 1 \({other}\) serves different weights from replica 0"):
            _run([a, other], tmp_path / "other", steps=1)
    assert not (tmp_path / "other").exists()


def test_killed_replica_is_detected_and_named(replicas, tmp_path):
    from sglang_mezo.replicas import ReplicaError

    a, b = replicas
    err = []

    def run():
        try:
            _run([a, b], tmp_path / "killed", steps=200, timeout=60)
        except ReplicaError as e:
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    metrics = tmp_path / "killed/metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert time.time() < deadline and t.is_alive()
        time.sleep(0.2)
    os.killpg(PROCS[b].pid, signal.SIGKILL)
    t.join(300)
    assert err and f"replica 1 ({b})" in str(err[0]) and "Stopped" in str(err[0]), err
    done = len(_lines(tmp_path / "killed/trajectory.jsonl"))
    assert 2 <= done < 200 and f"the {done} steps" in str(err[0])

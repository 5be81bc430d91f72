"""`sglang-mezo serve --dp-size 2` for real (tiny Llama, 2 CPU ranks): every /mezo/* operation reaches
every DP rank and leaves them identical. The --dp-size 1 reference is this process's in-process runner."""
import subprocess
import sys

import pytest
import requests
import torch
from safetensors.torch import load_file

from conftest import ROOT, cli
from serve_helpers import free_port, matches_one_rank, post_ok, running_server

EX = [{"prompt": "the movie was good It was", "candidates": [" terrible", " great"], "label": 1},
      {"prompt": "boring plot and bad acting It was", "candidates": [" terrible", " great"], "label": 0},
      {"prompt": "a wonderful story It was", "candidates": [" terrible", " great"], "label": 1},
      {"prompt": "awful film It was", "candidates": [" terrible", " great"], "label": 0}]
STEP = {"examples": EX, "lr": 1e-3, "eps": 1e-2, "seed": 5}
PROBE = {"input_ids": [1, 20, 30, 40], "sampling_params": {"max_new_tokens": 4, "temperature": 0}}


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dp_saves")


@pytest.fixture(scope="module")
def dp2(tiny_model, save_dir, tmp_path_factory):
    # one OpenMP thread per rank, rank i on core i (SGLang refuses more ranks than NUMA nodes otherwise)
    with running_server(tiny_model, tmp_path_factory.mktemp("dp2") / "server.log", "--dp-size", "2",
                        "--mezo-save-dir", str(save_dir), env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"},
                        start_timeout=600) as url:
        yield url


def _checksum(url):
    r = requests.get(url + "/mezo/checksum", timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["weights_sha256"]


def test_dp2_steps_reach_every_rank_and_equal_dp1(dp2, tiny_model, sglang_backend, save_dir, tmp_path):
    sha0 = _checksum(dp2)  # every rank hashed, and the hashes compared: it answers only if they agree
    res = [post_ok(dp2, "/mezo/step", {**STEP, "objective": obj}) for obj in ("ce", "lm", "ce")]
    assert [r["step"] for r in res] == [1, 2, 3]
    status = requests.get(dp2 + "/mezo/status", timeout=60).json()
    assert status["steps"] == 3 and status["dp_size"] == 2
    sha3 = _checksum(dp2)
    assert sha3 != sha0
    # user traffic, spread over both ranks by SGLang's DP controller, keeps being answered
    outs = [post_ok(dp2, "/generate", PROBE)["output_ids"] for _ in range(4)]
    assert all(o == outs[0] for o in outs)  # the same weights on every rank: the same greedy answer

    assert post_ok(dp2, "/mezo/save", {"path": "dp2"}) == {"path": "dp2", "steps": 3}
    saved = load_file(str(save_dir / "dp2/model/model.safetensors"))
    cli("replay", "--trajectory", str(save_dir / "dp2/trajectory.jsonl"), "--out", str(tmp_path / "rep"))
    rep = load_file(str(tmp_path / "rep/model.safetensors"))
    assert all(torch.equal(saved[k], rep[k]) for k in saved)

    # --dp-size 1 (in-process runner): the same seeds give the same losses and the same weights
    matches_one_rank(sglang_backend, save_dir / "dp2/trajectory.jsonl", EX, ("ce", "lm", "ce"), saved)

    # rollback lands on every rank: the base weights back, bit for bit, everywhere
    assert post_ok(dp2, "/mezo/rollback", {"steps": 3}) == {"steps": 0, "rolled_back": 3}
    assert _checksum(dp2) == sha0


def test_dp2_train_run_and_bad_input(dp2):
    r = requests.post(dp2 + "/mezo/step", json={**STEP, "lr": 2.0}, timeout=60)
    assert r.status_code == 400 and "between 0 and 1" in r.json()["error"]
    post_ok(dp2, "/mezo/train", {**STEP, "steps": 3, "interval_s": 0}, expect=202)
    for _ in range(600):
        st = requests.get(dp2 + "/mezo/status", timeout=60).json()
        if not st["running"]:
            break
        import time

        time.sleep(0.5)
    assert st["error"] is None and st["done"] == 3
    before = _checksum(dp2)
    assert post_ok(dp2, "/mezo/rollback", {"steps": 3})["steps"] == 0
    assert _checksum(dp2) != before


def test_what_dp_cannot_combine_is_refused_at_start(tiny_model):
    for extra, match in ((["--mezo-perturb", "lowrank", "--mezo-rank", "2"], "--mezo-perturb lowrank cannot run"),
                         (["--mezo-rpc-timeout", "0"], "--mezo-rpc-timeout must be > 0")):
        p = subprocess.run([sys.executable, "-m", "sglang_mezo", "serve", "--model-path", tiny_model,
                            "--dp-size", "2", "--port", str(free_port()), *extra], cwd=str(ROOT),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode != 0 and match in p.stderr, p.stderr[-2000:]


def test_a_scheduler_that_does_not_answer_is_a_timeout_not_a_hang():
    import zmq

    from sglang_mezo.serve.plugin import NoReply, call

    sock = zmq.Context().socket(zmq.DEALER)
    sock.bind("ipc:///tmp/sglang_mezo_no_scheduler_here")   # nobody connects: no reply will come
    with pytest.raises(NoReply, match="no scheduler took status within 0.2 s"):
        call(sock, "status", {}, timeout=0.2)
    silent = zmq.Context().socket(zmq.DEALER)   # a scheduler that takes the call and never answers
    silent.connect("ipc:///tmp/sglang_mezo_no_scheduler_here")
    with pytest.raises(NoReply, match="no reply to status within 0.5 s"):
        call(sock, "status", {}, timeout=0.5)
    silent.close(linger=0)
    sock.close(linger=0)

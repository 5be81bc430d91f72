"""Tensor parallelism for real: a `sglang-mezo serve --tp 2` (tiny Llama, 2 CPU ranks) steps, saves and
replays like TP = 1. The TP = 1 reference is this process's in-process SGLang runner on the same model."""
import pytest
import requests
import torch
from safetensors.torch import load_file

from conftest import cli
from serve_helpers import matches_one_rank, post_ok, running_server

EX = [{"prompt": "the movie was good It was", "candidates": [" terrible", " great"], "label": 1},
      {"prompt": "boring plot and bad acting It was", "candidates": [" terrible", " great"], "label": 0},
      {"prompt": "a wonderful story It was", "candidates": [" terrible", " great"], "label": 1},
      {"prompt": "awful film It was", "candidates": [" terrible", " great"], "label": 0}]
STEP = {"examples": EX, "lr": 1e-3, "eps": 1e-2, "seed": 5}


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tp_saves")


@pytest.fixture(scope="module")
def tp2(tiny_model, save_dir, tmp_path_factory):
    # one OpenMP thread per rank, rank i on core i: without the binding SGLang refuses more ranks
    # than NUMA nodes on CPU
    with running_server(tiny_model, tmp_path_factory.mktemp("tp2") / "server.log", "--tp", "2",
                        "--mezo-save-dir", str(save_dir), env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"},
                        start_timeout=600) as url:
        yield url


def test_tp2_step_save_replay_match_tp1(tp2, tiny_model, sglang_backend, save_dir, tmp_path):
    res = [post_ok(tp2, "/mezo/step", {**STEP, "objective": obj}) for obj in ("ce", "lm", "ce")]
    assert [r["step"] for r in res] == [1, 2, 3]
    assert post_ok(tp2, "/mezo/save", {"path": "tp2"}) == {"path": "tp2", "steps": 3}
    saved = load_file(str(save_dir / "tp2/model/model.safetensors"))
    base = load_file(f"{tiny_model}/model.safetensors")
    # every rank's shard arrived: (nearly) every element moved; a missing shard would be a block left at
    # the base value (a handful may round back to it)
    for k in base:
        assert (saved[k] == base[k]).float().mean().item() < 0.01, k

    # the trajectory replays (whole HF tensors: the TP = 1 arithmetic) to the saved weights, bit for bit
    cli("replay", "--trajectory", str(save_dir / "tp2/trajectory.jsonl"), "--out", str(tmp_path / "rep"))
    rep = load_file(str(tmp_path / "rep/model.safetensors"))
    assert all(torch.equal(saved[k], rep[k]) for k in saved)

    # TP = 1 (in-process runner): the same seeds give the same losses; replaying gives the same weights
    matches_one_rank(sglang_backend, save_dir / "tp2/trajectory.jsonl", EX, ("ce", "lm", "ce"), saved)


def test_tp2_bad_save_is_refused_on_every_rank_and_serving_continues(tp2):
    post_ok(tp2, "/mezo/save", {"path": "twice"})
    r = requests.post(tp2 + "/mezo/save", json={"path": "twice"}, timeout=120)
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    # no rank is left waiting in the gather: the next calls work
    assert post_ok(tp2, "/mezo/save", {"path": "twice", "overwrite": True})["path"] == "twice"
    out = post_ok(tp2, "/generate", {"text": "It was", "sampling_params": {"max_new_tokens": 3}})
    assert out["meta_info"]["completion_tokens"] >= 1
    assert len(requests.get(tp2 + "/mezo/checksum", timeout=120).json()["weights_sha256"]) == 64


def test_engine_with_tp2_steps_and_saves(tiny_model, tmp_path):
    """The same plugin under sglang.Engine(tp_size=2) driven by EngineTrainer (collective_rpc)."""
    from conftest import last_json, run_py

    res = last_json(run_py(["tests/engine_tp_check.py", tiny_model, str(tmp_path / "eng")]).stdout)
    assert res["steps"] == [1, 2] and res["saved"]["steps"] == 2
    cli("replay", "--trajectory", str(tmp_path / "eng/trajectory.jsonl"), "--out", str(tmp_path / "rep"))
    saved, rep = load_file(str(tmp_path / "eng/model/model.safetensors")), load_file(str(tmp_path / "rep/model.safetensors"))
    base = load_file(f"{tiny_model}/model.safetensors")
    assert all(torch.equal(saved[k], rep[k]) and not torch.equal(saved[k], base[k]) for k in saved)

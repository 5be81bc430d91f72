"""A real `sglang-mezo serve` on loopback (tiny Llama, CPU): training while serving, exactness, bad input."""
import json
import math
import threading
import time

import pytest
import requests
import torch
from safetensors.torch import load_file

from conftest import cli
from serve_helpers import running_server, post_ok

PROBE = {"text": "the movie was good It was", "sampling_params": {"max_new_tokens": 4, "temperature": 0},
         "return_logprob": True, "logprob_start_len": 0}
STEP = {"task": "sst2", "lr": 1e-3, "eps": 1e-2, "batch_size": 8, "seed": 3}
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tiny_model, tmp_path_factory):
    """The tiny model with a chat template added to its tokenizer (same weights)."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_chat") / "model"
    shutil.copytree(tiny_model, out)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = CHAT
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("saves")


@pytest.fixture(scope="module")
def server(chat_model, save_dir, tmp_path_factory):
    with running_server(chat_model, tmp_path_factory.mktemp("serve") / "server.log",
                        "--mezo-save-dir", str(save_dir)) as url:
        yield url


def _probe(url):
    out = post_ok(url, "/generate", PROBE)
    return out["output_ids"], [t[0] for t in out["meta_info"]["input_token_logprobs"][1:]]


def _offline_logprobs(model_dir, tokenizer_ids):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(m(torch.tensor([tokenizer_ids])).logits[0], -1)
    return [lp[j - 1, tokenizer_ids[j]].item() for j in range(1, len(tokenizer_ids))]


def test_train_while_serving_exact_probe_rollback_and_replay(server, chat_model, save_dir, tmp_path):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(chat_model).encode(PROBE["text"])
    out0, lp0 = _probe(server)
    assert lp0 == pytest.approx(_offline_logprobs(chat_model, ids), abs=1e-4)

    # ordinary traffic from another thread for the whole training run: every request must succeed
    stop, codes = threading.Event(), []

    def load():
        for i in range(400):
            if stop.is_set():
                break
            r = requests.post(server + "/generate", json={"text": f"a fun film number {i}",
                              "sampling_params": {"max_new_tokens": 8, "temperature": 0.7}}, timeout=120)
            codes.append(r.status_code)

    t = threading.Thread(target=load)
    t.start()
    try:
        assert post_ok(server, "/mezo/train", {**STEP, "steps": 20}, 202)["steps"] == 20
        deadline = time.time() + 300
        while (st := requests.get(server + "/mezo/status", timeout=60).json())["running"]:
            assert time.time() < deadline
            time.sleep(0.5)
        assert st["done"] == 20 and st["error"] is None and st["steps"] == 20
    finally:
        stop.set()
        t.join()
    assert codes and all(c == 200 for c in codes), codes

    # between steps, the probe sees exactly the current (unperturbed) weights
    for k in range(2):
        res = post_ok(server, "/mezo/step", STEP)
        assert res["step"] == 21 + k and len(res["projected_grad"]) == 1
        _, lp = _probe(server)
        assert post_ok(server, "/mezo/save", {"path": f"save{k}"}) == {"path": f"save{k}", "steps": 21 + k}
        save = save_dir / f"save{k}"
        assert lp == pytest.approx(_offline_logprobs(str(save / "model"), ids), abs=1e-4)
        assert lp != pytest.approx(lp0, abs=1e-6)

    # the server's trajectory replays to the weights it saved
    rep = tmp_path / "replayed"
    cli("replay", "--trajectory", str(save / "trajectory.jsonl"), "--out", str(rep))
    a, b = load_file(str(save / "model/model.safetensors")), load_file(str(rep / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # rolling back every step gives the original model back exactly
    assert post_ok(server, "/mezo/rollback", {"steps": 22}) == {"steps": 0, "rolled_back": 22}
    assert _probe(server) == (out0, lp0)


@pytest.mark.parametrize("path,body,status,match", [
    ("/mezo/step", {"task": "sst2", "k_shot": -1}, 400, "'k_shot' (--k-shot) must be between 0 and"),
    ("/mezo/step", {"lr": 1e-3}, 400, "exactly one of"),
    ("/mezo/step", {"task": "sst2", "lr": "fast"}, 400, "must be a number"),
    ("/mezo/step", {"task": "sst2", "lr": float("nan")}, 400, "must be finite"),
    ("/mezo/step", {"task": "sst2", "lr": 1e-3, "batch_size": 2.5}, 400, "integer"),
    ("/mezo/step", {"task": "no_such_task", "lr": 1e-3}, 400, "unknown task"),
    ("/mezo/step", {"examples": [{"prompt": "x", "candidates": [" a"], "label": 0}], "lr": 1e-3}, 400, "candidates"),
    ("/mezo/step", {"task": "sst2", "lr": 1e-3, "objective": "nope"}, 400, "unknown objective"),
    # a class id without candidates is an encoder classifier's example; this server is a language model
    ("/mezo/step", {"examples": [{"prompt": "x", "label": 0}], "lr": 1e-3}, 400, "without 'candidates'"),
    ("/mezo/step", {"examples": [{"prompt": "x", "label": -1}], "lr": 1e-3}, 400, "class id >= 0"),
    ("/mezo/step", {"examples": [{"prompt": "good " * 600, "candidates": [" a", " b"], "label": 0}], "lr": 1e-3},
     400, "tokens long"),
    ("/mezo/step", {"task": "sst2", "lr": 2.0}, 400, "between 0 and 1"),
    ("/mezo/step", {"task": "sst2", "lr": 1e-3, "chat_template": "yes"}, 400, "true or false"),
    ("/mezo/step", {"task": "my_task", "lr": 1e-3}, 400, "--mezo-task-dir"),
    ("/mezo/step", {"task": "sst2", "lr": 1e-3, "colour": "red"}, 400, "unknown field"),
    ("/mezo/train", {"task": "sst2", "lr": 1e-3}, 400, "missing field 'steps'"),
    ("/mezo/train", {"task": "sst2", "lr": 1e-3, "steps": -1}, 400, "between 1 and"),
    ("/mezo/train", {"task": "sst2", "lr": 1e-3, "steps": 2, "interval_s": -1}, 400, "between 0 and"),
    ("/mezo/step", {"task": "sst2", "lr": 1e-3, "steps": 3}, 400, "belong to /mezo/train"),
    ("/mezo/train", {"task": "sst2", "lr": 1e-3, "steps": 2, "schedule": "sometimes"}, 400, "'schedule'"),
    ("/mezo/train", {"task": "sst2", "lr": 1e-3, "steps": 2, "schedule": "idle", "quiet_s": -1}, 400,
     "'quiet_s' must be between 0"),
    ("/mezo/train", {"task": "sst2", "lr": 1e-3, "steps": 2, "quiet_s": 2}, 400, "'quiet_s' applies to"),
    ("/mezo/step", {"task": "sst2", "lr": 1e-3, "schedule": "idle"}, 400, "belong to /mezo/train"),
    ("/mezo/rollback", {"steps": "all"}, 400, "integer"),
    ("/mezo/rollback", {"steps": 10_000}, 409, "only"),
    ("/mezo/save", {}, 400, "'path'"),
    ("/mezo/save", [], 400, "JSON object"),
    ("/mezo/save", {"path": "/tmp/x"}, 400, "relative name"),
])
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, path, body, status, match):
    r = requests.post(server + path, data=json.dumps(body), headers={"content-type": "application/json"},
                      timeout=120)
    assert r.status_code == status, r.text
    assert match in r.json()["error"]
    assert requests.get(server + "/health", timeout=30).status_code == 200
    assert post_ok(server, "/generate", PROBE)["output_ids"]


def test_step_while_training_is_refused(server):
    post_ok(server, "/mezo/train", {**STEP, "steps": 6}, 202)
    r = requests.post(server + "/mezo/step", json=STEP, timeout=60)
    assert r.status_code == 409 and "in progress" in r.json()["error"]
    r = requests.post(server + "/mezo/train", json={**STEP, "steps": 1}, timeout=60)
    assert r.status_code == 409
    while requests.get(server + "/mezo/status", timeout=60).json()["running"]:
        time.sleep(0.3)
    post_ok(server, "/mezo/rollback", {"steps": 6})
    r = requests.post(server + "/mezo/step", data="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_idle_schedule_starts_no_step_while_users_are_served(server):
    """Under "schedule": "idle", while user requests follow each other (gaps far below quiet_s) no step
    starts; once they stop, the steps run, and each began with no user request waiting or running."""
    before = requests.get(server + "/mezo/status", timeout=60).json()["steps"]
    stop, served = threading.Event(), []

    def users():
        while not stop.is_set():
            served.append(post_ok(server, "/generate", PROBE)["output_ids"])

    t = threading.Thread(target=users)
    t.start()
    try:
        while len(served) < 3:  # users are being served
            time.sleep(0.05)
        post_ok(server, "/mezo/train", {**STEP, "steps": 2, "schedule": "idle", "quiet_s": 1.0}, 202)
        n = len(served)
        while len(served) < n + 15:  # a good many user requests later...
            time.sleep(0.05)
        s = requests.get(server + "/mezo/status", timeout=60).json()
        assert s["running"] and s["done"] == 0 and s["error"] is None, s  # ...not one step has started
    finally:
        stop.set()
        t.join()
    while (s := requests.get(server + "/mezo/status", timeout=60).json())["running"]:
        time.sleep(0.2)
    assert s["error"] is None and s["done"] == 2 and s["steps"] == before + 2, s
    start = s["load_at_start"]
    assert start["user_waiting"] == 0 and start["user_running"] == 0 and start["quiet_s"] >= 1.0, start
    assert start["since_idle_op_s"] >= 1.0, start  # the second step waited a quiet time after the first
    assert s["steps_per_min"] > 0 and 0 < s["train_engine_fraction"] <= 1, s
    assert s["user_requests"] >= 1 and s["user_queue_wait_ms"]["n"] >= 1, s
    post_ok(server, "/mezo/rollback", {"steps": 2})


def test_chat_template_wraps_prompts(server, chat_model):
    """`chat_template: true` scores exactly the prompts tasks/chat.py's apply_chat_template makes."""
    from transformers import AutoTokenizer

    from sglang_mezo.tasks import Example
    from sglang_mezo.tasks.chat import apply_chat_template

    ex = [{"prompt": "good fun It was", "candidates": [" terrible", " great"], "label": 1},
          {"prompt": "awful plot It was", "candidates": [" terrible", " great"], "label": 0}]
    tok = AutoTokenizer.from_pretrained(chat_model)
    wrapped = [{**e, "prompt": w.prompt} for e, w in zip(ex, apply_chat_template(
        [Example(e["prompt"], e["candidates"], e["label"]) for e in ex], tok))]
    assert all(w["prompt"] != e["prompt"] and e["prompt"] in w["prompt"] for e, w in zip(ex, wrapped))

    def losses(body):  # lr 0 and a rollback: every call sees the same weights and step number
        res = post_ok(server, "/mezo/step", {"lr": 0.0, "eps": 1e-2, "seed": 11, **body})
        post_ok(server, "/mezo/rollback", {"steps": 1})
        return res["loss_plus"], res["loss_minus"]

    chat = losses({"examples": ex, "chat_template": True})
    assert chat == losses({"examples": wrapped})
    assert chat != losses({"examples": ex})
    assert post_ok(server, "/mezo/step", {**STEP, "chat_template": True})["step"] >= 1
    post_ok(server, "/mezo/rollback", {"steps": 1})


def test_engine_trainer_on_sglang_engine(tiny_model):
    from conftest import last_json, run_py

    res = last_json(run_py(["tests/engine_trainer_check.py", tiny_model]).stdout)
    assert res["steps"] == [1, 2, 3] and res["changed"] and res["restored"]
    assert res["bad_status"] == 400 and res["status"]["steps"] == 0


def test_results_come_back_over_sglang_rpc_not_a_shared_tmpdir(tiny_model, tmp_path):
    """The schedulers' TMPDIR differs from the HTTP process's, and the HTTP process's temporary directory
    is gone before the step: a result handed over through a file there could not arrive."""
    http_tmp, sched_tmp = tmp_path / "http_tmp", tmp_path / "sched_tmp"
    http_tmp.mkdir()
    sched_tmp.mkdir()
    with running_server(tiny_model, tmp_path / "server.log",
                        launcher=("tests/serve_split_tmp.py", http_tmp, sched_tmp)) as url:
        assert requests.get(url + "/mezo/status", timeout=300).json()["steps"] == 0
        http_tmp.rename(tmp_path / "http_tmp_gone")  # (SGLang's sockets there are connected already)
        res = post_ok(url, "/mezo/step", STEP)
        assert res["step"] == 1 and all(map(math.isfinite, res["loss_plus"] + res["loss_minus"]))
        assert requests.get(url + "/mezo/status", timeout=300).json()["steps"] == 1
        assert post_ok(url, "/mezo/step", {**STEP, "lr": 2.0}, expect=400)["error"].startswith("'lr' (--lr) must be")


# the same settings refused by `sglang-mezo train` flags and by /mezo/step fields (settings.py)
REFUSED = [(["--k-shot", "-1"], {"k_shot": -1}), (["--lr", "2"], {"lr": 2}), (["--lr", "nan"], {"lr": math.nan}),
           (["--lr", "fast"], {"lr": "fast"}), (["--eps", "0"], {"eps": 0}), (["--n-queries", "65"], {"n_queries": 65}),
           (["--batch-size", "5000"], {"batch_size": 5000}), (["--batch-size", "2.5"], {"batch_size": "2.5"}),
           (["--seed", "-3"], {"seed": -3}), (["--estimator", "three_point"], {"estimator": "three_point"}),
           (["--temperature", "11"], {"temperature": 11}), (["--max-new-tokens", "0"], {"max_new_tokens": 0})]


def _cli_error(capsys, *flags) -> str:
    from sglang_mezo import cli

    assert cli.main(["train", "--out", "unused_out", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sglang-mezo train: error: "), err
    return err.removeprefix("sglang-mezo train: error: ")


@pytest.mark.parametrize("flags,field", REFUSED)
def test_cli_and_http_refuse_the_same_settings_with_the_same_message(server, capsys, flags, field):
    r = requests.post(server + "/mezo/step", data=json.dumps({"task": "sst2", **field}), timeout=120,
                      headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    name = next(iter(field))
    assert r.json()["error"] == _cli_error(capsys, *flags)
    assert r.json()["error"].startswith(f"'{name}' ({flags[0]}) must be")


def test_cli_and_http_accept_the_same_settings(server, capsys, tmp_path):
    """k_shot 0 (the 1,000-example setting) and no lr (its default) pass both; the CLI then stops at the
    missing model, after the settings were accepted."""
    for flags, field in ((["--k-shot", "0"], {"k_shot": 0, "lr": 0}), ([], {})):
        res = post_ok(server, "/mezo/step", {"task": "sst2", "batch_size": 4, "seed": 9, **field})
        assert res["step"] >= 1
        post_ok(server, "/mezo/rollback", {"steps": 1})
        assert "model folder not found" in _cli_error(capsys, "--model", str(tmp_path / "none"), *flags)

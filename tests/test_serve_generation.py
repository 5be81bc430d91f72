"""Generation objectives over HTTP on a real `sglang-mezo serve` (tiny Llama, CPU): a step on the served
engine's own generations (reward or lm), /mezo/train on a generation task, and bad input getting a 4xx
while the weights stay as they were and the server keeps serving."""
import time

import pytest
import requests

from serve_helpers import running_server, post_ok

EXAMPLES = [{"prompt": "the movie was good It was", "answers": ["great", "good"]},
            {"prompt": "boring and awful It was", "answers": "terrible"},
            {"prompt": "a fun story and", "answers": ["fun"]}]
STEP = {"examples": EXAMPLES, "lr": 1e-3, "eps": 5e-2, "seed": 3, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with running_server(tiny_model, tmp_path_factory.mktemp("serve_gen") / "server.log",
                        "--mezo-objective", "length=tests.gen_rewards:char_length",
                        "--mezo-objective", "boom=tests.gen_rewards:raises",
                        "--mezo-objective", "nan=tests.gen_rewards:nan") as url:
        yield url


def checksum(url):
    return requests.get(url + "/mezo/checksum", timeout=120).json()["weights_sha256"]


def serves(url):
    out = post_ok(url, "/generate", {"text": "a fun film", "sampling_params": {"max_new_tokens": 3}})
    return len(out["output_ids"]) == 3


def test_reward_step_on_served_generations(server):
    before = checksum(server)
    res = post_ok(server, "/mezo/step", {**STEP, "objective": "length", "temperature": 1.0})
    # loss = −mean reward of the generations; the reward watched is the same quantity
    assert res["reward"] == pytest.approx(-(res["loss_plus"][0] + res["loss_minus"][0]) / 2)
    assert res["generate_s"] > 0 and "lm_loss" not in res
    assert res["projected_grad"][0] == pytest.approx((res["loss_plus"][0] - res["loss_minus"][0]) / 0.1)
    assert (checksum(server) != before) == (res["projected_grad"][0] != 0)
    res = post_ok(server, "/mezo/step", {**STEP, "objective": "lm"})       # the differentiable comparison
    assert res["loss_plus"][0] > 0 and res["projected_grad"][0] != 0
    res = post_ok(server, "/mezo/step", {**STEP})                           # default: f1 on the answers
    assert -1 <= res["loss_plus"][0] <= 0
    assert serves(server)


def test_train_on_a_generation_task(server):
    post_ok(server, "/mezo/train", {"task": "nq_open", "steps": 2, "lr": 1e-4, "eps": 1e-2, "batch_size": 2,
                                 "seed": 1, "max_new_tokens": 4}, 202)
    deadline = time.time() + 600
    while (st := requests.get(server + "/mezo/status", timeout=60).json())["running"]:
        assert time.time() < deadline
        time.sleep(0.5)
    assert st["error"] is None and st["done"] == 2
    assert -1 <= st["last"]["loss"] <= 0   # −(mean F1 over ±εz), the task's default objective
    assert serves(server)


@pytest.mark.parametrize("body, match", [
    ({"objective": "boom"}, "raised RuntimeError: reward server unreachable"),
    ({"objective": "nan"}, "returned nan"),
    ({"objective": "tests.gen_rewards:char_length"}, "cannot name code to import"),
    ({"objective": "ce"}, "scores candidates"),
    ({"max_new_tokens": 0}, "'max_new_tokens' (--max-new-tokens) must be between 1"),
    ({"max_new_tokens": 4000}, "this server takes at most"),
    ({"examples": [{"prompt": "x", "answers": 3}]}, "'answers'"),
])
def test_bad_generation_requests_get_4xx_and_change_nothing(server, body, match):
    before = checksum(server)
    r = requests.post(server + "/mezo/step", json={**STEP, **body}, timeout=300)
    assert r.status_code == 400 and match in r.json()["error"], r.text
    assert checksum(server) == before
    assert serves(server)

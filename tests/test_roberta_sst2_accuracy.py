"""The seed's own case (its test was `test_mezo_roberta_sst2_accuracy.py`): MeZO with the accuracy objective
(`preds = argmax(logits)`, `loss = −accuracy`) on a RoBERTa SST-2 classifier, on the real engine.

A tiny random `RobertaForSequenceClassification` with a real byte-level BPE tokenizer is built offline
(tests/tiny_models.make_tiny_roberta). SGLang has no RoBERTa class of its own: it builds the folder as its
XLM-R twin (backends/encoder.SGLANG_ARCH). Checked: SGLang's class logits equal transformers' (fp32),
`<s> … </s>` framing and positions from padding_idx + 1 up to the last row of the table; the accuracy
objective trains on SST-2 through the sglang and the hf backends with the same losses; replay is
bit-identical; a headless `RobertaModel` trains with `--num-labels`; `sglang-mezo serve` answers
/classify with the trained weights; an encoder architecture we do not train is refused by name, with
the accepted list, before any step. The pytest process holds the tiny Llama runner, so every engine here
runs in a subprocess."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import torch

from conftest import cli, last_json, run_py
from serve_helpers import post_ok, running_server

TRAIN = ["--task", "sst2", "--objective", "accuracy", "--k-shot", "16", "--seed", "42", "--steps", "8",
         "--batch-size", "16", "--lr", "1e-2", "--eps", "1e-1", "--n-test", "64", "--keep", "last",
         "--progress-off"]
TEXTS = ["a gorgeous , witty , seductive movie .", "dull , dull and far too long", "It was great"]


def _sst2_train_prompts() -> list[str]:
    from sglang_mezo import tasks

    data = tasks.splits(tasks.get_task("sst2"), k_shot=16, seed=42, n_train=None, n_dev=None, n_test=64,
                        data_dir=None)
    return [e.prompt for e in data["train"]]


@pytest.fixture(scope="module")
def roberta(tmp_path_factory) -> str:
    """A 2-class tiny RoBERTa whose head is centred on SST-2 text: predictions split between the classes."""
    from tests.tiny_models import make_tiny_roberta

    return make_tiny_roberta(str(tmp_path_factory.mktemp("tiny_roberta")), centre_on=_sst2_train_prompts())


@pytest.fixture(scope="module")
def runs(roberta, tmp_path_factory) -> dict[str, Path]:
    """The same accuracy run through each backend (one engine at a time)."""
    d = tmp_path_factory.mktemp("roberta_runs")
    out = {}
    for backend in ("sglang", "hf"):
        out[backend] = d / backend
        cli("train", "--model", roberta, "--backend", backend, "--out", str(out[backend]), *TRAIN)
    return out


def _st(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _steps(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "trajectory.jsonl").read_text().splitlines()[1:]]


def _reference(model_dir: str, texts: list[str]) -> torch.Tensor:
    from sglang_mezo.backends.hf_encoder import HFEncoderBackend

    hf = HFEncoderBackend(model_dir, device="cpu")
    return hf.classify(hf.encode(texts))


def test_sglang_logits_equal_transformers(roberta):
    r = last_json(run_py(["tests/encoder_check.py", roberta]).stdout)
    assert r["sglang_type"] == "SGLangEncoderBackend" and r["num_labels"] == 2
    assert r["logits_gap"] <= 1e-5 and r["logits_gap_after"] <= 1e-5     # fp32, before and after noise
    assert r["batch_vs_alone"] <= 1e-5
    assert r["max_len"] == [128, 128] and r["long_len"] == 128          # 130 rows − (padding_idx 1 + 1)
    assert r["long_gap"] <= 1e-5                                         # the last position row is right
    assert r["padding_rows"] == 0                                        # type_vocab_size 1: nothing padded
    assert r["names_equal"] and r["mismatched"] == 0 and r["moved"] >= 0.999 * r["elements"]
    assert r["accuracy"][0] == r["accuracy"][1]
    for b in ("sglang", "hf"):
        assert all(r[f"{b}_windows"].values())
    logits = torch.tensor(r["hf_logits"])
    assert (logits.argmax(-1) == 0).any() and (logits.argmax(-1) == 1).any()  # not one class for all


def test_tokenizer_frames_with_s_and_slash_s(roberta):
    from sglang_mezo.backends.hf_encoder import HFEncoderBackend

    hf = HFEncoderBackend(roberta, device="cpu")
    ids = hf.encode(["the movie was good"])[0]
    assert ids[0] == hf.tokenizer.bos_token_id == 0 and ids[-1] == hf.tokenizer.eos_token_id == 2
    assert hf.tokenizer.pad_token_id == hf.model.config.pad_token_id == 1 and 1 not in ids


def test_accuracy_objective_same_losses_on_both_backends(runs):
    s, h = _steps(runs["sglang"]), _steps(runs["hf"])
    assert len(s) == len(h) == 8
    for a, b in zip(s, h):
        assert (a["loss_plus"], a["loss_minus"], a["grads"]) == (b["loss_plus"], b["loss_minus"], b["grads"])
    losses = [v for x in s for v in x["loss_plus"] + x["loss_minus"]]
    assert all(-1 <= v <= 0 and v * 16 == round(v * 16) for v in losses)  # −accuracy over 16 examples
    assert len(set(losses)) > 1 and any(x["grads"][0] != 0 for x in s)      # the objective moved
    ms, mh = _st(runs["sglang"] / "model"), _st(runs["hf"] / "model")
    assert sorted(ms) == sorted(mh) and all(torch.equal(ms[k], mh[k]) for k in ms)  # same trained weights
    cfg = json.loads((runs["sglang"] / "config.json").read_text())
    assert cfg["objective"] == "accuracy" and cfg["task"] == "sst2"
    test = [json.loads(l) for l in (runs["sglang"] / "metrics.jsonl").read_text().splitlines()][-1]
    test_hf = [json.loads(l) for l in (runs["hf"] / "metrics.jsonl").read_text().splitlines()][-1]
    assert test["accuracy"] == test_hf["accuracy"]


def test_replay_is_bit_identical_and_eval_agrees(roberta, runs, tmp_path):
    run = runs["sglang"]
    cli("replay", "--trajectory", str(run / "trajectory.jsonl"), "--out", str(tmp_path / "replayed"))
    trained, replayed, base = _st(run / "model"), _st(tmp_path / "replayed"), _st(roberta)
    assert sorted(trained) == sorted(replayed) == sorted(base)
    assert all(torch.equal(trained[k], replayed[k]) for k in trained)
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["architectures"] == ["RobertaForSequenceClassification"]  # SGLang's XLM-R name stays out
    ev = last_json(cli("eval", "--model", str(run / "model"), "--task", "sst2", "--limit", "64").stdout)
    test = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert ev["n"] == 64 and ev["accuracy"] == test["accuracy"]


def test_headless_roberta_gets_a_seeded_head(tmp_path):
    from tests.tiny_models import make_tiny_roberta

    enc = make_tiny_roberta(str(tmp_path / "roberta_model"), headless=True)
    assert json.loads((Path(enc) / "config.json").read_text())["architectures"] == ["RobertaModel"]
    p = cli("train", "--model", enc, "--task", "sst2", "--steps", "1", "--out", str(tmp_path / "no"), check=False)
    assert p.returncode == 2 and "--num-labels" in p.stderr and not (tmp_path / "no").exists()
    out = tmp_path / "run"
    r = last_json(cli("train", "--model", enc, "--num-labels", "2", "--out", str(out), "--trainable",
                      "^classifier", *TRAIN[:TRAIN.index("--steps")], "--steps", "3", "--batch-size", "8",
                      "--eps", "1", "--n-test", "16", "--progress-off").stdout)
    head = json.loads((Path(r["model"]) / "config.json").read_text())
    assert head["architectures"] == ["RobertaForSequenceClassification"]
    assert head["sglang_mezo_head"] == {"source": str(Path(enc).resolve()), "seed": 0, "num_labels": 2,
                                      "pooling": "cls"}
    header = json.loads((out / "trajectory.jsonl").read_text().splitlines()[0])
    assert header["trainable_names"] == ["classifier.dense.weight", "classifier.dense.bias",
                                         "classifier.out_proj.weight", "classifier.out_proj.bias"]
    w, src = _st(r["model"]), _st(enc)
    assert all(torch.equal(w["roberta." + k], v) for k, v in src.items())  # the encoder as it was
    assert w["classifier.out_proj.weight"].std() > 0 and not w["classifier.out_proj.bias"].any()
    steps = _steps(out)
    assert len(steps) == 3 and all(-1 <= v <= 0 for s in steps for v in s["loss_plus"] + s["loss_minus"])


def _folder(tmp_path, arch: str, model_type: str) -> str:
    d = tmp_path / arch
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": model_type}))
    (d / "model.safetensors").write_bytes(b"")  # never read: the architecture is refused first
    return str(d)


@pytest.mark.parametrize("arch, model_type", [
    ("DistilBertForSequenceClassification", "distilbert"),
    ("RobertaForMaskedLM", "roberta"),                     # roberta-base's own architecture: no head
    ("AlbertModel", "albert"),                             # a headless encoder we have no SGLang class for
    ("LlamaForSequenceClassification", "llama"),           # SGLang serves it; MeZO has no objective for it
])
def test_unsupported_encoder_is_refused_before_any_step(tmp_path, arch, model_type):
    from sglang_mezo.backends.encoder import CLASSIFIER_ARCHS, HEADLESS_ARCHS

    from sglang_mezo.trajectory import FORMAT

    model, out = _folder(tmp_path, arch, model_type), str(tmp_path / "out")
    commands = [["train", "--model", model, "--task", "sst2", "--steps", "1", "--out", out]]
    if arch.startswith("DistilBert"):  # every command's path, once (each is a CLI start, ~5 s)
        (tmp_path / "t.jsonl").write_text(json.dumps({"format": FORMAT, "base_model": model}) + "\n")
        commands += [["train", "--model", model, "--task", "sst2", "--num-labels", "2", "--out", out],
                     ["eval", "--model", model, "--task", "sst2", "--limit", "4"],
                     ["replay", "--trajectory", str(tmp_path / "t.jsonl"), "--out", out]]
    for cmd in commands:
        p = cli(*cmd, check=False)
        assert p.returncode == 2, p.stderr[-2000:]
        assert arch in p.stderr, p.stderr[-500:]
        for accepted in CLASSIFIER_ARCHS + HEADLESS_ARCHS:
            assert accepted in p.stderr, (accepted, p.stderr[-800:])
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch, model_type", [
    ("LlamaForCausalLM", "llama"), ("Qwen3Model", "qwen3"), ("ChatGLMModel", "chatglm"),
    ("RobertaForSequenceClassification", "roberta"), ("RobertaModel", "roberta"),
])
def test_decoders_and_accepted_encoders_pass_the_check(tmp_path, arch, model_type):
    from sglang_mezo.backends.encoder import unsupported

    assert unsupported(_folder(tmp_path, arch, model_type)) is None


def test_serve_argv_builds_roberta_as_xlm_r(roberta):
    from sglang_mezo.backends.encoder import serve_argv

    argv = serve_argv(["--model-path", roberta, "--json-model-override-args", '{"position_embedding_type": "x"}'])
    override = json.loads(argv[argv.index("--json-model-override-args") + 1])
    assert override == {"position_embedding_type": "x",                  # the operator's key wins
                        "architectures": ["XLMRobertaForSequenceClassification"]}
    assert "--disable-radix-cache" in argv and argv.count("--json-model-override-args") == 1
    # SGLang refuses inputs of >= context length tokens, or cuts them to context length: 128 tokens pass
    assert argv[argv.index("--context-length") + 1] == "129"
    argv = serve_argv(["--model-path", roberta, "--allow-auto-truncate"])
    assert argv[argv.index("--context-length") + 1] == "128"
    assert json.loads(argv[argv.index("--json-model-override-args") + 1]) == {
        "position_embedding_type": "absolute", "architectures": ["XLMRobertaForSequenceClassification"]}


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    with running_server(str(runs["sglang"] / "model"), tmp_path_factory.mktemp("serve_roberta") / "server.log") as url:
        yield url


def test_classify_serves_the_trained_weights(server, roberta, runs):
    trained = str(runs["sglang"] / "model")
    out = torch.tensor([o["embedding"] for o in post_ok(server, "/classify", {"text": TEXTS})])
    assert out.shape == (3, 2)
    assert torch.allclose(out, _reference(trained, TEXTS), atol=1e-5)   # SGLang's tokenizer: <s> … </s>
    assert not torch.allclose(out, _reference(roberta, TEXTS), atol=1e-4)  # not the base weights
    sha = requests.get(server + "/mezo/checksum", timeout=120).json()
    res = post_ok(server, "/mezo/step", {"task": "sst2", "objective": "accuracy", "lr": 1e-2, "eps": 1e-1,
                                         "batch_size": 16, "seed": 5})
    assert all(-1 <= v <= 0 for v in res["loss_plus"] + res["loss_minus"])
    assert post_ok(server, "/mezo/rollback", {"steps": 1}) == {"steps": 0, "rolled_back": 1}
    assert requests.get(server + "/mezo/checksum", timeout=120).json() == sha


def test_classify_up_to_the_last_position_row(server, runs):
    """128 tokens use the table's last row (position 129); 129 would index past it, which kills SGLang's
    scheduler (IndexError, measured with --context-length 130): serve's --context-length 129 refuses it."""
    full, over = "good" + " good" * 125, "good" + " good" * 126   # 128 and 129 tokens with <s> … </s>
    out = post_ok(server, "/classify", {"text": full})["embedding"]
    assert post_ok(server, "/classify", {"text": full})["meta_info"]["prompt_tokens"] == 128
    assert torch.allclose(torch.tensor([out]), _reference(str(runs["sglang"] / "model"), [full]), atol=1e-5)
    r = requests.post(server + "/classify", json={"text": over}, timeout=120)
    assert r.status_code == 400 and "context length (129 tokens)" in r.text, r.text
    assert len(post_ok(server, "/classify", {"text": TEXTS[0]})["embedding"]) == 2  # still serving

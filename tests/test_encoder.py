"""Encoder classifiers on the real engine: SGLang's class logits vs transformers', the same noise on both
layouts, exact windows, train → replay bit-identical, and bad input stopped before any step.
The pytest process holds the tiny Llama runner, so every SGLang encoder runs in a subprocess."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import cli, last_json, run_py

SIGMOID = "torch.nn.modules.activation.Sigmoid"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from tests.tiny_models import make_tiny_bert

    # with a sentence-transformers activation SGLang would apply: the backend must return raw logits
    return make_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")), num_labels=3, activation=SIGMOID)


@pytest.fixture(scope="module")
def tiny_bert2(tmp_path_factory) -> str:
    from tests.tiny_models import make_tiny_bert

    return make_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert2")), num_labels=2, seed=1)


@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory, tiny_bert) -> str:
    """A small random XLMRobertaForSequenceClassification (RoBERTa positions: offset by padding_idx + 1)."""
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    out = str(tmp_path_factory.mktemp("tiny_xlmr"))
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=130, num_labels=3, pad_token_id=0,
                           type_vocab_size=1)
    model = XLMRobertaForSequenceClassification(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 1.0 if n.startswith("classifier") else 0.05))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    return out


def check(model_dir: str) -> dict:
    return last_json(run_py(["tests/encoder_check.py", model_dir]).stdout)


def assert_engine_matches(r: dict, num_labels: int) -> None:
    assert r["sglang_type"] == "SGLangEncoderBackend" and r["hf_type"] == "HFEncoderBackend"
    assert r["num_labels"] == num_labels
    assert r["logits_gap"] <= 1e-4 and r["logits_gap_after"] <= 1e-4
    assert r["batch_vs_alone"] <= 1e-5                     # ragged packing does not mix sequences
    assert r["long_len"] == r["max_len"][0] == r["max_len"][1]  # cut to what the position table holds
    assert r["long_gap"] <= 1e-4
    assert r["accuracy"][0] == r["accuracy"][1]
    assert abs(r["ce"][0] - r["ce"][1]) <= 1e-4
    assert r["names_equal"] and r["mismatched"] == 0       # same seed → same HF elements, same values
    assert r["moved"] >= 0.999 * r["elements"]             # every trainable tensor got noise
    assert r["padding_untouched"]
    for b in ("sglang", "hf"):
        w = r[f"{b}_windows"]
        assert w["loss_equal"] and w["exact"] and w["moved"] and w["n_layers"] >= 2


def test_tiny_bert_logits_noise_windows(tiny_bert):
    r = check(tiny_bert)
    assert_engine_matches(r, 3)
    assert r["padding_rows"] > 0                            # SGLang pads token_type rows: never moved
    logits = torch.tensor(r["hf_logits"])
    assert (logits < 0).any() and logits.std() > 0.05      # raw logits (not sigmoid), not degenerate


def test_tiny_xlm_roberta_logits_noise_windows(tiny_xlmr):
    r = check(tiny_xlmr)
    assert_engine_matches(r, 3)
    assert torch.tensor(r["hf_logits"]).std() > 0.05


def test_minilm_classifier_matches_transformers():
    from sglang_mezo.models import resolve_encoder

    path = resolve_encoder("minilm", None, 2)
    cfg = json.loads((Path(path) / "config.json").read_text())
    assert len(cfg["id2label"]) == 2
    assert cfg["sglang_mezo_head"]["seed"] == 0
    assert resolve_encoder("minilm", None, 2) == path     # built once, cached
    assert_engine_matches(check(path), 2)


def test_minilm_classifier_reads_the_mean_and_loads_in_plain_transformers():
    """The head reads the mean of the token states (how all-MiniLM-L6-v2 was trained; its CLS pooler was
    never trained for sentences), and the folder carries its own class: transformers alone gives the
    backend's logits with trust_remote_code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sglang_mezo.backends.hf_encoder import HFEncoderBackend
    from sglang_mezo.backends.mean_pool_hf import masked_mean
    from sglang_mezo.models import resolve_encoder

    path = resolve_encoder("minilm", None, 2)
    cfg = json.loads((Path(path) / "config.json").read_text())
    assert cfg["architectures"] == ["BertMeanPoolForSequenceClassification", "BertForSequenceClassification"]
    assert cfg["sglang_mezo_head"]["pooling"] == "mean"
    texts = ["a gorgeous , witty film", "dull , dull and far too long"]
    ref = HFEncoderBackend(path, device="cpu")
    logits = ref.classify(ref.encode(texts))
    plain = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    assert type(plain).__name__ == "BertMeanPoolForSequenceClassification"
    b = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**b).logits, logits, atol=1e-5)
        h = ref.model.bert(**b).last_hidden_state  # by hand: the classifier over the masked mean
        by_hand = ref.model.classifier(masked_mean(h, b["attention_mask"]))
    assert torch.allclose(by_hand, logits, atol=1e-5)
    assert not any(n.startswith("bert.pooler") for n, _ in ref.model.named_parameters())  # nothing unused


def _st(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_train_replay_eval(tiny_bert2, tmp_path):
    out, rep = tmp_path / "run", tmp_path / "replayed"
    r = last_json(cli("train", "--model", tiny_bert2, "--task", "sst2", "--steps", "6", "--batch-size", "8",
                      "--lr", "1e-2", "--eps", "1e-2", "--n-test", "40", "--keep", "last",
                      "--out", str(out), "--progress-off").stdout)
    assert r["steps"] == 6 and r["best_step"] == 6
    steps = [json.loads(l) for l in (out / "trajectory.jsonl").read_text().splitlines()[1:]]
    assert len(steps) == 6 and all(s["grads"][0] != 0 for s in steps)
    cli("replay", "--trajectory", str(out / "trajectory.jsonl"), "--out", str(rep))
    trained, replayed, base = _st(out / "model"), _st(rep), _st(tiny_bert2)
    assert sorted(trained) == sorted(replayed) == sorted(base)
    assert all(torch.equal(trained[k], replayed[k]) for k in trained)
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    ev = last_json(cli("eval", "--model", str(out / "model"), "--task", "sst2", "--limit", "40").stdout)
    test = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert ev["n"] == 40 and ev["accuracy"] == test["accuracy"]


def test_headless_encoder_gets_seeded_head(tmp_path):
    from tests.tiny_models import make_tiny_bert

    enc = make_tiny_bert(str(tmp_path / "bert_model"), headless=True)
    out = tmp_path / "run"
    p = cli("train", "--model", enc, "--task", "sst2", "--steps", "2", "--out", str(out), check=False)
    assert p.returncode == 2 and "--num-labels" in p.stderr and not out.exists()
    r = last_json(cli("train", "--model", enc, "--num-labels", "2", "--task", "sst2", "--steps", "3",
                      "--trainable", "^classifier", "--objective", "accuracy", "--batch-size", "8", "--eps",
                      "1", "--n-test", "20", "--out", str(out), "--progress-off").stdout)
    steps = [json.loads(l) for l in (out / "trajectory.jsonl").read_text().splitlines()[1:]]
    losses = [v for s in steps for v in s["loss_plus"] + s["loss_minus"]]
    assert len(losses) == 6 and len(set(losses)) > 1  # the accuracy objective moved: −(multiples of 1/8)
    assert all(-1 <= v <= 0 and abs(v * 8 - round(v * 8)) < 1e-9 for v in losses)
    head = json.loads((Path(r["model"]) / "config.json").read_text())
    assert head["architectures"] == ["BertForSequenceClassification"]
    assert head["sglang_mezo_head"] == {"source": str(Path(enc).resolve()), "seed": 0, "num_labels": 2,
                                      "pooling": "cls"}  # no sentence-transformers pooling config
    header = json.loads((out / "trajectory.jsonl").read_text().splitlines()[0])
    assert header["trainable_names"] == ["classifier.weight", "classifier.bias"]
    assert header["base_model"] == r["model"]
    w = _st(r["model"])
    src = _st(enc)
    assert all(torch.equal(w["bert." + k], v) for k, v in src.items() if "bert." + k in w)
    assert w["classifier.weight"].std() > 0 and not w["classifier.bias"].any()


@pytest.mark.parametrize("args, words", [
    (["--task", "cb"], ["3 classes", "2"]),                           # labels exceed the head's classes
    (["--objective", "lm"], ["lm", "encoder", "ce", "accuracy"]),      # token objective on an encoder
    (["--task", "squad"], ["squad", "classification"]),               # generation task on an encoder
    (["--num-labels", "5"], ["--num-labels 5", "2-class head"]),       # head and --num-labels disagree
    (["--chat-template"], ["chat"]),
])
def test_bad_input_stops_before_any_step(tiny_bert2, tmp_path, args, words):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")  # --overwrite: nothing the job would write may be touched yet
    p = cli("train", "--model", tiny_bert2, "--steps", "1", "--out", str(out), "--overwrite", *args, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    for w in words:
        assert w in p.stderr, (w, p.stderr[-500:])
    assert sorted(x.name for x in out.iterdir()) == ["keep.txt"]


def test_num_labels_on_a_decoder_is_refused(tiny_model, tmp_path):
    p = cli("train", "--model", tiny_model, "--num-labels", "2", "--steps", "1", "--out", str(tmp_path / "o"),
            check=False)
    assert p.returncode == 2 and "--num-labels" in p.stderr and not (tmp_path / "o").exists()


def test_class_objectives_are_the_seed_code():
    from sglang_mezo.objectives import class_logits as co

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 3, generator=g)
    labels = torch.randint(0, 3, (32,), generator=g)
    preds = torch.argmax(logits, dim=-1)
    assert co.accuracy(logits, labels) == -(preds == labels).float().mean().item()
    assert co.ce(logits, labels) == torch.nn.functional.cross_entropy(logits, labels).item()
    out = co.ClassOutputs([], labels, logits)
    assert co.get_objective("accuracy")(out) == co.accuracy(logits, labels)
    with pytest.raises(ValueError, match="encoder classifier"):
        co.get_objective("lm")


def test_task_file_labels_are_class_ids_in_label_order(tiny_bert, tmp_path):
    """A task file on an encoder: each row's label becomes its index in `label_words` (the words are not
    read); `eval` on SGLang gives the accuracy transformers' logits give under that mapping."""
    from sglang_mezo.backends.hf_encoder import HFEncoderBackend

    words = "it was terrible great good bad movie film fun boring awful wonderful story acting plot".split()
    labels = ["pos", "neu", "neg"]  # order of label_words below: neu -> 0, pos -> 1, neg -> 2
    rows = [{"text": " ".join(words[(3 * i) % 15:(3 * i) % 15 + 4]), "label": labels[i % 3]} for i in range(30)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "three.yaml").write_text("name: three\ntrain: data.jsonl\ntest: data.jsonl\n"
                                         "template: '{text}'\nlabel_field: label\n"
                                         "label_words: {neu: ' so-so', pos: ' good', neg: ' bad'}\n")
    ev = last_json(cli("eval", "--model", tiny_bert, "--task", str(tmp_path / "three.yaml"), "--split", "test").stdout)
    hf = HFEncoderBackend(tiny_bert, device="cpu")
    pred = hf.classify(hf.encode([r["text"] for r in rows])).argmax(-1)
    ids = torch.tensor([{"neu": 0, "pos": 1, "neg": 2}[r["label"]] for r in rows])
    assert ev["n"] == 30 and ev["accuracy"] == pytest.approx(float((pred == ids).float().mean()))
    assert 0 < ev["accuracy"] < 1  # a mapping error could not hide behind an all-right or all-wrong model

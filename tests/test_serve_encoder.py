"""A real `sglang-mezo serve` of an encoder classifier on loopback (tiny random BERT with the mean-pooled
head of mean_pool_*.py, CPU): /classify keeps answering while /mezo/train runs, serves exactly the trained
weights between steps, rollback restores them, and what an encoder cannot do gets a 4xx naming it."""
import json
import os
import threading
import time

import pytest
import requests
import torch

from serve_helpers import running_server, post_ok

TEXTS = ["the movie was good", "boring and awful film .", "a very fun story , not the acting"]
STEP = {"task": "sst2", "lr": 5e-2, "eps": 1e-2, "batch_size": 8, "seed": 3}


@pytest.fixture(scope="module")
def mean_bert(tmp_path_factory) -> str:
    """A headless tiny BERT that says (like all-MiniLM-L6-v2) it was trained on the mean of its token
    states, given the seeded 2-class head over that mean: the class SGLang gets from our plugin."""
    from sglang_mezo.models import encoder_classifier
    from tests.tiny_models import make_tiny_bert

    d = tmp_path_factory.mktemp("mean_bert")
    enc = make_tiny_bert(str(d / "encoder"), headless=True)
    (d / "encoder" / "1_Pooling").mkdir()
    (d / "encoder" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    old = os.environ.get("SGLANG_MEZO_CACHE")
    os.environ["SGLANG_MEZO_CACHE"] = str(d / "cache")
    try:
        path = encoder_classifier(enc, 2)
    finally:
        os.environ.pop("SGLANG_MEZO_CACHE") if old is None else os.environ.update(SGLANG_MEZO_CACHE=old)
    assert json.loads(open(f"{path}/config.json").read())["architectures"][0] == "BertMeanPoolForSequenceClassification"
    return path


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("saves")


@pytest.fixture(scope="module")
def server(mean_bert, save_dir, tmp_path_factory):
    with running_server(mean_bert, tmp_path_factory.mktemp("serve_enc") / "server.log",
                        "--mezo-save-dir", str(save_dir)) as url:
        yield url


def _classify(url) -> torch.Tensor:
    out = post_ok(url, "/classify", {"text": TEXTS})
    return torch.tensor([o["embedding"] for o in out])


def _reference(model_dir) -> torch.Tensor:
    from sglang_mezo.backends.hf_encoder import HFEncoderBackend

    hf = HFEncoderBackend(model_dir, device="cpu")
    return hf.classify(hf.encode(TEXTS))


def test_classify_keeps_answering_while_training(server, mean_bert, save_dir):
    before, sha0 = _classify(server), requests.get(server + "/mezo/checksum", timeout=120).json()
    assert before.shape == (3, 2)
    # our mean-pooled class, not SGLang's CLS-pooled BertForSequenceClassification
    assert torch.allclose(before, _reference(mean_bert), atol=1e-4)

    stop, answered, latencies = threading.Event(), [], []

    def load():
        while not stop.is_set():
            t0 = time.perf_counter()
            r = requests.post(server + "/classify", json={"text": TEXTS[0]}, timeout=120)
            latencies.append(time.perf_counter() - t0)
            answered.append((r.status_code, requests.get(server + "/mezo/status", timeout=60).json()["running"]))

    t = threading.Thread(target=load)
    t.start()
    try:
        assert post_ok(server, "/mezo/train", {**STEP, "steps": 12, "interval_s": 0.2}, 202)["steps"] == 12
        deadline = time.time() + 300
        while requests.get(server + "/mezo/status", timeout=60).json()["running"]:
            assert time.time() < deadline
            time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    st = requests.get(server + "/mezo/status", timeout=60).json()  # the load thread's polls are over
    assert st["done"] == 12 and st["error"] is None and st["steps"] == 12, st
    assert answered and all(code == 200 for code, _ in answered), answered
    during = sum(1 for _, running in answered if running)
    assert during >= 3, answered  # answered between the steps of the run, not only after it

    # between steps the server classifies with exactly the trained weights it saves
    res = post_ok(server, "/mezo/step", STEP)
    print(f"/classify during /mezo/train: {len(answered)} answered ({during} while it ran), latency max "
          f"{max(latencies):.3f} s median {sorted(latencies)[len(latencies) // 2]:.3f} s; one step "
          f"{res['time_s']:.3f} s")
    assert res["step"] == 13 and res["loss_plus"] != res["loss_minus"]
    after = _classify(server)
    assert post_ok(server, "/mezo/save", {"path": "enc"}) == {"path": "enc", "steps": 13}
    assert not torch.allclose(after, before, atol=1e-6)
    assert torch.allclose(after, _reference(str(save_dir / "enc" / "model")), atol=1e-4)
    assert (save_dir / "enc" / "model" / "modeling_mean_pool.py").is_file()  # transformers can load it too

    assert post_ok(server, "/mezo/rollback", {"steps": 13}) == {"steps": 0, "rolled_back": 13}
    assert requests.get(server + "/mezo/checksum", timeout=120).json() == sha0  # bit for bit
    assert torch.allclose(_classify(server), before, atol=1e-6)  # (how SGLang batches may move the last bit)


@pytest.mark.parametrize("body,match", [
    ({"task": "sst2", "objective": "f1"}, "'f1' needs token log-probs or generated text"),
    ({"task": "sst2", "objective": "lm"}, "which an encoder classifier does not produce"),
    ({"task": "squad"}, "generation task"),
    ({"task": "cb"}, "has 3 classes but the served classifier's head has 2"),
    ({"examples": [{"prompt": "good", "label": 0}, {"prompt": "bad", "label": 5}]},
     "examples[1].label 5 exceeds the served classifier's 2 classes"),
    ({"examples": [{"prompt": "Q: 2+2?", "answers": ["4"]}]}, "cannot generate"),
    ({"examples": [{"prompt": "good", "candidates": [" a", " b"], "label": 0}]}, "'candidates'"),
    ({"task": "sst2", "chat_template": True}, "chat"),
])
def test_what_an_encoder_cannot_do_gets_a_4xx(server, body, match):
    r = requests.post(server + "/mezo/step", json={"lr": 1e-3, **body}, timeout=120)
    assert r.status_code == 400, r.text
    assert match in r.json()["error"], r.json()
    assert requests.get(server + "/mezo/status", timeout=30).json()["steps"] == 0  # nothing was stepped
    assert _classify(server).shape == (3, 2)


def test_class_id_examples_step(server):
    res = post_ok(server, "/mezo/step", {"examples": [{"prompt": t, "label": i % 2} for i, t in enumerate(TEXTS)],
                                       "lr": 1e-3, "eps": 1e-2, "objective": "accuracy", "seed": 1})
    assert all(-1 <= v <= 0 for v in res["loss_plus"] + res["loss_minus"])
    post_ok(server, "/mezo/rollback", {"steps": 1})

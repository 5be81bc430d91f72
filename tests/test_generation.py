"""Generation on the real engines: SGLang's in-process runner (prefill + batched decode loop) and
transformers `generate` (the reference) give identical greedy tokens; seeded sampling is reproducible,
per request, and the same on both backends; bad settings stop with a message naming them."""
import json

import pytest

from sglang_mezo.backends import BackendError

from conftest import run_py

PROMPTS = ["It was terrible", "the movie is a good story and", "Yes", "not very fun boring awful wonderful story",
           "the acting the plot"]


def _ids(gens):
    return [g.token_ids for g in gens]


def test_greedy_sglang_equals_hf(sglang_backend, fresh_hf):
    a = sglang_backend.generate(PROMPTS, max_new_tokens=12)
    b = fresh_hf.generate(PROMPTS, max_new_tokens=12)
    assert _ids(a) == _ids(b)
    assert all(len(g.token_ids) == 12 and g.finish == "length" for g in a)
    # a batch decodes like each prompt alone (requests leave the batch as they finish; no cross-talk)
    assert [sglang_backend.generate([p], max_new_tokens=12)[0].token_ids for p in PROMPTS] == _ids(a)


def test_stop_strings_and_eos(sglang_backend, fresh_hf):
    full = sglang_backend.generate(PROMPTS, max_new_tokens=12)
    # a stop string taken from the middle of a real output: generation must end where it appears
    text = next(g.text for g in full if len(g.text) > 4)
    stop = text[2:4]
    a = sglang_backend.generate(PROMPTS, max_new_tokens=12, stop=[stop])
    b = fresh_hf.generate(PROMPTS, max_new_tokens=12, stop=[stop])
    assert _ids(a) == _ids(b) and [g.text for g in a] == [g.text for g in b]
    hit = [g for g in a if g.finish == "stop"]
    assert hit and all(stop not in g.text and len(g.token_ids) < 12 for g in hit)
    for g, f in zip(a, full):  # a stopped generation is a prefix of the unstopped one
        assert f.token_ids[: len(g.token_ids)] == g.token_ids


def test_sampling_is_seeded_per_request(sglang_backend, fresh_hf):
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9)
    a = sglang_backend.generate(PROMPTS, seed=7, **kw)
    assert _ids(a) == _ids(sglang_backend.generate(PROMPTS, seed=7, **kw))      # reproducible
    assert _ids(a) == _ids(fresh_hf.generate(PROMPTS, seed=7, **kw))            # same draws on hf
    assert _ids(a) != _ids(sglang_backend.generate(PROMPTS, seed=8, **kw))      # the seed matters
    assert _ids(a) != _ids(sglang_backend.generate(PROMPTS, max_new_tokens=10))  # not greedy
    # request i's draws depend on (seed, i) only: a sub-batch reproduces the same requests
    assert _ids(sglang_backend.generate(PROMPTS[:2], seed=7, **kw)) == _ids(a)[:2]


@pytest.mark.parametrize("kw, msg", [
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(max_new_tokens=10**6), "above the model's context"),
    (dict(max_new_tokens=510), r"prompt 0 \(\d+ tokens\) \+ max_new_tokens 510 exceeds"),
    (dict(max_new_tokens=4, top_p=0.0), "top_p"),
    (dict(max_new_tokens=4, temperature=-1.0), "temperature"),
])
def test_bad_generation_settings(sglang_backend, kw, msg):
    with pytest.raises(BackendError, match=msg):
        sglang_backend.generate(PROMPTS, **kw)


@pytest.mark.slow
def test_embedded_model_greedy_sglang_equals_hf(embedded_model):
    res = json.loads(run_py(["tests/generation_check.py", embedded_model]).stdout.strip().splitlines()[-1])
    assert [g["ids"] for g in res["sglang"]] == [g["ids"] for g in res["hf"]]
    assert [g["text"] for g in res["sglang"]] == [g["text"] for g in res["hf"]]
    assert any(g["text"].strip() for g in res["sglang"])   # a real model says something
    assert "paris" in res["sglang"][0]["text"].lower()

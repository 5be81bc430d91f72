"""Objectives computed from what the real SGLang engine returns, checked against transformers by hand."""
import math

import pytest
import torch

from sglang_mezo.objectives import label_words as objectives
from sglang_mezo.tasks import Example


def _hf_logprobs(model_dir, ids):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(m(torch.tensor([ids])).logits[0], -1)


EX = [Example("good fun film It was", [" terrible", " great"], 1),
      Example("awful boring plot It was", [" terrible", " great"], 0),
      Example("the acting It was", [" terrible", " great"], 1)]


def _engine_outputs(backend, examples, single=True):
    enc = objectives.encode(examples, backend.tokenizer, single)
    return objectives.run_batch(backend, examples, enc)


def test_builtin_objectives_match_a_manual_computation(sglang_backend, tiny_model):
    sglang_backend.load_base()
    out = _engine_outputs(sglang_backend, EX)
    tok = sglang_backend.tokenizer
    manual = []
    for ex in EX:
        ids = tok.encode(ex.prompt)
        lp = _hf_logprobs(tiny_model, ids)[-1]
        manual.append([lp[tok.encode(c, add_special_tokens=False)[0]].item() for c in ex.candidates])
    manual = torch.tensor(manual, dtype=torch.float64)
    labels = torch.tensor([ex.label for ex in EX])
    assert torch.allclose(out.scores, manual, atol=1e-4)
    ce = torch.nn.functional.cross_entropy(manual, labels).item()
    acc = (manual.argmax(1) == labels).double().mean().item()
    lm = -manual.gather(1, labels[:, None]).mean().item()
    assert objectives.get_objective("ce")(out) == pytest.approx(ce, abs=1e-4)
    assert objectives.get_objective("accuracy")(out) == pytest.approx(-acc)
    assert objectives.get_objective("lm")(out) == pytest.approx(lm, abs=1e-4)
    # accuracy moves in steps of 1/B
    assert (objectives.get_objective("accuracy")(out) * len(EX)).is_integer()


def test_multi_token_candidates_use_mean_token_logprob(sglang_backend, tiny_model):
    """COPA-style: each candidate is a span; its score is the mean log-prob of its tokens."""
    sglang_backend.load_base()
    ex = [Example("the movie was", [" very good fun", " not the acting"], 0)]
    out = _engine_outputs(sglang_backend, ex, single=False)
    tok = sglang_backend.tokenizer
    for k, cand in enumerate(ex[0].candidates):
        p, c = tok.encode(ex[0].prompt), tok.encode(cand, add_special_tokens=False)
        assert len(c) > 1
        lp = _hf_logprobs(tiny_model, p + c)
        want = sum(lp[len(p) + j - 1, t].item() for j, t in enumerate(c)) / len(c)
        assert out.scores[0, k].item() == pytest.approx(want, abs=1e-4)


def test_user_objective_module_function_and_errors():
    f = objectives.get_objective("tests.nan_after:objective")
    assert callable(f)
    with pytest.raises(ValueError, match="cannot be loaded"):
        objectives.get_objective("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.get_objective("f1")


def test_evaluate_batches_many_examples(sglang_backend):
    sglang_backend.load_base()
    res = objectives.evaluate(sglang_backend, EX * 5, batch_size=4)
    assert res["n"] == 15 and 0 <= res["accuracy"] <= 1 and math.isfinite(res["ce"])

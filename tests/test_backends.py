"""Both adapters, real engines: same log-probs, same layout under HF names, same noise bit for bit."""
import json

import pytest
import torch

from engine_check import logprob_gap, noise_mismatches, requests
from conftest import run_py
from sglang_mezo.backends import BackendError, ScoreRequest, make_backend, select_trainable
from sglang_mezo.backends import layout


def test_logprobs_equal_tiny(sglang_backend, fresh_hf):
    sglang_backend.load_base()
    assert logprob_gap(sglang_backend, fresh_hf, requests(fresh_hf.tokenizer)) <= 1e-4


def test_span_logprobs_match_manual_hf_forward(sglang_backend, tiny_model):
    """Target-span entries are log p(ids[j] | ids[:j]) — no off-by-one, no shift between prompts."""
    from transformers import AutoModelForCausalLM

    sglang_backend.load_base()
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    reqs = [ScoreRequest([1, 5, 9, 30, 41], target_len=3), ScoreRequest([1, 7, 8], target_len=2),
            ScoreRequest([1, 70, 71, 72, 73, 74, 75], target_len=1)]
    for r, res in zip(reqs, sglang_backend.score(reqs)):
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([r.ids])).logits[0], -1)
        want = [lp[j - 1, r.ids[j]].item() for j in range(len(r.ids) - r.target_len, len(r.ids))]
        assert res.target_logprobs == pytest.approx(want, abs=1e-4)


def test_pieces_cover_exactly_the_hf_parameters(sglang_backend, fresh_hf, tiny_model):
    s = {(p.hf_name, p.hf_shape) for p in sglang_backend.pieces}
    h = {(p.hf_name, p.hf_shape) for p in fresh_hf.pieces}
    assert s == h
    fused = [p for p in sglang_backend.pieces if p.hf_name.endswith(("q_proj.weight", "up_proj.weight"))]
    # views into SGLang's own fused tensors (qkv_proj, gate_up_proj), not copies
    engine = {p.untyped_storage().data_ptr() for n, p in sglang_backend.model.named_parameters()
              if n.endswith(("qkv_proj.weight", "gate_up_proj.weight"))}
    assert fused and engine and all(p.view.untyped_storage().data_ptr() in engine for p in fused)
    # numel per HF tensor adds up (fused rows are split exactly, padding rows excluded)
    for name, shape in h:
        n = sum(p.view.numel() for p in sglang_backend.pieces if p.hf_name == name)
        assert n == torch.Size(shape).numel(), name
    sglang_backend.load_base()
    layout.verify(sglang_backend.pieces, tiny_model)


def test_same_seed_same_weights_bit_identical(sglang_backend, fresh_hf):
    sglang_backend.load_base()
    emb = sglang_backend.model.model.embed_tokens.weight
    pad = emb.data[fresh_hf.vocab_size:].clone()
    assert pad.shape[0] > 0, "the tiny model's vocab (1000) should be padded by SGLang"
    ptrs = [p.view.data_ptr() for p in sglang_backend.pieces]
    res = noise_mismatches(sglang_backend, fresh_hf)
    assert res["names_equal"] and res["mismatched"] == 0 and res["elements"] > 0
    assert torch.equal(pad, emb.data[fresh_hf.vocab_size:]), "padding rows moved"
    assert ptrs == [p.view.data_ptr() for p in sglang_backend.pieces], "weights rebound, not in place"
    # and the engines still agree on the changed weights
    assert logprob_gap(sglang_backend, fresh_hf, requests(fresh_hf.tokenizer)) <= 1e-4
    sglang_backend.load_base()


def test_tied_embeddings_and_odd_vocab_in_fresh_process(tiny_tied_model):
    res = json.loads(run_py(["tests/engine_check.py", tiny_tied_model]).stdout.strip().splitlines()[-1])
    assert res["names_equal"] and res["mismatched"] == 0 and res["elements"] > 0
    assert res["padding_rows"] > 0 and res["padding_untouched"]
    assert res["logprob_gap"] <= 1e-4 and res["logprob_gap_after"] <= 1e-4
    for pre in ("", "hf_"):  # tied embedding: windows around the lookup and around the logits
        assert res[pre + "window_loss_equal"] and res[pre + "window_exact"] and res[pre + "window_loss_moved"], res


def test_trainable_regex(sglang_backend):
    chosen = select_trainable(sglang_backend.pieces, r"layers\.1\..*(q_proj|v_proj)")
    assert {p.hf_name for p in chosen} == {"model.layers.1.self_attn.q_proj.weight",
                                           "model.layers.1.self_attn.v_proj.weight"}
    with pytest.raises(BackendError, match="matches no parameter"):
        select_trainable(sglang_backend.pieces, "nothing_like_this")
    with pytest.raises(BackendError, match="not a valid regular expression"):
        select_trainable(sglang_backend.pieces, "(")


def test_bad_requests_are_refused(sglang_backend):
    with pytest.raises(BackendError, match="outside the vocabulary"):
        sglang_backend.score([ScoreRequest([1, 2, 99999], next_ids=[1])])
    with pytest.raises(BackendError, match="no token ids"):
        sglang_backend.score([ScoreRequest([])])


def test_second_runner_in_one_process_is_refused(sglang_backend, tiny_tied_model):
    with pytest.raises(BackendError, match="one per process"):
        make_backend("sglang", tiny_tied_model)


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend"):
        make_backend("vllm", "/nonexistent")


def test_derived_weight_cache_models_are_refused():
    """SGLang's own check (weight_updater) decides; a module that declares a derived cache is refused."""
    from sglang_mezo.backends.sglang_runner import refuse_derived_caches

    m = torch.nn.Sequential(torch.nn.Linear(2, 2))
    refuse_derived_caches(m)  # plain model: fine
    m[0]._derived_weight_cache_error = "packed fp8 copy of the weights"
    with pytest.raises(BackendError, match="derived weight caches"):
        refuse_derived_caches(m)

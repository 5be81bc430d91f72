"""Cross-backend checks on one model, usable in-process (pytest) or as a script in a fresh process
(SGLang allows one ModelRunner per process): `python tests/engine_check.py MODEL_DIR` prints JSON."""
from __future__ import annotations

import json
import sys

import torch

from sglang_mezo import cpu_shims
from sglang_mezo import perturb

PROMPTS = ["the movie was good It was", "boring and awful film . It was", "a very fun story It was",
           "not the acting , not the plot It was"]


def requests(tokenizer):
    from sglang_mezo.backends.base import ScoreRequest

    cands = [tokenizer.encode(w, add_special_tokens=False)[0] for w in (" terrible", " great", " good")]
    out = []
    for i, p in enumerate(PROMPTS):
        ids = tokenizer.encode(p)
        out.append(ScoreRequest(ids, next_ids=cands))
        out.append(ScoreRequest(ids, target_len=min(3 + i, len(ids) - 1)))
    return out


def logprob_gap(a, b, reqs) -> float:
    ra, rb = a.score(reqs), b.score(reqs)
    gap = 0.0
    for x, y in zip(ra, rb):
        assert len(x.next_logprobs) == len(y.next_logprobs) and len(x.target_logprobs) == len(y.target_logprobs)
        for u, v in zip(x.next_logprobs + x.target_logprobs, y.next_logprobs + y.target_logprobs):
            gap = max(gap, abs(u - v))
    return gap


def noise_mismatches(sgl, hf, seed: int = 1234, eps: float = 1e-2) -> dict:
    """Apply the same MeZO sweeps to both backends; count HF elements that differ afterwards."""
    from sglang_mezo.noise import Add, Update
    from sglang_mezo.noise_sweep import sweep

    for b in (sgl, hf):
        sweep(b.pieces, seed, [Add(eps)])
        sweep(b.pieces, seed + 1, [Add(-eps), Update(0.01, 0.001)])
    a, h = sgl.hf_state_dict(), hf.hf_state_dict()
    changed = sum(int((h[n] != 0).sum()) for n in h)
    return {"names_equal": sorted(a) == sorted(h),
            "mismatched": sum(int((a[n] != h[n]).sum()) for n in h if n in a), "elements": changed}


def run(model_dir: str) -> dict:
    cpu_shims.install()
    from sglang_mezo.backends import make_backend

    sgl = make_backend("sglang", model_dir)
    hf = make_backend("hf", model_dir)
    reqs = requests(hf.tokenizer)
    res = {"logprob_gap": logprob_gap(sgl, hf, reqs)}
    emb = sgl.model.model.embed_tokens.weight
    pad_before = emb.data[hf.vocab_size:].clone()
    res.update(noise_mismatches(sgl, hf))
    res["padding_rows"] = int(emb.shape[0] - hf.vocab_size)
    res["padding_untouched"] = bool(torch.equal(pad_before, emb.data[hf.vocab_size:]))
    res["logprob_gap_after"] = logprob_gap(sgl, hf, reqs)
    res.update(windows_see_the_perturbed_model(sgl))
    res.update({f"hf_{k}": v for k, v in windows_see_the_perturbed_model(hf).items()})
    return res


def windows_see_the_perturbed_model(backend, seed: int = 77, eps: float = 1e-2) -> dict:
    """L(θ+εz) through exact per-module windows equals L(θ+εz) with every weight perturbed in place, bit
    for bit (so no weight is read outside its window), and the windows leave θ untouched."""
    from sglang_mezo.objectives.label_words import ce, encode, candidate_scores
    from sglang_mezo.tasks import Example

    ex = [Example(p, [" terrible", " great"], i % 2) for i, p in enumerate(PROMPTS)]
    enc = encode(ex, backend.tokenizer)
    loss = lambda: ce(candidate_scores(backend, enc), enc.labels)  # noqa: E731
    before = [p.view.clone() for p in backend.pieces]
    lw = perturb.make("layerwise", backend.pieces, backend).losses(seed, [eps], loss)[0]
    exact = all(torch.equal(a, p.view) for a, p in zip(before, backend.pieces))
    ip = perturb.make("inplace", backend.pieces, backend)
    l_ip = ip.losses(seed, [eps], loss)[0]
    ip.flush()
    return {"window_loss_equal": lw == l_ip, "window_exact": exact, "window_loss_moved": lw != loss()}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))

"""Cross-backend checks on one encoder classifier, in a fresh process (SGLang allows one ModelRunner per
process): `python tests/encoder_check.py MODEL_DIR` prints JSON."""
from __future__ import annotations

import json
import sys

import torch

from sglang_mezo import cpu_shims
from sglang_mezo import perturb

TEXTS = ["the movie was good", "boring and awful film .", "a very fun story , not the acting", "great",
         "not the acting , not the plot , it was terrible and the story was boring too"]


def logits_gap(sgl, hf) -> tuple[float, list]:
    ids = hf.encode(TEXTS)
    a, b = sgl.classify(ids), hf.classify(ids)
    assert a.shape == b.shape == (len(TEXTS), hf.num_labels), (a.shape, b.shape)
    return float((a - b).abs().max()), b.tolist()


def run(model_dir: str) -> dict:
    cpu_shims.install()
    from sglang_mezo.backends import make_backend
    from sglang_mezo.objectives.class_logits import ClassBatch, ce
    from sglang_mezo.noise import Add, Update
    from sglang_mezo.noise_sweep import sweep

    sgl = make_backend("sglang", model_dir)
    hf = make_backend("hf", model_dir)
    res = {"sglang_type": type(sgl).__name__, "hf_type": type(hf).__name__, "num_labels": sgl.num_labels}
    res["logits_gap"], res["hf_logits"] = logits_gap(sgl, hf)
    # one classify of each input alone equals the batched result (ragged packing does not leak)
    ids = hf.encode(TEXTS)
    alone = torch.cat([sgl.classify([x]) for x in ids])
    res["batch_vs_alone"] = float((alone - sgl.classify(ids)).abs().max())
    # the longest input the position table holds (RoBERTa / XLM-R: from padding_idx + 1), on both engines
    res["max_len"] = [sgl.max_len, hf.max_len]
    long = hf.encode([" ".join(TEXTS * 40)])
    res["long_len"] = len(long[0])
    res["long_gap"] = float((sgl.classify(long) - hf.classify(long)).abs().max())
    # the objectives read the logits only: equal logits (to 1e-4) must give the same predictions
    from sglang_mezo.objectives.class_logits import accuracy

    labels = torch.tensor([i % sgl.num_labels for i in range(len(TEXTS))])
    res["accuracy"] = [accuracy(b.classify(ids), labels) for b in (sgl, hf)]
    res["ce"] = [ce(b.classify(ids), labels) for b in (sgl, hf)]
    emb = next(m for n, m in sgl.model.named_modules() if n.endswith("token_type_embeddings")).weight
    n_types = hf.model.config.type_vocab_size
    pad_before = emb.data[n_types:].clone()
    for b in (sgl, hf):  # the same seeds on both layouts
        sweep(b.pieces, 1234, [Add(1e-2)])
        sweep(b.pieces, 1235, [Add(-1e-2), Update(0.01, 0.001)])
    a, h = sgl.hf_state_dict(), hf.hf_state_dict()
    base = make_backend("hf", model_dir).hf_state_dict()
    res["names_equal"] = sorted(a) == sorted(h)
    res["mismatched"] = sum(int((a[n] != h[n]).sum()) for n in h if n in a)
    res["moved"] = sum(int((h[n] != base[n]).sum()) for n in h)
    res["elements"] = sum(t.numel() for t in h.values())
    res["padding_rows"] = int(emb.shape[0] - n_types)
    res["padding_untouched"] = bool(torch.equal(pad_before, emb.data[n_types:]))
    res["logits_gap_after"] = logits_gap(sgl, hf)[0]
    # exact per-module windows: L(θ+εz) equals the in-place perturbed loss, θ comes back bit-identical
    batch = ClassBatch(TEXTS, torch.tensor([i % sgl.num_labels for i in range(len(TEXTS))]), sgl.encode(TEXTS))
    for name, b in (("sglang", sgl), ("hf", hf)):
        loss = lambda b=b: ce(b.classify(batch.ids), batch.labels)  # noqa: E731
        before = [p.view.clone() for p in b.pieces]
        lw = perturb.make("layerwise", b.pieces, b).losses(77, [1e-2], loss)[0]
        exact = all(torch.equal(x, p.view) for x, p in zip(before, b.pieces))
        ip = perturb.make("inplace", b.pieces, b)
        l_ip = ip.losses(77, [1e-2], loss)[0]
        ip.flush()
        res[f"{name}_windows"] = {"loss_equal": lw == l_ip, "exact": exact, "moved": lw != loss(),
                                  "n_layers": len(b.layers or [])}
    return res


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))

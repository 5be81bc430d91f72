"""Low-rank perturbations on the real SGLang engine with multi-LoRA, against transformers with merged
weights. SGLang allows one ModelRunner per process, so this runs as a script in its own process:
`python tests/lowrank_check.py MODEL_DIR OUT_DIR` prints one JSON line (tests/test_lowrank.py asserts)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sglang_mezo import cpu_shims
from sglang_mezo import perturb

RANK, EPS = 4, 1e-2


def main(model: str, out: str) -> dict:
    cpu_shims.install()
    Path(out).mkdir(parents=True, exist_ok=True)
    from engine_check import requests

    from sglang_mezo import trajectory
    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo.perturb import lowrank
    from sglang_mezo.backends import make_backend
    from sglang_mezo.mezo import mezo_step
    from sglang_mezo.settings import Settings
    from sglang_mezo.tasks import Example

    res: dict = {}
    sgl = make_backend("sglang", model, lora={"max_lora_rank": RANK, "max_loras_per_batch": 9})
    hf = make_backend("hf", model)
    reqs = requests(sgl.tokenizer)
    flat = lambda rs: [v for r in rs for v in r.next_logprobs + r.target_logprobs]  # noqa: E731

    # 1. an adapter's log-probs equal merged weights W + s·U·Vᵀ/√r (hf)
    ws = perturb.make("lowrank", sgl.pieces, sgl, rank=RANK)
    wh = perturb.make("lowrank", hf.pieces, hf, rank=RANK)
    got: dict = {}
    for name, w, b in (("sgl", ws, sgl), ("hf", wh, hf)):
        seen = []
        w.losses_at([(7, 0.05), (7, -0.05), (7, 0.0)], lambda b=b, seen=seen: seen.append(flat(b.score(reqs))) or 0.0)
        got[name] = seen
    res["adapter_vs_merged"] = max(max(abs(a - c) for a, c in zip(x, y)) for x, y in zip(got["sgl"], got["hf"]))
    res["adapter_vs_base"] = max(abs(a - c) for a, c in zip(got["sgl"][0], got["sgl"][2]))
    res["frozen"] = ws.frozen
    res["tied"] = sgl.tied_embeddings
    res["adapter_modules"] = lowrank.adapter_config(ws.pieces, RANK, ws.tied)["target_modules"]
    res["trained"] = sorted({p.hf_name for p in ws.pieces})

    # 2. steps through SGLang's adapters (n directions, one forward) equal the same steps on hf merged;
    # the same batch every step, so an adapter (or KV) reused from an earlier step would show as a gap
    words = ["good fun movie", "awful boring plot", "very wonderful story", "bad acting", "fun film", "terrible plot"]
    ex = [Example(f"{w} It was", [" terrible", " great"], int(i % 3 != 1)) for i, w in enumerate(words)]
    enc = objectives.encode(ex, sgl.tokenizer)
    forwards = {"n": 0}
    inner = sgl._forward

    def counted(*a, **k):
        forwards["n"] += 1
        return inner(*a, **k)

    sgl._forward = counted
    for est, n in (("two_point", 4), ("fzoo", 4), ("one_point", 2)):
        cfg = Settings(lr=5e-2, eps=EPS, estimator=est, n_queries=n, weight_decay=0.01)
        recs = {}
        for name, b in (("sgl", sgl), ("hf", hf)):
            b.load_base()
            w = perturb.make("lowrank", lowrank.adaptable(b.pieces)[0], b, rank=RANK)
            loss = lambda b=b: objectives.ce(objectives.candidate_scores(b, enc), enc.labels)  # noqa: E731
            forwards["n"] = 0
            recs[name] = [mezo_step(w, loss, [1000 * s + q for q in range(n)], cfg, s) for s in range(1, 4)]
            if name == "sgl":
                res[f"{est}_forwards_per_step"] = forwards["n"] / 3
        ls = lambda rs: [v for r in rs for v in r.loss_plus + r.loss_minus]  # noqa: E731
        res[f"{est}_loss_gap"] = max(abs(a - c) for a, c in zip(ls(recs["sgl"]), ls(recs["hf"])))
        res[f"{est}_loss_gap_by_step"] = [max(abs(a - c) for a, c in zip(ls([x]), ls([y])))
                                          for x, y in zip(recs["sgl"], recs["hf"])]
        res[f"{est}_grads"] = [r.grads for r in recs["hf"]]
        res[f"{est}_losses_move"] = len({round(v, 9) for v in ls(recs["sgl"])})
        # 3. replay of the trajectory (checkpoint tensors, no engine) equals the trained engine, bit for bit
        path = Path(out) / f"{est}.jsonl"
        trajectory.write(path, trajectory.make_header(model, "float32", lowrank.adaptable(sgl.pieces)[0], "sglang",
                                                      "lowrank", rank=RANK), recs["sgl"])
        replayed = trajectory.replay(model, path)
        trained = sgl.hf_state_dict()
        res[f"{est}_replay_mismatch"] = sum(int(not torch.equal(v, trained[k])) for k, v in replayed.items())
        res[f"{est}_replay_tensors"] = len(replayed)
        hf_w = hf.hf_state_dict()  # the updates landed alike (the losses, hence g, agree to ~1e-6)
        res[f"{est}_weights_gap"] = max((trained[k] - hf_w[k]).abs().max().item() for k in trained)
        base = hf.__class__(model).hf_state_dict() if est == "two_point" else None
        if base is not None:
            res["changed_tensors"] = sum(int(not torch.equal(trained[k], base[k])) for k in trained)
            res["frozen_changed"] = sum(int(not torch.equal(trained[k], base[k])) for k in ws.frozen)

    # 4. bad input: limits named with the flags that raise them
    errs = {}
    for label, (r, k) in {"rank": (RANK + 1, 2), "loras": (RANK, 10)}.items():
        try:
            ws.adapters.check(r, k)
        except ValueError as e:
            errs[label] = str(e)
    res["errors"] = errs
    return res


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print(json.dumps(main(sys.argv[1], sys.argv[2])))

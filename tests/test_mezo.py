"""The MeZO step on the real SGLang engine (tiny Llama): Algorithm 1's arithmetic, determinism, replay."""
import math

import pytest
import torch

from conftest import ce_loss, sentiment_batch
from sglang_mezo.objectives import label_words as objectives
from sglang_mezo import perturb
from sglang_mezo.mezo import ObjectiveError, mezo_step, replay_step
from sglang_mezo.settings import Settings
from sglang_mezo.tasks import Example


_batch, _loss = sentiment_batch, ce_loss   # the shared tiny step batch and its loss (conftest)


def _weights(backend):
    return [p.view.clone() for p in backend.pieces]


@pytest.mark.parametrize("mode", ["layerwise", "inplace"])
@pytest.mark.parametrize("cfg", [Settings(lr=1e-3, eps=1e-2, weight_decay=0.1),
                                 Settings(lr=1e-3, eps=1e-2, estimator="one_point"),
                                 Settings(lr=1e-3, eps=1e-2, n_queries=3)],
                         ids=["two_point", "one_point", "n_spsa"])
def test_steps_are_deterministic_and_replay_bit_identically(sglang_backend, cfg, mode):
    b = sglang_backend
    enc = _batch(b)
    runs = []
    for _ in range(2):
        b.load_base()
        w = perturb.make(mode, b.pieces, b)
        recs = [mezo_step(w, _loss(b, enc), [100 * s + q for q in range(cfg.n_queries)], cfg, s)
                for s in range(1, 4)]
        runs.append((recs, _weights(b)))
    (r1, w1), (r2, w2) = runs
    assert r1 == r2 and all(torch.equal(x, y) for x, y in zip(w1, w2))
    b.load_base()
    base = _weights(b)
    assert any(not torch.equal(x, y) for x, y in zip(w1, base)), "training changed nothing"
    redo = perturb.make(mode, b.pieces, b, replay=True)
    for rec in r1:  # replay: same arithmetic from the recorded losses, no forward passes
        replay_step(redo, rec)
    assert all(torch.equal(x, y) for x, y in zip(w1, _weights(b)))
    rec = r1[0]
    if cfg.estimator == "two_point":
        assert rec.grads[0] == (rec.loss_plus[0] - rec.loss_minus[0]) / (2 * cfg.eps)
    else:
        assert rec.grads[0] == (rec.loss_plus[0] - rec.loss_minus[0]) / cfg.eps
    b.load_base()


def test_projected_gradient_points_downhill(sglang_backend):
    """A step along −g·z lowers the loss on the batch it measured (small lr, real engine)."""
    b = sglang_backend
    b.load_base()
    enc = _batch(b)
    loss = _loss(b, enc)
    before = loss()
    rec = mezo_step(perturb.make("layerwise", b.pieces, b), loss, [7], Settings(lr=2e-4, eps=1e-3))
    assert abs(rec.grads[0]) > 0
    assert loss() < before
    b.load_base()


@pytest.mark.parametrize("mode", ["layerwise", "inplace"])
def test_nan_objective_restores_weights_and_raises(sglang_backend, mode):
    b = sglang_backend
    b.load_base()
    base = _weights(b)
    enc = _batch(b)
    calls = []

    def loss():  # a real forward, then NaN on the second evaluation (L−)
        calls.append(1)
        v = _loss(b, enc)()
        return float("nan") if len(calls) == 2 else v

    with pytest.raises(ObjectiveError, match="nan"):
        mezo_step(perturb.make(mode, b.pieces, b), loss, [3], Settings(lr=1e-3, eps=1e-2))
    for x, y in zip(base, _weights(b)):
        if mode == "layerwise":
            assert torch.equal(x, y)  # exact
        else:  # +ε, −2ε, +ε: back to θ up to float rounding
            assert torch.allclose(x, y, atol=1e-6)
    b.load_base()


def test_layerwise_is_exact_and_sees_the_same_perturbed_model(sglang_backend):
    """Hooks perturb every layer: L+ equals MeZO's in-place L+ bit for bit; with lr = 0 the weights come
    back bit-identical after many steps (in-place drifts)."""
    b = sglang_backend
    enc = _batch(b)
    cfg = Settings(lr=0.0, eps=1e-2)
    out = {}
    for mode in ("layerwise", "inplace"):
        b.load_base()
        base = _weights(b)
        w = perturb.make(mode, b.pieces, b)
        recs = [mezo_step(w, _loss(b, enc), [s], cfg, s) for s in range(1, 9)]
        changed = sum(int((x != y).sum()) for x, y in zip(base, _weights(b)))
        out[mode] = (recs, changed)
    lw, ip = out["layerwise"][0], out["inplace"][0]
    assert lw[0].loss_plus == ip[0].loss_plus  # same θ+εz, bit for bit (later steps: in-place drifted)
    assert [r.loss_minus[0] for r in lw] == pytest.approx([r.loss_minus[0] for r in ip], abs=1e-5)
    assert all(r.loss_plus != r.loss_minus for r in lw)
    assert out["layerwise"][1] == 0
    assert out["inplace"][1] > 0
    b.load_base()


@pytest.mark.parametrize("kw,msg", [({"lr": math.nan}, r"'lr' \(--lr\) must be finite"), ({"eps": 0}, "'eps' .* must be between 1e-08 and 1"),
                                    ({"estimator": "three_point"}, "estimator"), ({"n_queries": 0}, "n_queries")])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Settings(**kw)


def test_multi_token_label_word_is_refused(sglang_backend):
    from sglang_mezo.tasks import TaskError

    ex = [Example("good It was", [" terrible", " qzxqzxqzx"], 0)]
    with pytest.raises(TaskError, match="qzxqzxqzx.*single tokens"):
        objectives.encode(ex, sglang_backend.tokenizer)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_layerwise_exact_inplace_drifts(tiny_model, dtype):
    """transformers backend in half precision, real forwards, 20 lr = 0 steps."""
    from sglang_mezo.backends import make_backend

    b = make_backend("hf", tiny_model, dtype)
    enc = _batch(b)
    counts = {}
    for mode in ("layerwise", "inplace"):
        b.load_base()
        base = _weights(b)
        w = perturb.make(mode, b.pieces, b)
        for s in range(20):
            mezo_step(w, _loss(b, enc), [s], Settings(lr=0.0, eps=1e-2))
        counts[mode] = sum(int((x != y).sum()) for x, y in zip(base, _weights(b)))
    assert counts["layerwise"] == 0
    assert counts["inplace"] > 1000, counts


def test_layerwise_windows_never_nest():
    """A module with weights of its own that runs another such module inside it would open one window
    inside another (they share one scratch buffer): refused by name, every weight restored bit for bit.
    The same perturbation on sequential windows works and also leaves the weights exact."""
    from sglang_mezo.backends.base import Piece
    from sglang_mezo.perturb import Layerwise

    class Outer(torch.nn.Module):  # own weight, and a Linear (a window of its own) called inside it
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(4))
            self.inner = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.inner(x * self.scale)

    torch.manual_seed(0)
    layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
    model = torch.nn.Module()
    model.layers, model.outer = layers, Outer()
    x = torch.randn(2, 4)

    def pieces(*mods):
        return [Piece(f"{i}.{n}", tuple(p.shape), p.data, (0,) * p.dim())
                for i, m in enumerate(mods) for n, p in m.named_parameters()]

    before = [p.detach().clone() for p in model.parameters()]
    ok = Layerwise(pieces(*layers), list(layers), model=model)   # the two layers: one after the other
    plus, minus = ok.losses(7, [1e-2, -1e-2], lambda: float(layers[1](layers[0](x)).sum()))
    assert plus != minus and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    w = Layerwise(pieces(*layers, model.outer), list(layers), model=model)
    assert len(w.windows) == 4  # two layers, Outer (its scale) and Outer.inner
    with pytest.raises(RuntimeError, match="window Linear opened inside window Outer.*must not nest"):
        w.losses(7, [1e-2], lambda: float(model.outer(layers[0](x)).sum()))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert w._open is None

"""Sparse MeZO (--sparsity s): z masked to each matrix's small-magnitude weights, on the real SGLang engine
(tiny Llama) and transformers; the masked sweep against the pure-Python noise reference; replay bit-exact;
bad input refused before any step."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import ce_loss, cli, last_json, sentiment_batch
from sglang_mezo import perturb, trajectory
from sglang_mezo.backends.base import Piece
from sglang_mezo.mezo import mezo_step, replay_step
from sglang_mezo.noise import Add, Update, apply, gaussian_reference, stream_key
from sglang_mezo.noise_sweep import sweep, sweep_masked
from sglang_mezo.perturb.sparse import masked, threshold
from sglang_mezo.settings import Settings, SettingError

S = 0.5


_batch, _loss = sentiment_batch, ce_loss   # the shared tiny step batch and its loss (conftest)


def _steps(b, cfg, n_steps=3, sparsity=S):
    w = perturb.make("layerwise", b.pieces, b, sparsity=sparsity)
    assert isinstance(w, perturb.Sparse)
    enc = _batch(b)
    return [mezo_step(w, _loss(b, enc), [100 * s + q for q in range(cfg.n_queries)], cfg, s)
            for s in range(1, n_steps + 1)]


# -- the masked sweep ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_sweep_equals_pure_reference(dtype):
    """sweep_masked == z from the pure-Python reference times the mask, through the same torch arithmetic;
    with a row offset (hf_start) and chunks smaller than the tensor; masked-out elements untouched."""
    torch.manual_seed(0)
    name, shape = "model.layers.0.mlp.down_proj.weight", (7, 9)
    full = torch.randn(shape).to(dtype)
    for rows in ((0, 7), (2, 5)):   # the whole matrix, and rows 2..4 (the flat index base moves)
        view = full[rows[0]: rows[1]].clone()
        piece = Piece(name, shape, view, (rows[0], 0))
        start = view.clone()
        q = threshold(start, S)
        m = start.float().abs() <= q
        steps = [(11, [Add(0.3)]), (12, [Update(0.05, 0.01)]), (13, [Update(-0.2)])]
        sweep_masked([piece], steps, {name: q}, chunk=5)
        ref = start.clone().view(-1)
        base = rows[0] * shape[1]
        for seed, ops in steps:
            key = stream_key(seed, name)
            z = torch.tensor([gaussian_reference(key, base + i) for i in range(ref.numel())]) * m.view(-1)
            apply(ref, z, ops, piece.decays)
        assert torch.equal(view.view(-1), ref)
        out = ~m
        # out of the mask only the decay (of seed 12's update) acts: exactly the decay's arithmetic
        decayed = start.clone().view(-1)
        decayed.sub_(torch.zeros(decayed.numel()) + decayed * 0.01)
        assert torch.equal(view.view(-1)[out.view(-1)], decayed[out.view(-1)])
        assert 0.4 <= m.float().mean().item() <= 0.6


def test_masked_sweep_with_everything_inside_is_the_dense_sweep():
    """A threshold above every |w|: the masked sweep is the dense one bit for bit (native C and torch)."""
    torch.manual_seed(1)
    name, shape = "w", (33, 17)
    a, b, c = (torch.randn(shape) for _ in range(3))
    b.copy_(a)
    c.copy_(a)
    ops = [Add(1e-2), Update(3e-3, 1e-3)]
    sweep_masked([Piece(name, shape, a, (0, 0))], [(5, ops)], {name: torch.tensor(float("inf"))}, chunk=64)
    sweep([Piece(name, shape, b, (0, 0))], 5, ops, impl="torch")
    sweep([Piece(name, shape, c, (0, 0))], 5, ops)   # the native kernel where it builds
    assert torch.equal(a, b) and torch.equal(a, c)


def test_threshold_rule_and_ties():
    w = torch.tensor([[-3.0, 1.0, 2.0], [1.0, -1.0, 0.5]])
    # s = 0.5: k = round(3) = 3, the 3rd smallest |w| is 1.0: the three elements tied at 1.0 and 0.5 move
    assert threshold(w, 0.5).item() == 1.0
    assert int((w.abs() <= threshold(w, 0.5)).sum()) == 4
    assert threshold(w, 0.01).item() == 0.5    # k = max(1, round(0.06)) = 1
    assert masked(Piece("a.weight", (2, 3), w, (0, 0))) and not masked(Piece("a.norm.weight", (3,), w[0], (0,)))


# -- steps on the engine ------------------------------------------------------------------------------------
def test_one_step_changes_exactly_the_mask(sglang_backend):
    """lr > 0, weight_decay 0: inside each matrix only elements with |w_start| <= q move (the rest bit for
    bit unchanged), about s of them; vectors stay dense. lr = 0: every weight comes back bit-identical."""
    b = sglang_backend
    b.load_base()
    start = [p.view.clone() for p in b.pieces]
    _steps(b, Settings(lr=1e-2, eps=1e-2, n_queries=2), n_steps=1)
    fractions = []
    for p, w0 in zip(b.pieces, start):
        changed = p.view != w0
        if masked(p):
            inside = w0.float().abs() <= threshold(w0, S)
            assert not (changed & ~inside).any(), p.hf_name
            fractions.append(changed.float().mean().item())
            assert abs(inside.float().mean().item() - S) < 0.01, p.hf_name   # fp32: ties are rare
        else:
            assert changed.float().mean().item() > 0.9, p.hf_name
    assert min(fractions) > 0.9 * S and max(fractions) <= S + 0.01, fractions
    b.load_base()
    _steps(b, Settings(lr=0.0, eps=1e-2, estimator="fzoo", n_queries=2), n_steps=3)
    assert all(torch.equal(p.view, w0) for p, w0 in zip(b.pieces, start))
    b.load_base()


@pytest.mark.parametrize("cfg", [Settings(lr=1e-2, eps=1e-2, n_queries=2, weight_decay=0.1, sparsity=S),
                                 Settings(lr=1e-2, eps=1e-2, estimator="fzoo", n_queries=3, sparsity=S)],
                         ids=["two_point_n2", "fzoo_n3"])
def test_sparse_steps_replay_bit_identically(sglang_backend, tiny_model, tmp_path, cfg):
    """Trained on the engine (fused qkv/gate_up) == replayed on the engine == replayed offline on the
    checkpoint's whole HF tensors (trajectory.replay reads the sparsity from the header)."""
    b = sglang_backend
    b.load_base()
    recs = _steps(b, cfg)
    trained = b.hf_state_dict()
    b.load_base()
    base = b.hf_state_dict()
    redo = perturb.make("layerwise", b.pieces, b, replay=True, sparsity=cfg.sparsity)
    for rec in recs:
        replay_step(redo, rec)
    assert all(torch.equal(trained[k], v) for k, v in b.hf_state_dict().items())
    path = tmp_path / "t.jsonl"
    head = trajectory.make_header(tiny_model, "float32", b.pieces, "sglang", "layerwise", sparsity=cfg.sparsity)
    assert head["sparsity"] == cfg.sparsity
    trajectory.write(path, head, recs)
    offline = trajectory.replay(tiny_model, path)
    assert offline.keys() == trained.keys() and all(torch.equal(trained[k], v) for k, v in offline.items())
    # the dense replay of the same records is different weights: the header's sparsity is what was read
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    dense = dict(head)
    del dense["sparsity"]
    trajectory.write(path, dense, recs)
    assert any(not torch.equal(trained[k], v) for k, v in trajectory.replay(tiny_model, path).items())
    b.load_base()


def test_hf_and_sglang_take_the_same_sparse_step(sglang_backend, fresh_hf):
    """The same sparse steps on transformers and on SGLang's fused layout: losses to the engines' usual
    tolerance; the first step moves the same elements on both; SGLang's records replayed on the hf
    backend give SGLang's weights bit for bit."""
    cfg = Settings(lr=1e-2, eps=1e-2, n_queries=2, sparsity=S)
    out = {}
    for name, b in (("sgl", sglang_backend), ("hf", fresh_hf)):
        b.load_base()
        base = b.hf_state_dict()
        one = _steps(b, cfg, n_steps=1)
        after = b.hf_state_dict()
        out[name] = (one, {k: after[k] != base[k] for k in base}, after)
        b.load_base()
    (rs, cs, ws), (rh, ch, wh) = out["sgl"], out["hf"]
    ls = lambda rs: [v for r in rs for v in r.loss_plus + r.loss_minus]  # noqa: E731
    assert ls(rs) == pytest.approx(ls(rh), abs=1e-5)
    assert cs.keys() == ch.keys() and all(torch.equal(cs[k], ch[k]) for k in cs)
    assert all(torch.allclose(ws[k], wh[k], atol=1e-6) for k in ws)
    recs = _steps(sglang_backend, cfg, n_steps=3)
    trained = sglang_backend.hf_state_dict()
    redo = perturb.make("layerwise", fresh_hf.pieces, fresh_hf, replay=True, sparsity=S)
    for rec in recs:
        replay_step(redo, rec)
    hf_w = fresh_hf.hf_state_dict()
    assert all(torch.equal(trained[k], hf_w[k]) for k in trained)
    sglang_backend.load_base()


# -- refusals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,msg", [({"sparsity": -0.1}, "must be at least 0 and below 1"),
                                    ({"sparsity": 1}, "must be at least 0 and below 1"),
                                    ({"sparsity": 1.5}, "must be at least 0 and below 1"),
                                    ({"sparsity": 0.5, "perturb": "inplace"}, "needs --perturb layerwise"),
                                    ({"sparsity": 0.5, "perturb": "lowrank", "rank": 2}, "needs --perturb layerwise")])
def test_bad_sparsity_settings(kw, msg):
    with pytest.raises(SettingError, match=r"'sparsity' \(--sparsity\) " + msg):
        Settings(**kw)


def test_sparse_strategy_refuses_other_modes_and_tensor_parallel_shards():
    w = torch.zeros(4, 6)
    whole, shard = Piece("m.o_proj.weight", (4, 6), w, (0, 0)), Piece("m.o_proj.weight", (4, 12), w, (0, 6))
    for mode in ("inplace", "lowrank"):
        with pytest.raises(ValueError, match="--sparsity is for --perturb layerwise"):
            perturb.make(mode, [whole], replay=True, rank=2, sparsity=0.5)
    with pytest.raises(ValueError, match="--sparsity: m.o_proj.weight is held in parts.*tensor parallelism"):
        perturb.make("layerwise", [shard], replay=True, sparsity=0.5)
    assert isinstance(perturb.make("layerwise", [whole], replay=True, sparsity=0.5), perturb.Sparse)
    assert type(perturb.make("layerwise", [whole], replay=True)) is perturb.Layerwise   # s = 0: dense


@pytest.mark.parametrize("args,msg", [(["--sparsity", "-0.1"], "'sparsity' (--sparsity) must be at least 0"),
                                      (["--sparsity", "1"], "'sparsity' (--sparsity) must be at least 0"),
                                      (["--sparsity", "1.5"], "'sparsity' (--sparsity) must be at least 0"),
                                      (["--sparsity", "0.5", "--perturb", "inplace"], "needs --perturb layerwise"),
                                      (["--sparsity", "0.5", "--perturb", "lowrank", "--rank", "2"],
                                       "needs --perturb layerwise")])
def test_cli_refuses_bad_sparsity_before_any_step(tiny_model, tmp_path, args, msg):
    out = tmp_path / "out"
    p = cli("train", "--model", tiny_model, "--out", str(out), "--steps", "2", *args, check=False)
    assert p.returncode == 2 and msg in p.stderr, p.stderr[-2000:]
    assert not out.exists()


# -- the CLI end to end -----------------------------------------------------------------------------------
def test_cli_sparse_train_then_replay_is_bit_identical(tiny_model, tmp_path):
    out = tmp_path / "run"
    cli("train", "--model", tiny_model, "--out", str(out), "--keep", "last", "--steps", "3", "--batch-size", "8",
        "--lr", "1e-2", "--eps", "1e-2", "--n-queries", "2", "--n-test", "16", "--seed", "3",
        "--sparsity", "0.5", "--progress-off")
    assert json.loads((out / "config.json").read_text())["sparsity"] == 0.5
    head = json.loads((out / "trajectory.jsonl").read_text().splitlines()[0])
    assert head["sparsity"] == 0.5 and head["perturb"] == "layerwise"
    replayed = tmp_path / "replayed"
    res = last_json(cli("replay", "--trajectory", str(out / "trajectory.jsonl"), "--out", str(replayed)).stdout)
    assert res["steps"] == 3
    a, b = load_file(str(out / "model" / "model.safetensors")), load_file(str(replayed / "model.safetensors"))
    base = load_file(f"{tiny_model}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], base[k]) for k in a)


# -- serving: the flag, the journal pin ---------------------------------------------------------------------
def test_serve_sparsity_flag_is_checked_by_settings(monkeypatch):
    """`serve --mezo-sparsity` is refused as `train --sparsity` is (the same Settings message); a good value
    reaches the schedulers (SGLANG_MEZO_SPARSITY)."""
    from sglang_mezo.serve import http as server

    for k in ("SGLANG_MEZO_PERTURB", "SGLANG_MEZO_RANK", "SGLANG_MEZO_SPARSITY"):
        monkeypatch.setenv(k, "")   # restored after the test: _lowrank_flags sets them
    for extra, kw in ((["--mezo-sparsity", "1.5"], {"sparsity": 1.5}),
                      (["--mezo-sparsity", "-0.1"], {"sparsity": -0.1}),
                      (["--mezo-sparsity", "0.5", "--mezo-perturb", "inplace"],
                       {"sparsity": 0.5, "perturb": "inplace"})):
        ns, rest = server._mezo_flags(extra)
        with pytest.raises(SystemExit) as served:
            server._lowrank_flags(ns, rest)
        with pytest.raises(SettingError) as trained:
            Settings(**kw)
        assert "--mezo-sparsity" in str(served.value) and str(served.value).endswith(str(trained.value))
    ns, rest = server._mezo_flags(["--mezo-sparsity", "0.5"])
    server._lowrank_flags(ns, rest)
    assert ns.mezo_sparsity == 0.5 and float(__import__("os").environ["SGLANG_MEZO_SPARSITY"]) == 0.5


def test_journal_pins_the_sparsity():
    """A served journal is replayed only by a server with the same sparsity (absent in a header: dense)."""
    from sglang_mezo.serve.journal import mismatches

    dense, sparse = {"perturb": "layerwise"}, {"perturb": "layerwise", "sparsity": 0.5}
    assert mismatches(dense, {"perturb": "layerwise", "sparsity": 0.0}) == []
    assert mismatches(sparse, {"perturb": "layerwise", "sparsity": 0.5}) == []
    assert mismatches(sparse, {"perturb": "layerwise", "sparsity": 0.0}) == \
        ["Sparse MeZO sparsity (--mezo-sparsity): journal 0.5, this server 0.0"]
    assert mismatches(dense, sparse) == ["Sparse MeZO sparsity (--mezo-sparsity): journal 0.0, this server 0.5"]


def test_replicas_take_the_sparsity_of_their_servers(tmp_path):
    """`train --replicas` refuses --sparsity before contacting any replica (each server's own setting)."""
    from sglang_mezo.replicas import train_replicas

    cfg = Settings(out=str(tmp_path / "out"), replicas="http://127.0.0.1:9", sparsity=0.5)
    with pytest.raises(ValueError, match="--replicas does not take --sparsity.*--mezo-sparsity"):
        train_replicas(cfg, ["http://127.0.0.1:9"])
    assert not (tmp_path / "out").exists()


def test_served_sparse_steps_are_journaled_restored_and_replayable(tiny_model, tmp_path):
    """`serve --mezo-sparsity 0.5 --mezo-run-dir`: sparse steps (n = 2) journaled with the sparsity; a
    restart restores the same weights; the journal replays offline to the served model bit for bit; a
    dense server refuses the sparse journal before SGLang starts."""
    import subprocess
    import sys

    import requests

    from conftest import ROOT
    from serve_helpers import free_port, post_ok, running_server

    run, saves = tmp_path / "run", tmp_path / "saves"
    saves.mkdir()
    extra = ("--mezo-run-dir", str(run), "--mezo-save-dir", str(saves), "--mezo-sparsity", "0.5")
    step = {"task": "sst2", "lr": 1e-2, "eps": 1e-2, "batch_size": 4, "seed": 3, "n_queries": 2}
    with running_server(tiny_model, tmp_path / "s1.log", *extra, start_timeout=600) as url:
        assert [post_ok(url, "/mezo/step", step)["step"] for _ in range(2)] == [1, 2]
        post_ok(url, "/mezo/save", {"path": "served"})
        before = requests.get(url + "/mezo/checksum", timeout=300).json()["weights_sha256"]
    head = json.loads((run / "trajectory.jsonl").read_text().splitlines()[0])
    assert head["sparsity"] == 0.5 and head["perturb"] == "layerwise"
    with running_server(tiny_model, tmp_path / "s2.log", *extra, start_timeout=600) as url:
        assert requests.get(url + "/mezo/checksum", timeout=300).json()["weights_sha256"] == before
    cli("replay", "--trajectory", str(run / "trajectory.jsonl"), "--out", str(tmp_path / "rep"))
    a = load_file(str(saves / "served/model/model.safetensors"))
    b = load_file(str(tmp_path / "rep/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    p = subprocess.run([sys.executable, "-m", "sglang_mezo", "serve", "--model-path", tiny_model, "--port",
                        str(free_port()), "--dtype", "float32", "--mezo-run-dir", str(run)],
                       capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert p.returncode != 0 and "Sparse MeZO sparsity (--mezo-sparsity): journal 0.5, this server 0.0" in p.stderr, \
        p.stderr[-2000:]

"""`sglang-mezo serve --mezo-perturb lowrank`: the ±ε forwards are ordinary requests with adapter ids,
scheduled beside user traffic; serving pauses only for each in-place update. Real server, tiny Llama."""
import json
import time

import pytest
import requests
import torch

from serve_helpers import running_server, post_ok
from sglang_mezo.mezo import StepRecord, replay_step
from sglang_mezo import perturb
from sglang_mezo.tasks import Example

RANK = 2
PIECE_TOKENS = 8   # about one of EXAMPLES' requests per piece: a step is many pieces
EXAMPLES = [{"prompt": p + " It was", "candidates": [" terrible", " great"], "label": l}
            for p, l in (("good fun movie", 1), ("awful boring plot", 0), ("very wonderful story", 1),
                         ("bad acting", 0))]
PROBE = {"text": "the movie was good It was", "sampling_params": {"max_new_tokens": 1, "temperature": 0},
         "return_logprob": True, "logprob_start_len": 0}


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("saves")


@pytest.fixture(scope="module")
def server(tiny_model, save_dir, tmp_path_factory):
    with running_server(tiny_model, tmp_path_factory.mktemp("serve") / "server.log", "--mezo-save-dir",
                        str(save_dir), "--mezo-perturb", "lowrank", "--mezo-rank", str(RANK),
                        "--mezo-piece-tokens", str(PIECE_TOKENS)) as url:
        yield url


def _probe_logprobs(out):
    return [x[0] for x in out["meta_info"]["input_token_logprobs"][1:]]


def test_served_lowrank_steps_equal_offline_merged_steps(server, tiny_model):
    """Three served steps (ce, ce again on the same prompts, then lm: next-token and span log-probs)
    equal the same steps on transformers with the directions merged (hf backend). The repeated prompts
    would expose any KV reused from the previous step's adapters or weights. The fourth runs while user
    requests follow each other: its requests are admitted piece by piece, never while a user request
    waits or runs, users that arrive mid-step are served before its remaining pieces, and its losses are
    still those of the offline step."""
    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo.backends import make_backend
    from sglang_mezo.mezo import estimate, points
    from sglang_mezo.settings import Settings

    hf = make_backend("hf", tiny_model)
    w = perturb.make("lowrank", hf.pieces, hf, rank=RANK)
    exs = [Example(**e) for e in EXAMPLES]
    for i, (obj, est, n, users) in enumerate((("ce", "two_point", 2, False), ("ce", "fzoo", 3, False),
                                              ("lm", "two_point", 1, False), ("ce", "two_point", 2, True))):
        body = {"examples": EXAMPLES, "lr": 5e-2, "eps": 1e-2, "n_queries": n, "estimator": est,
                "objective": obj, "seed": 11 + i}
        res = _step_beside_users(server, body) if users else post_ok(server, "/mezo/step", body)
        assert sum(p[0] for p in res["pieces"]) == res["requests"], res["pieces"]  # every one admitted
        assert all(p[2] == 0 for p in res["pieces"]), res["pieces"]  # no user waiting/running at admission
        if users:  # users were admitted between the step's pieces: before its remaining requests
            assert len(res["pieces"]) >= 4 and res["pieces"][-1][1] > res["pieces"][0][1], res["pieces"]
        assert res["step"] == i + 1 and res["adapters"] == (2 * n if est == "two_point" else n)
        enc = objectives.encode(exs, hf.tokenizer)
        fn = objectives.get_objective(obj)
        cfg = Settings(lr=5e-2, eps=1e-2, estimator=est, n_queries=n)
        offline = estimate(w.losses_at(points(res["seeds"], cfg),
                                       lambda: fn(objectives.run_batch(hf, exs, enc))), cfg)
        served = (res["projected_grad"], res["loss_plus"], res["loss_minus"])
        for a, b in zip(sum(offline[1:], []), sum(served[1:], [])):
            assert abs(a - b) <= 1e-4, (i, offline, served)
        replay_step(w, StepRecord(i + 1, res["seeds"], res["projected_grad"], 5e-2, 1e-2, 0.0, est,
                                  res["loss_plus"], res["loss_minus"]))


def _step_beside_users(server, body):
    """/mezo/step while a client sends user requests back to back (a thread), from before until after."""
    import threading

    stop, served = threading.Event(), []

    def users():
        while not stop.is_set():
            served.append(post_ok(server, "/generate", {**PROBE, "sampling_params": {"max_new_tokens": 4}}))

    t = threading.Thread(target=users)
    t.start()
    try:
        while len(served) < 2:
            time.sleep(0.02)
        return post_ok(server, "/mezo/step", body)
    finally:
        stop.set()
        t.join()


def test_users_never_see_perturbed_weights_and_wait_at_most_one_update(server, tiny_model, save_dir):
    """Under continuous low-rank training, every probe equals an offline forward of a saved step's weights
    (never an adapter's), and none waits longer than one update plus one batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sglang_mezo.trajectory import replay

    idle = []
    for _ in range(5):
        t = time.perf_counter()
        post_ok(server, "/generate", PROBE)
        idle.append(time.perf_counter() - t)
    start = requests.get(server + "/mezo/status", timeout=60).json()["steps"]
    post_ok(server, "/mezo/train", {"task": "sst2", "steps": 10, "lr": 5e-2, "eps": 1e-2, "batch_size": 8,
                                  "n_queries": 2, "seed": 5, "interval_s": 0}, expect=202)
    probes = []

    def done():
        return requests.get(server + "/mezo/status", timeout=60).json()

    while True:
        before = done()
        t = time.perf_counter()
        out = post_ok(server, "/generate", PROBE)
        lat = time.perf_counter() - t
        after = done()
        probes.append((start + before["done"], start + after["done"], lat, _probe_logprobs(out)))
        if not after["running"]:
            break
    prog = done()
    assert prog["error"] is None and prog["done"] == 10
    bound = prog["max_update_s"] + prog["max_forward_s"] + max(idle) + 1.0
    assert max(p[2] for p in probes) <= bound, ([round(p[2], 3) for p in probes], prog, idle)
    post_ok(server, "/mezo/save", {"path": "lowrank_run"})
    traj = save_dir / "lowrank_run" / "trajectory.jsonl"
    names = json.loads(traj.read_text().splitlines()[0])["trainable_names"]
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(names)  # the served steps cover them
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = torch.tensor([tok.encode(PROBE["text"])])
    cache = {}

    def offline(k):
        if k not in cache:
            m = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
            m.load_state_dict(replay(tiny_model, traj, upto=k), strict=False)
            with torch.no_grad():
                lp = torch.log_softmax(m(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
            cache[k] = lp.tolist()
        return cache[k]

    matched = set()
    for b, a, _, lps in probes:
        gaps = {k: max(abs(x - y) for x, y in zip(lps, offline(k))) for k in range(b, min(a + 1, start + 10) + 1)}
        k = min(gaps, key=gaps.get)
        # sglang's float32 kernels vs transformers: ~5e-7 on most weight states; measured up to 2.8e-5 with
        # projection directions and 1.4e-4 with the embedding / LM-head ones (their steps move log-probs by up
        # to 6). Neighbouring steps are >= 1.5e-2 apart and a perturbed forward >= 1e-2: the nearest step
        # must be within 1e-3 and at least 100x nearer than any other candidate.
        others = [g for j, g in gaps.items() if j != k]
        assert gaps[k] <= 1e-3 and all(g >= 100 * gaps[k] for g in others), (b, a, gaps)
        matched.add(k)
    assert len(matched) >= 3, f"probes saw only steps {matched}: training and serving did not overlap"


def test_bad_lowrank_request_is_refused_before_any_step(server):
    before = requests.get(server + "/mezo/status", timeout=60).json()["steps"]
    r = requests.post(server + "/mezo/step", json={"examples": EXAMPLES, "lr": 1e-3, "n_queries": 5}, timeout=60)
    assert r.status_code == 400 and "--max-loras-per-batch" in r.text, r.text
    assert requests.get(server + "/mezo/status", timeout=60).json()["steps"] == before


def test_serve_lowrank_flags_are_refused_with_the_train_flags_messages():
    """`serve --mezo-perturb/--mezo-rank` are checked by the one Settings definition, as train's flags."""
    from sglang_mezo.serve import http as server
    from sglang_mezo.settings import SettingError, Settings

    for mode, rank in (("lowrank", None), ("layerwise", "3"), ("lowrank", "0"), ("bogus", None),
                          ("lowrank", "x")):
        argv = ["--mezo-perturb", mode] + ([] if rank is None else ["--mezo-rank", rank])
        ns, rest = server._mezo_flags(argv)
        with pytest.raises(SystemExit) as served:
            server._lowrank_flags(ns, rest)
        with pytest.raises(SettingError) as trained:
            Settings(perturb=mode, rank=int(rank) if rank and rank.isdigit() else rank)
        assert str(served.value).endswith(str(trained.value))


@pytest.mark.parametrize("argv, match", [
    (["--mezo-piece-tokens", "0"], "--mezo-piece-tokens 0: must be at least 1"),
    (["--chunked-prefill-size", "0"], "--chunked-prefill-size 0: must be at least 1"),
    (["--schedule-policy", "lpm"], "--schedule-policy lpm contradicts priority scheduling"),
    (["--mezo-perturb", "layerwise", "--mezo-piece-tokens", "8"], "--mezo-piece-tokens applies to"),
])
def test_bad_piece_chunk_and_priority_flags_stop_serve_by_name(argv, match):
    from sglang_mezo.serve import http as server

    argv = ["--mezo-perturb", "lowrank", "--mezo-rank", "2"] + argv if "--mezo-perturb" not in argv else argv
    ns, rest = server._mezo_flags(argv)
    with pytest.raises(SystemExit) as e:
        server._lowrank_flags(ns, rest)
    assert match in str(e.value), e.value


def test_sizes_beyond_the_context_and_users_at_training_priority_are_refused():
    from types import SimpleNamespace

    from sglang_mezo.serve import http as server
    from sglang_mezo.serve.schedule import LOWEST, priority_flags

    assert priority_flags([]) == ["--enable-priority-scheduling", "--default-priority-value", "0"]
    assert priority_flags(["--enable-priority-scheduling", "--default-priority-value=5"]) == []
    args = dict(context_length=128, model_path="", chunked_prefill_size=-1, enable_priority_scheduling=True,
                default_priority_value=0, schedule_low_priority_values_first=False)
    ns = SimpleNamespace(mezo_perturb="lowrank", mezo_piece_tokens=64)
    server._check_sizes(ns, SimpleNamespace(**args))  # fine
    for change, flag in (({"chunked_prefill_size": 129}, "--chunked-prefill-size 129: beyond the model's "
                          "context of 128"), ({"default_priority_value": LOWEST}, "--default-priority-value")):
        with pytest.raises(SystemExit) as e:
            server._check_sizes(ns, SimpleNamespace(**{**args, **change}))
        assert flag in str(e.value), e.value
    with pytest.raises(SystemExit) as e:
        server._check_sizes(SimpleNamespace(mezo_perturb="lowrank", mezo_piece_tokens=200), SimpleNamespace(**args))
    assert "--mezo-piece-tokens 200: beyond" in str(e.value)


def test_served_tied_embedding_step_equals_offline_merged(tiny_tied_model, tmp_path):
    """A tied Llama served with --mezo-lowrank-targets embed_tokens,q_proj,k_proj,v_proj: the shared tensor's one direction
    is two adapter modules (lookup and logits); the served step equals hf with it merged once, and the
    update lands once on the shared tensor (the saved weights equal the offline replay)."""
    from sglang_mezo.backends import make_backend
    from sglang_mezo.mezo import estimate, points
    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo.settings import Settings
    from sglang_mezo.trajectory import replay

    with running_server(tiny_tied_model, tmp_path / "server.log", "--mezo-save-dir", str(tmp_path),
                        "--mezo-perturb", "lowrank", "--mezo-rank", str(RANK),
                        "--mezo-lowrank-targets", "embed_tokens,q_proj,k_proj,v_proj") as url:
        res = post_ok(url, "/mezo/step", {"examples": EXAMPLES, "lr": 5e-2, "eps": 1e-2, "n_queries": 2,
                                        "seed": 3})
        post_ok(url, "/mezo/save", {"path": "tied"})
    hf = make_backend("hf", tiny_tied_model)
    pieces = [p for p in hf.pieces if p.hf_name.endswith(("embed_tokens.weight", "q_proj.weight", "k_proj.weight",
                                                          "v_proj.weight"))]
    w = perturb.make("lowrank", pieces, hf, rank=RANK)
    exs = [Example(**e) for e in EXAMPLES]
    enc = objectives.encode(exs, hf.tokenizer)
    cfg = Settings(lr=5e-2, eps=1e-2, n_queries=2)
    offline = estimate(w.losses_at(points(res["seeds"], cfg),
                                   lambda: objectives.get_objective("ce")(objectives.run_batch(hf, exs, enc))), cfg)
    for a, b in zip(offline[1] + offline[2], res["loss_plus"] + res["loss_minus"]):
        assert abs(a - b) <= 1e-4, (offline, res)
    head = json.loads((tmp_path / "tied" / "trajectory.jsonl").read_text().splitlines()[0])
    assert "model.embed_tokens.weight" in head["trainable_names"] and "lm_head.weight" not in head["trainable_names"]
    replay_step(w, StepRecord(1, res["seeds"], res["projected_grad"], 5e-2, 1e-2, 0.0, "two_point",
                              res["loss_plus"], res["loss_minus"]))
    replayed = replay(tiny_tied_model, tmp_path / "tied" / "trajectory.jsonl")
    assert torch.equal(replayed["model.embed_tokens.weight"], hf.model.model.embed_tokens.weight.detach())
    assert hf.model.lm_head.weight is hf.model.model.embed_tokens.weight  # still one tensor


def test_serve_lowrank_targets_and_rank_are_checked_at_launch(tiny_model):
    from sglang_mezo.serve import http as server

    for extra, want in ((["--mezo-lowrank-targets", "norm"], "--lowrank-targets 'norm'"),
                        (["--mezo-rank", "33"], "exceeds the smaller dimension 32")):
        argv = ["--model-path", tiny_model, "--mezo-perturb", "lowrank", "--mezo-rank", "2", *extra]
        ns, rest = server._mezo_flags(argv)
        with pytest.raises(SystemExit, match=want):
            server._lowrank_flags(ns, rest)

"""A real `sglang-mezo serve` started as an operator would share it: SGLang's --api-key (users) and
--admin-api-key (who may change the served model), a task folder, a save folder, two registered
objectives. Only the admin changes the model; nothing a request says is imported or used as a path."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests

from conftest import ROOT
from serve_helpers import running_server

USER, ADMIN = "user-key-123", "admin-key-456"
EX = [{"prompt": "good fun It was", "candidates": [" terrible", " great"], "label": 1},
      {"prompt": "awful plot It was", "candidates": [" terrible", " great"], "label": 0}]
STEP = {"examples": EX, "lr": 1e-3, "eps": 1e-2, "seed": 5}
SECRET = "TOP-SECRET-5f3a"   # in files outside the allowed folders: must never reach a client
MUTATING = ["/mezo/step", "/mezo/train", "/mezo/rollback", "/mezo/save"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    d = {k: root / k for k in ("probes", "markers", "tasks", "saves", "outside")}
    for p in d.values():
        p.mkdir()
    (d["probes"] / "mezo_sec_probe.py").write_text(textwrap.dedent("""
        from sglang_mezo.objectives.label_words import OBJECTIVES

        def neg_ce(out):
            return -OBJECTIVES["ce"](out)

        def boom(out):
            raise RuntimeError("probe objective failed on purpose")
        """))
    # importing or calling this module leaves a file behind: proof that a request made the server run it
    (d["probes"] / "mezo_evil_probe.py").write_text(textwrap.dedent("""
        import os, pathlib
        pathlib.Path(os.environ["MEZO_MARKERS"], f"imported-{os.getpid()}").touch()

        def run(*args):
            pathlib.Path(os.environ["MEZO_MARKERS"], "called").touch()
            return 0.0
        """))
    rows = [{"text": f"{w} movie", "label": lab} for w, lab in
            [("good", "pos"), ("great", "pos"), ("fun", "pos"), ("wonderful", "pos"), ("very good", "pos"),
             ("good fun", "pos"), ("bad", "neg"), ("awful", "neg"), ("boring", "neg"), ("terrible", "neg"),
             ("very bad", "neg"), ("not fun", "neg")]]
    for split in ("train", "test"):
        (d["tasks"] / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = 'template: "{text} It was"\nlabel_words: {neg: " terrible", pos: " great"}\n'
    (d["tasks"] / "good.yaml").write_text(f"train: train.jsonl\ntest: test.jsonl\n{task}")
    (d["outside"] / "secret.jsonl").write_text(json.dumps({"text": SECRET, "label": SECRET}) + "\n")
    (d["outside"] / "outside.yaml").write_text(f"train: secret.jsonl\ntest: secret.jsonl\n{task}")
    (d["tasks"] / "escape.yaml").write_text(f"train: ../outside/secret.jsonl\ntest: test.jsonl\n{task}")
    (d["tasks"] / "absolute.yaml").write_text(f"train: {d['outside'] / 'secret.jsonl'}\ntest: test.jsonl\n{task}")
    (d["tasks"] / "link.yaml").symlink_to(d["outside"] / "outside.yaml")
    (d["tasks"] / "broken.yaml").write_text(f"train: [unclosed {SECRET}\n")
    (d["tasks"] / "badrows.yaml").write_text(f"train: bad.jsonl\ntest: bad.jsonl\n{task}")
    (d["tasks"] / "bad.jsonl").write_text(json.dumps({"text": "x", "label": SECRET}) + "\n")
    (d["saves"] / "out").symlink_to(d["outside"])
    return d


@pytest.fixture(scope="module")
def server(tiny_model, env):
    log = env["markers"].parent / "server.log"
    with running_server(tiny_model, log, "--api-key", USER, "--admin-api-key", ADMIN,
                        "--mezo-task-dir", str(env["tasks"]), "--mezo-save-dir", str(env["saves"]),
                        "--mezo-objective", "negce=mezo_sec_probe:neg_ce",
                        "--mezo-objective", "boom=mezo_sec_probe:boom",
                        env={"PYTHONPATH": str(env["probes"]), "MEZO_MARKERS": str(env["markers"])}) as url:
        yield url, log


def post(url, path, body, key=ADMIN, raw=None):
    return requests.post(url + path, data=raw if raw is not None else json.dumps(body),
                         headers={"content-type": "application/json",
                                  **({"Authorization": f"Bearer {key}"} if key else {})}, timeout=300)


def ok(r, status=200):
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


def checksum(url):
    return ok(requests.get(url + "/mezo/checksum", headers={"Authorization": f"Bearer {ADMIN}"},
                           timeout=120))["weights_sha256"]


def status(url, key=USER):
    return requests.get(url + "/mezo/status", headers={"Authorization": f"Bearer {key}"}, timeout=120)


def generate(url):
    r = requests.post(url + "/generate", json={"text": "a fun film", "sampling_params": {"max_new_tokens": 3}},
                      headers={"Authorization": f"Bearer {USER}"}, timeout=120)
    return ok(r)["output_ids"]


def test_only_the_admin_key_changes_the_model(server):
    url, log = server
    assert "sglang-mezo serve: WARNING" not in log.read_text()  # loopback, admin key: nothing to warn of
    before = checksum(url)
    bodies = {"/mezo/step": STEP, "/mezo/train": {**STEP, "steps": 1}, "/mezo/rollback": {"steps": 1},
              "/mezo/save": {"path": "by-user"}}
    for path in MUTATING:
        for key in (USER, None, "wrong"):
            assert post(url, path, bodies[path], key=key).status_code in (401, 403), (path, key)
    for key in (USER, None):
        assert requests.get(url + "/mezo/checksum", headers={"Authorization": f"Bearer {key}"},
                            timeout=60).status_code in (401, 403)
    assert checksum(url) == before and ok(status(url))["steps"] == 0
    assert status(url, key=None).status_code == 401
    assert generate(url)
    # SGLang's own weight route answers the user key the same way
    assert post(url, "/update_weights_from_disk", {"model_path": "x"}, key=USER).status_code in (401, 403)

    # the Python client: the admin key for what changes the model, the user key for status
    from sglang_mezo.serve import MezoClient, MezoError

    with pytest.raises(MezoError) as err:
        MezoClient(url, api_key=USER).step(**STEP)
    assert err.value.status == 401
    admin = MezoClient(url, api_key=USER, admin_api_key=ADMIN)
    assert admin.step(**STEP)["step"] == 1 and admin.status()["steps"] == 1 and admin.checksum() != before
    assert admin.rollback(1) == {"steps": 0, "rolled_back": 1}
    assert checksum(url) == before


def test_requests_cannot_import_code(server, env):
    url, log = server
    refused = ["os:getcwd", "antigravity:x", "mezo_evil_probe:run", "mezo_sec_probe:neg_ce",
               "sglang_mezo.objectives:ce", "builtins:exec"]
    for obj in refused:
        for path, extra in (("/mezo/step", {}), ("/mezo/train", {"steps": 1})):
            r = post(url, path, {**STEP, **extra, "objective": obj})
            assert r.status_code == 400, (obj, r.text)
            assert "cannot name code to import" in r.json()["error"] and "--mezo-objective" in r.json()["error"]
    assert list(env["markers"].iterdir()) == []   # nothing imported, nothing called, in any process
    assert ok(status(url))["steps"] == 0

    # registered by the operator: usable by name, and it is the operator's function that runs
    base = {**STEP, "lr": 0.0}
    ce = ok(post(url, "/mezo/step", base))
    ok(post(url, "/mezo/rollback", {"steps": 1}))
    neg = ok(post(url, "/mezo/step", {**base, "objective": "negce"}))
    ok(post(url, "/mezo/rollback", {"steps": 1}))
    assert neg["loss_plus"] == [-v for v in ce["loss_plus"]] and neg["loss_plus"] != ce["loss_plus"]

    # a step that fails inside the server: its message, never its traceback
    before = checksum(url)
    r = post(url, "/mezo/step", {**STEP, "objective": "boom"})
    assert r.status_code == 500 and "probe objective failed on purpose" in r.json()["error"]
    assert set(r.json()) == {"error"} and "Traceback" not in r.text and ".py" not in r.text
    assert "Traceback" in log.read_text() and checksum(url) == before and ok(status(url))["steps"] == 0


@pytest.mark.parametrize("task,match", [
    ("../outside/outside", "no path"),
    (None, "no path"),                            # the absolute path of a task file outside
    ("good.yaml", "unknown task"),                # names only: no extension, no file names
    ("link", "leaves the task directory"),        # a symlink in the folder pointing out of it
    ("escape", "data path leaves the task directory"),
    ("absolute", "data path leaves the task directory"),
    ("broken", "cannot be used"),                 # malformed: the reply quotes none of it
    ("badrows", "cannot be used"),
])
def test_task_paths_stay_in_the_task_folder(server, env, task, match):
    url, _ = server
    task = task or str(env["outside"] / "outside.yaml")
    r = post(url, "/mezo/step", {"task": task, "lr": 1e-3, "k_shot": 2})
    assert r.status_code == 400 and match in r.json()["error"], r.text
    assert SECRET not in r.text
    assert ok(status(url))["steps"] == 0


def test_a_task_file_in_the_task_folder_trains(server):
    url, _ = server
    res = ok(post(url, "/mezo/step", {"task": "good", "lr": 1e-3, "k_shot": 2, "batch_size": 4, "seed": 1}))
    assert res["step"] == 1
    ok(post(url, "/mezo/rollback", {"steps": 1}))


def test_save_stays_in_the_save_folder(server, env):
    url, _ = server
    for path in ["/tmp/mezo-abs", str(env["outside"] / "x"), "../outside/x", "a/../../outside/x", "out",
                 "out/x", "", ".", "a/.."]:
        r = post(url, "/mezo/save", {"path": path})
        assert r.status_code == 400, (path, r.text)
    assert sorted(p.name for p in env["outside"].iterdir()) == ["outside.yaml", "secret.jsonl"]
    assert sorted(p.name for p in env["saves"].iterdir()) == ["out"]

    assert ok(post(url, "/mezo/save", {"path": "run1/ckpt"})) == {"path": "run1/ckpt", "steps": 0}
    model = env["saves"] / "run1" / "ckpt" / "model" / "model.safetensors"
    assert model.is_file() and (env["saves"] / "run1" / "ckpt" / "trajectory.jsonl").is_file()
    mtime = model.stat().st_mtime_ns
    r = post(url, "/mezo/save", {"path": "run1/ckpt"})
    assert r.status_code == 409 and "overwrite" in r.json()["error"] and model.stat().st_mtime_ns == mtime
    assert post(url, "/mezo/save", {"path": "run1/ckpt", "overwrite": "yes"}).status_code == 400
    ok(post(url, "/mezo/save", {"path": "run1/ckpt", "overwrite": True}))
    assert model.stat().st_mtime_ns != mtime


def test_chat_template_needs_a_tokenizer_template(server):
    url, _ = server
    r = post(url, "/mezo/step", {**STEP, "chat_template": True})
    assert r.status_code == 400 and "no chat template" in r.json()["error"]


# -- fuzz: every malformed body is a 4xx, the server keeps serving, the weights do not move ------------
BAD = ["x", "", True, False, None, [], {}, [1], {"a": 1}, float("nan"), float("inf"), -float("inf"), 1e308,
       -1e308, 10**30, -(10**30), 2**64, -1, 1.5, 0]
BASES = {"/mezo/step": {"task": "sst2", "lr": 1e-3, "batch_size": 4},
         "/mezo/train": {"task": "sst2", "lr": 1e-3, "batch_size": 4, "steps": 2},
         "/mezo/rollback": {"steps": 1},
         "/mezo/save": {"path": "fuzz"}}
FIELDS = {"/mezo/step": ["lr", "eps", "weight_decay", "seed", "task", "batch_size", "k_shot", "n_queries",
                         "estimator", "objective", "chat_template", "examples"],
          "/mezo/rollback": ["steps"], "/mezo/save": ["path", "overwrite"]}
FIELDS["/mezo/train"] = FIELDS["/mezo/step"] + ["steps", "interval_s"]
# values that are legitimately accepted for a field (the fuzz only sends invalid bodies)
VALID = {"seed": [0], "k_shot": [0], "objective": [None], "chat_template": [False, True], "overwrite": [False, True],
         "interval_s": [1.5, 0], "lr": [0], "weight_decay": [0], "steps": [0]}


def _fuzz_bodies():
    rng = random.Random(0)
    out = []
    for path, base in BASES.items():
        for _ in range(25):
            field = rng.choice(FIELDS[path])
            v = rng.choice([b for b in BAD if not any(b is x or (b == x and type(b) is type(x))
                                                      for x in VALID.get(field, []))])
            if path == "/mezo/save" and field == "path" and isinstance(v, str):
                continue  # a string is a name; bad names are tested above
            out.append((path, json.dumps({**base, field: v})))
        deep = "[" * 100_000 + "]" * 100_000
        out += [(path, json.dumps({**base, "colour": "red"})), (path, json.dumps({**base, "": 1})),
                (path, '{"steps": ' + deep + "}"), (path, '{"a": ' * 50_000 + "1" + "}" * 50_000),
                (path, json.dumps({**base, "pad": "x" * (3 << 20)})), (path, "[]"), (path, '"s"'), (path, "3"),
                (path, "null"), (path, "{not json"), (path, b"\xff\xfe".decode("latin-1")),
                (path, json.dumps({**base, "examples": [{"prompt": "x" * 10, "candidates": [[["a"]]] * 3}]}))]
    ex = [{"prompt": "a", "candidates": [" a", " b"], "label": 0}]
    for bad_ex in ([{**ex[0], "label": 2}], [{**ex[0], "label": True}], [{**ex[0], "candidates": [" a"]}],
                   [{**ex[0], "prompt": 3}], [{**ex[0], "extra": 1}], ex * 2000, [], [None],
                   [{**ex[0], "candidates": [" a"] * 1000}]):
        out.append(("/mezo/step", json.dumps({"examples": bad_ex, "lr": 1e-3})))
    return out


def test_fuzzed_bodies_get_4xx_and_change_nothing(server):
    url, _ = server
    before, steps = checksum(url), ok(status(url))["steps"]
    bodies = _fuzz_bodies()
    assert len(bodies) > 100 and any(len(b) > 3 << 20 for _, b in bodies)
    for path, raw in bodies:
        r = post(url, path, None, raw=raw)
        assert 400 <= r.status_code < 500, (path, raw[:200], r.status_code, r.text[:300])
        assert isinstance(r.json()["error"], str) and "Traceback" not in r.text
    # the same flood without a content-length header (chunked): cut off while reading
    r = post(url, "/mezo/step", None, raw=(b"x" * (1 << 16) for _ in range(64)))
    assert r.status_code == 413, r.text
    assert requests.get(url + "/health", timeout=30).status_code == 200 and generate(url)
    assert checksum(url) == before and ok(status(url))["steps"] == steps and not ok(status(url))["running"]


def test_launch_flags_are_checked_before_serving(tmp_path):
    from sglang_mezo.serve.http import _mezo_flags, _policy_from_flags

    ns, rest = _mezo_flags(["--model-path", "m", "--mezo-objective", "negce=sglang_mezo.objectives:ce",
                            "--mezo-save-dir", str(tmp_path), "--port", "1"])
    assert rest == ["--model-path", "m", "--port", "1"]   # SGLang never sees our flags
    policy = _policy_from_flags(ns)
    assert policy.objectives == {"negce": "sglang_mezo.objectives:ce"} and policy.save_dir == str(tmp_path)
    for flags, match in [(["--mezo-objective", "nope"], "expected NAME=module:function"),
                         (["--mezo-objective", "ce=os:getcwd"], "built-in objective"),
                         (["--mezo-objective", "x=no_such_module_here:f"], "cannot be loaded"),
                         (["--mezo-save-dir", str(tmp_path / "missing")], "is not a directory"),
                         (["--mezo-task-dir", str(tmp_path / "missing")], "is not a directory")]:
        with pytest.raises(SystemExit, match=match):
            _policy_from_flags(_mezo_flags(flags)[0])


def _stderr_until(cmd: list[str], needle: str, timeout: float = 120) -> str:
    """Output of a starting server until `needle` appears (or it exits / times out); then it is stopped."""
    p = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and not any(needle in l for l in list(lines)):
        time.sleep(0.2)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(30)
    reader.join(10)
    return "".join(lines)


def test_serve_warns_when_anyone_could_change_the_model(tmp_path):
    # the warning comes before SGLang loads anything, so a model path that does not exist is enough
    needle = "listening on 0.0.0.0 without --admin-api-key"
    out = _stderr_until([sys.executable, "-m", "sglang_mezo", "serve", "--model-path", str(tmp_path / "none"),
                         "--port", "1", "--host", "0.0.0.0"], needle)
    assert needle in out, out[-3000:]

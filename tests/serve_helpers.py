"""Start a real `sglang-mezo serve` (CPU, loopback) for a test module; shared by test_serve/test_security."""
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import requests

from conftest import ROOT

PROCS: dict[str, subprocess.Popen] = {}   # URL -> server process (tests that kill a server on purpose)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model: str, log_path, *extra: str, env: dict | None = None, start_timeout: float = 180,
                   launcher: tuple = ("-m", "sglang_mezo", "serve")):
    """Yields the base URL once /health answers; the process group is stopped afterwards."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *map(str, launcher), "--model-path", model,
                             "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                             "--log-level", "warning", *extra], cwd=str(ROOT), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited early, see {log_path}")
            try:
                if requests.get(url + "/health", timeout=10).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow on a busy machine
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"server did not come up in {start_timeout:g} s")
        PROCS[url] = proc
        yield url
    finally:
        PROCS.pop(url, None)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except ProcessLookupError:  # a test killed it already
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def post_ok(url, path, body, expect=200):
    """POST a JSON body; assert the status (naming route, status and body) and return the JSON reply."""
    r = requests.post(url + path, json=body, timeout=300)
    assert r.status_code == expect, (path, r.status_code, r.text)
    return r.json()


def matches_one_rank(backend, trajectory, examples: list[dict], objectives_used, saved: dict) -> None:
    """The single-rank reference for a multi-rank server (TP, DP): this process's in-process runner,
    at the recorded steps' seeds, gives the same losses (1e-5 relative: all-reduce order), and replaying
    the steps gives the saved weights bit for bit. The runner goes back to the base weights after."""
    import pytest
    import torch

    from sglang_mezo import perturb, tasks
    from sglang_mezo.mezo import replay_step
    from sglang_mezo.objectives import label_words as objectives
    from sglang_mezo.trajectory import read

    _, records = read(trajectory)
    b = backend
    exs = [tasks.Example(e["prompt"], e["candidates"], e["label"]) for e in examples]
    enc = objectives.encode(exs, b.tokenizer, True)
    weights = perturb.make("layerwise", b.pieces, b)
    redo = perturb.make("layerwise", b.pieces, b, replay=True)
    try:
        for rec, obj in zip(records, objectives_used):
            f = objectives.get_objective(obj)
            lp, lm = weights.losses(rec.seeds[0], [rec.eps, -rec.eps], lambda: f(objectives.run_batch(b, exs, enc)))
            assert lp == pytest.approx(rec.loss_plus[0], rel=1e-5)
            assert lm == pytest.approx(rec.loss_minus[0], rel=1e-5)
            replay_step(redo, rec)
        one = b.hf_state_dict()
        assert all(torch.equal(saved[k], one[k]) for k in saved)
    finally:
        b.load_base()  # the session's runner goes back to the base weights for other tests

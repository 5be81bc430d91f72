"""Shared fixtures. Every test drives the real SGLang engine (no mocks). SGLang allows one ModelRunner
per process: this pytest process holds the tiny untied Llama; other models run in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_mezo import cpu_shims

cpu_shims.install()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from tests.tiny_models import make_tiny_llama

    return make_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def tiny_tied_model(tmp_path_factory) -> str:
    from tests.tiny_models import make_tiny_llama

    return make_tiny_llama(str(tmp_path_factory.mktemp("tiny_tied")), tie_word_embeddings=True,
                           vocab_size=1003, seed=1)


@pytest.fixture(scope="session")
def sglang_backend(tiny_model):
    from sglang_mezo.backends import make_backend

    return make_backend("sglang", tiny_model)


@pytest.fixture()
def fresh_hf(tiny_model):
    from sglang_mezo.backends import make_backend

    return make_backend("hf", tiny_model)


@pytest.fixture(scope="session")
def embedded_model() -> str:
    from sglang_mezo.models import embedded_default_model

    return embedded_default_model()


def run_py(args: list[str], timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python ARGS` in a fresh process (its own SGLang runner); returns the completed process."""
    env = dict(os.environ)
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=str(ROOT))
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def cli(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    return run_py(["-m", "sglang_mezo", *args], timeout=timeout, check=check)


def last_json(text: str) -> dict:
    return json.loads([l for l in text.splitlines() if l.startswith("{")][-1])


def sentiment_batch(backend):
    """Six label-word examples (" terrible" / " great") encoded for `backend`: the tiny models' step batch."""
    from sglang_mezo.objectives import label_words
    from sglang_mezo.tasks import Example

    words = ["good fun movie", "awful boring plot", "very wonderful story", "bad acting", "fun film",
             "terrible plot"]
    ex = [Example(f"{w} It was", [" terrible", " great"], int(i % 3 != 1)) for i, w in enumerate(words)]
    return label_words.encode(ex, backend.tokenizer)


def ce_loss(backend, enc):
    """The cross-entropy of `enc`'s label words on `backend`'s current weights, as a step's loss()."""
    from sglang_mezo.objectives import label_words

    return lambda: label_words.ce(label_words.candidate_scores(backend, enc), enc.labels)


@pytest.fixture(autouse=True)
def _environ_restored():
    """Each test leaves os.environ as it found it: `serve`'s flag checks, called in-process by some tests, set
    SGLANG_MEZO_* for the schedulers they would start, and a later test's subprocess (an EngineTrainer
    engine) would inherit them (seen: a full-rank TP engine taking the low-rank step path)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)

"""--chat-template: each prompt becomes one user turn of the tokenizer's chat template (with its
generation prompt) before the label words; the engine scores the wrapped prompt (SGLang == transformers)."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import cli, last_json

from sglang_mezo import tasks

TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_chat") / "model"
    shutil.copytree(tiny_model, out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = TEMPLATE
    cfg_path.write_text(json.dumps(cfg))
    return str(out)


def test_wrapped_prompt_is_one_user_turn_with_one_bos(chat_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model)
    ex = tasks.load_split(tasks.SST2, "test")[:2]
    wrapped = tasks.apply_chat_template(ex, tok)
    assert wrapped[0].prompt == f"[user] {ex[0].prompt}\n[assistant]"
    assert wrapped[0].candidates == ex[0].candidates and wrapped[0].label == ex[0].label
    ids = tok.encode(wrapped[0].prompt)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_eval_with_chat_template_sglang_equals_hf(chat_model):
    args = ["eval", "--model", chat_model, "--task", "sst2", "--limit", "24"]
    plain = last_json(cli(*args).stdout)
    sg = last_json(cli(*args, "--chat-template").stdout)
    hf = last_json(cli(*args, "--chat-template", "--backend", "hf").stdout)
    assert sg["chat_template"] and not plain["chat_template"] and sg["n"] == 24
    assert abs(sg["ce"] - hf["ce"]) <= 1e-4 and sg["accuracy"] == hf["accuracy"]
    assert abs(sg["ce"] - plain["ce"]) > 1e-3  # the template changed what the model saw


def test_no_chat_template_is_a_clear_error(tiny_model):
    p = cli("eval", "--model", tiny_model, "--task", "sst2", "--limit", "4", "--chat-template", check=False)
    assert p.returncode == 2 and "has no chat template" in p.stderr and "Traceback" not in p.stderr

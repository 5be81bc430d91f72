"""Greedy generation on both backends for one model, in a fresh process (SGLang allows one ModelRunner
per process): `python tests/generation_check.py MODEL_DIR` prints JSON with both backends' tokens."""
from __future__ import annotations

import json
import sys

from sglang_mezo import cpu_shims

# SQuAD-style prompts (MeZO's template) and open questions, as the generation tasks build them
PROMPTS = [
    "Title: Paris\nContext: Paris is the capital and most populous city of France.\n"
    "Question: What is the capital of France?\nAnswer:",
    "Question: who wrote the play romeo and juliet?\nAnswer:",
    "Question: Janet has 3 apples and buys 5 more. How many apples does she have?\nAnswer:",
    "The three primary colors are",
]


def main(model: str) -> dict:
    cpu_shims.install()
    from sglang_mezo.backends import make_backend

    out = {}
    for name in ("sglang", "hf"):
        be = make_backend(name, model)
        gens = be.generate(PROMPTS, max_new_tokens=24, stop=["\n"])
        out[name] = [{"ids": g.token_ids, "text": g.text, "finish": g.finish} for g in gens]
        del be
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))

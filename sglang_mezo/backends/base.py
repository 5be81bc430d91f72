"""The narrow interface every engine adapter implements: score a batch, expose trainable weights.

A backend knows nothing about MeZO. It gives the step two things:
  * `score(requests)`: one batched forward; per request, log-probs of candidate next tokens at the last
    position and/or per-token log-probs of a target span at the end of the ids;
  * `pieces`: the trainable weights as `Piece`s — in-place views into the engine's own tensors, each
    tied to the Hugging Face parameter name and the index range of the HF tensor it holds. The noise
    (noise.py) is a function of (seed, HF name, HF element index), so the step is layout-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .generation import GenerateParams, Sampler, Stops, check_params
from .piece import BackendError, Piece  # noqa: F401  (re-exported: the interface's types)


@dataclass
class ScoreRequest:
    ids: list[int]                      # full token ids (prompt, plus the target span if any)
    next_ids: list[int] = field(default_factory=list)  # candidate tokens scored after the last id
    target_len: int = 0                 # score the last `target_len` ids given what precedes them


@dataclass
class ScoreResult:
    next_logprobs: list[float]          # log p(next_ids[k] | ids)
    target_logprobs: list[float]        # log p(ids[j] | ids[:j]) for the last target_len positions


class Backend:
    name = "base"
    tokenizer = None
    dtype: torch.dtype
    model_path: str

    @property
    def pieces(self) -> list[Piece]:
        raise NotImplementedError

    @property
    def tied_embeddings(self) -> bool:
        """The LM head is the input embedding (one tensor, two uses)."""
        from .layout import tied_embeddings

        return tied_embeddings(self.model_path)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError

    def generate(self, prompts: Sequence, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop: Sequence[str] = (), seed: int = 0) -> list:
        """Continue each prompt (text, or token ids) — greedy, or sampled with per-request seeds derived
        from `seed` (backends/generation.py) — until EOS, a stop string or max_new_tokens."""
        p = GenerateParams(max_new_tokens, float(temperature), float(top_p), tuple(stop), int(seed))
        ids = [list(x) if not isinstance(x, str) else self.tokenizer.encode(x) for x in prompts]
        check_params(p, [len(i) for i in ids], self.context_len)
        validate_requests([ScoreRequest(i) for i in ids], self.vocab_size)
        return self._generate(ids, p, Sampler(p, len(ids)), Stops(p, self.tokenizer))

    def _generate(self, ids: list[list[int]], p, sampler, stops) -> list:
        raise NotImplementedError

    def changed(self) -> None:
        """Called after every in-place weight change: drop anything computed with the old weights."""

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The current weights under Hugging Face names and shapes (copies; for export and checks)."""
        raise NotImplementedError

    @property
    def layers(self) -> list[torch.nn.Module] | None:
        """The decoder layers, in order, for exact layer-wise perturbation (None: not found)."""
        return decoder_layers(self.model)

    def adapters(self):
        """Capability: the engine's LoRA adapters for low-rank perturbations (backends/lora.py), or None
        where the backend has none (low-rank directions are then merged into the weights: the reference)."""
        return None

    def load_base(self) -> None:
        """Put the base checkpoint's weights back, in place."""
        from .layout import load_base

        load_base(self.pieces, self.model_path)
        self.changed()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The ModuleList of decoder layers (length config.num_hidden_layers), for Llama/Qwen/Mistral-style
    models in SGLang and transformers alike."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) and (n is None or len(m) == n):
            return list(m)
    return None


def select_trainable(pieces: list[Piece], pattern: str | None) -> list[Piece]:
    """Pieces whose HF name matches the regex `pattern` (re.search); all when None."""
    if not pattern:
        return list(pieces)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise BackendError(f"--trainable {pattern!r} is not a valid regular expression: {e}") from e
    chosen = [p for p in pieces if rx.search(p.hf_name)]
    if not chosen:
        names = sorted({p.hf_name for p in pieces})[:5]
        raise BackendError(f"--trainable {pattern!r} matches no parameter (names look like {names})")
    return chosen


def validate_requests(requests: Sequence[ScoreRequest], vocab_size: int) -> None:
    for i, r in enumerate(requests):
        if not r.ids:
            raise BackendError(f"request {i} has no token ids")
        if r.target_len < 0 or r.target_len >= len(r.ids):
            raise BackendError(f"request {i}: target_len {r.target_len} must be in [0, {len(r.ids) - 1}]")
        bad = [t for t in list(r.ids) + list(r.next_ids) if not 0 <= t < vocab_size]
        if bad:
            raise BackendError(f"request {i}: token ids {bad[:3]} outside the vocabulary (size {vocab_size})")


def hf_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise BackendError(f"unknown dtype {name!r}: choose float32, bfloat16 or float16")
    return table[name]

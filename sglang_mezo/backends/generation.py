"""What every backend's `generate` shares: the request checks, seeded sampling and when a request stops.

Sampling is ours, not the engine's: each request draws from its own generator keyed by (seed, request
index), one uniform per token, so a step's generations are a pure function of (weights, prompts, seed) —
the same on both signs of a MeZO step (common random numbers), the same on every backend given the same
logits, and independent of how a backend chunks the batch. Greedy (temperature 0) is the argmax.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from .piece import BackendError


@dataclass
class GenerateParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Generation:
    text: str               # decoded new tokens, cut before the first stop string
    token_ids: list[int]    # the new tokens (including the one that completed a stop string or EOS)
    finish: str             # "stop" | "eos" | "length"


def check_params(p: GenerateParams, prompt_lens: Sequence[int], context_len: int) -> None:
    if isinstance(p.max_new_tokens, bool) or not isinstance(p.max_new_tokens, int) or p.max_new_tokens <= 0:
        raise BackendError(f"max_new_tokens must be a positive integer, got {p.max_new_tokens!r}")
    if p.max_new_tokens >= context_len:
        raise BackendError(f"max_new_tokens {p.max_new_tokens} is above the model's context "
                           f"({context_len} tokens)")
    if not 0 <= p.temperature < float("inf"):
        raise BackendError(f"temperature must be >= 0, got {p.temperature!r}")
    if not 0 < p.top_p <= 1:
        raise BackendError(f"top_p must be in (0, 1], got {p.top_p!r}")
    if any(not isinstance(s, str) or not s for s in p.stop):
        raise BackendError(f"stop must be non-empty strings, got {list(p.stop)!r}")
    for i, n in enumerate(prompt_lens):
        if n == 0:
            raise BackendError(f"prompt {i} has no tokens")
        if n + p.max_new_tokens > context_len:
            raise BackendError(f"prompt {i} ({n} tokens) + max_new_tokens {p.max_new_tokens} exceeds the "
                               f"model's context of {context_len} tokens")


def request_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little") >> 1


class Sampler:
    """Picks each request's next token from its logits: argmax, or a seeded temperature/top-p draw."""

    def __init__(self, p: GenerateParams, n: int):
        self.p = p
        self.gens = None
        if p.temperature > 0:
            self.gens = [torch.Generator().manual_seed(request_seed(p.seed, i)) for i in range(n)]

    def pick(self, logits: torch.Tensor, rows: Sequence[int]) -> list[int]:
        """logits [len(rows), V] for requests `rows` (their indices in the whole batch)."""
        if self.gens is None:
            return logits.argmax(dim=-1).tolist()
        out = []
        lp = torch.log_softmax(logits.detach().double().cpu() / self.p.temperature, dim=-1)
        for k, r in enumerate(rows):
            probs, order = torch.sort(lp[k].exp(), descending=True, stable=True)
            cum = torch.cumsum(probs, 0)
            # top-p: the smallest prefix whose mass reaches top_p (always at least one token)
            n = int(torch.searchsorted(cum, torch.tensor([self.p.top_p], dtype=cum.dtype))[0]) + 1
            n = min(n, len(cum))
            u = float(torch.rand(1, generator=self.gens[r], dtype=torch.float64)[0]) * float(cum[n - 1])
            j = min(int(torch.searchsorted(cum[:n], torch.tensor([u], dtype=cum.dtype))[0]), n - 1)
            out.append(int(order[j]))
        return out


class Stops:
    """When a request is done: EOS, a stop string in its decoded text, or max_new_tokens."""

    def __init__(self, p: GenerateParams, tokenizer):
        self.p, self.tok = p, tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos = {eos} if isinstance(eos, int) else set(eos or [])

    def text(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def finish(self, ids: Sequence[int]) -> str | None:
        if ids and ids[-1] in self.eos:
            return "eos"
        if self.p.stop:
            t = self.text(ids)
            if any(s in t for s in self.p.stop):
                return "stop"
        return "length" if len(ids) >= self.p.max_new_tokens else None

    def result(self, ids: Sequence[int], finish: str) -> Generation:
        body = ids[:-1] if finish == "eos" else ids
        t = self.text(body)
        for s in self.p.stop:
            cut = t.find(s)
            if cut >= 0:
                t = t[:cut]
        return Generation(t, list(ids), finish)

"""Rewards on generated text: per example, a score of the generation against its accepted answers.

  em        exact match after SQuAD v1.1's official normalisation (max over accepted answers)
  f1        token F1 after the same normalisation (max over accepted answers)
  numeric   the generation's final number equals the answer's (thousands commas stripped; GSM8K's
            "#### N" is the final answer when present)
  contains  a normalised accepted answer occurs in the normalised generation
  module:function   your callable(prompts, generations, references) -> one float per example, or a float

The normalisation is the official evaluate-v1.1.py's: lower-case, strip punctuation, drop the articles
a/an/the, collapse whitespace.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Callable, Sequence

from .user_code import load_callable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class RewardError(ValueError):
    """A reward that cannot be computed, or a user reward that misbehaved; the message names it."""


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def _f1(prediction: str, truth: str) -> float:
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(p) & Counter(t)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: Sequence[str]) -> float:
    return max(_f1(prediction, a) for a in answers)


def parse_number(text: str) -> float | None:
    """The final number of a text: after GSM8K's '####' if present, else the last number in it."""
    if "####" in text:
        text = text.split("####", 1)[1]
        found = _NUMBER.findall(text)
        found = found[:1]
    else:
        found = _NUMBER.findall(text)[-1:]
    if not found:
        return None
    try:
        return float(found[0].replace(",", "").rstrip("."))
    except ValueError:
        return None


def numeric(prediction: str, answers: Sequence[str]) -> float:
    got = parse_number(prediction)
    if got is None:
        return 0.0
    return float(any(math.isclose(got, parse_number(a), rel_tol=1e-9, abs_tol=1e-9) for a in answers))


def contains(prediction: str, answers: Sequence[str]) -> float:
    p = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(a)} " in p for a in answers if normalize_answer(a)))


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "em": exact_match, "f1": f1, "numeric": numeric, "contains": contains}

# prompts, generated texts, accepted answers per example -> one reward per example (or their mean)
Reward = Callable[[Sequence[str], Sequence[str], Sequence[Sequence[str]]], "Sequence[float] | float"]


def check_answers(metric: str, answers: Sequence[str], where: str) -> None:
    """Answers a metric can use: non-empty, and numbers for `numeric`."""
    if not answers or any(not isinstance(a, str) for a in answers):
        raise RewardError(f"{where}: the answer must be a string or a non-empty list of strings, got {answers!r}")
    if metric == "numeric":
        bad = [a for a in answers if parse_number(a) is None]
        if bad:
            raise RewardError(f"{where}: metric 'numeric' needs numeric answers, got {bad[0]!r}")


def get_reward(name: str) -> Reward:
    """A built-in metric as a batch reward, or a user `module:function`."""
    if name in METRICS:
        m = METRICS[name]
        return lambda prompts, gens, refs: [m(g, r) for g, r in zip(gens, refs)]
    if ":" in name:
        return load_callable(name, "reward", RewardError)
    raise RewardError(f"unknown reward {name!r}: choose one of {sorted(METRICS)} or module:function")


def rewards(name: str, fn: Reward, prompts: Sequence[str], gens: Sequence[str],
            refs: Sequence[Sequence[str]]) -> list[float]:
    """Call a reward and check what it returns: one finite float per example (a float: the batch mean)."""
    try:
        out = fn(list(prompts), list(gens), [list(r) for r in refs])
    except Exception as e:  # a user function's bug must stop the run with its name, not a traceback
        raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e}") from e
    n = len(gens)
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        vals = [float(out)] * n
    else:
        try:
            vals = [float(v) for v in out]
        except (TypeError, ValueError):
            raise RewardError(f"reward {name!r} must return a float or one float per example, "
                              f"got {type(out).__name__}") from None
        if len(vals) != n:
            raise RewardError(f"reward {name!r} returned {len(vals)} values for {n} examples")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise RewardError(f"reward {name!r} returned {bad[0]} (rewards must be finite numbers)")
    return vals

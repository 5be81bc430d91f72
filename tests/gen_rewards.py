"""User rewards for the generation tests, loaded as `tests.gen_rewards:NAME` (module:function)."""
import math


def char_length(prompts, generations, references):
    """Longer generations score higher: a reward a tiny random model's output actually moves."""
    return [len(g) / 10 for g in generations]


def raises(prompts, generations, references):
    raise RuntimeError("reward server unreachable")


def nan(prompts, generations, references):
    return [math.nan] * len(generations)


def too_few(prompts, generations, references):
    return [1.0]

"""Rewards on generated text: the official SQuAD v1.1 normalisation, EM/F1/numeric/contains computed by
hand, and the checks on what a user reward returns. Pure functions: no engine needed here."""
import math

import pytest

from sglang_mezo import rewards
from sglang_mezo.rewards import RewardError, contains, exact_match, f1, normalize_answer, numeric


def test_official_normalisation():
    # lower-case, strip punctuation, drop a/an/the as whole words, collapse whitespace
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an Apple, a day") == "apple day"
    assert normalize_answer("Theatre and anthem") == "theatre and anthem"  # articles only as words
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("  \tA\n") == ""


def test_exact_match_takes_the_best_answer():
    assert exact_match("the Denver Broncos.", ["Carolina Panthers", "Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0


def test_f1_hand_computed():
    # prediction "denver broncos won" vs truth "denver broncos": 2 common, P = 2/3, R = 1 -> F1 = 0.8
    assert f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    # duplicates count once per occurrence (Counter intersection): "a a b" -> "b" after articles go
    # prediction "the cat sat on the mat" -> [cat, sat, on, mat]; truth "a cat on a mat" -> [cat, on, mat]
    # common 3: P = 3/4, R = 1 -> 6/7
    assert f1("the cat sat on the mat", ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert f1("nothing here", ["Denver"]) == 0.0
    assert f1("Denver", ["x y", "Denver Broncos"]) == pytest.approx(2 * 1 * 0.5 / 1.5)  # max over answers
    assert f1("", ["Denver"]) == 0.0


def test_numeric_and_contains():
    assert rewards.parse_number("so 3 + 4 = 7. #### 1,000") == 1000.0
    assert rewards.parse_number("She pays $18.50 in total.") == 18.5
    assert rewards.parse_number("no digits") is None
    assert numeric("The answer is 1,000", ["1000"]) == 1.0
    assert numeric("The answer is 999", ["1000"]) == 0.0
    assert numeric("-3 degrees", ["-3"]) == 1.0
    assert contains("It was the Denver Broncos, I think", ["Denver Broncos"]) == 1.0
    assert contains("Denverites", ["Denver"]) == 0.0  # whole words only


def test_numeric_refuses_non_numeric_answers():
    with pytest.raises(RewardError, match="numeric.*'Paris'"):
        rewards.check_answers("numeric", ["Paris"], "row 3")


def _reward(out):
    return lambda prompts, gens, refs: out


def test_user_reward_results_are_checked():
    args = (["p1", "p2"], ["g1", "g2"], [["a"], ["b"]])
    assert rewards.rewards("m:f", _reward([1, 0.5]), *args) == [1.0, 0.5]
    assert rewards.rewards("m:f", _reward(0.25), *args) == [0.25, 0.25]
    with pytest.raises(RewardError, match="returned 1 values for 2 examples"):
        rewards.rewards("m:f", _reward([1.0]), *args)
    with pytest.raises(RewardError, match="nan"):
        rewards.rewards("m:f", _reward([1.0, math.nan]), *args)
    with pytest.raises(RewardError, match="one float per example"):
        rewards.rewards("m:f", _reward("good"), *args)

    def boom(prompts, gens, refs):
        raise KeyError("oops")

    with pytest.raises(RewardError, match="'m:f' raised KeyError"):
        rewards.rewards("m:f", boom, *args)


def test_reward_names():
    assert rewards.get_reward("tests.gen_rewards:char_length")(["p"], ["abcd"], [["x"]]) == [0.4]
    with pytest.raises(RewardError, match="unknown reward 'bleu'"):
        rewards.get_reward("bleu")
    with pytest.raises(RewardError, match="cannot be loaded"):
        rewards.get_reward("no_such_module_x:f")

"""Built-in tasks over the data shipped in sglang_mezo/data, the samplers' limits, and bad task data / definitions.
No engine needed: only COPA's encoding is checked, with the tiny model's tokenizer."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from sglang_mezo import tasks
from sglang_mezo.tasks import Example, TaskError, TaskSpec, get_task, load_split, read_rows, splits

# task -> (number of candidates, a piece of the first train row that its prompt must show)
EXPECTED = {
    "sst2": (2, lambda r: r["sentence"]),
    "rte": (2, lambda r: r["hypothesis"]),
    "cb": (3, lambda r: r["premise"]),
    "boolq": (2, lambda r: r["passage"]),
    "wsc": (2, lambda r: r["target"]["span1_text"]),
    "wic": (2, lambda r: r["sentence2"]),
    "multirc": (2, lambda r: r["passage"]["questions"][0]["answers"][0]["text"]),
    "copa": (2, lambda r: r["premise"].rstrip(".")),
    "mnli": (3, lambda r: r["hypothesis"]),
    "snli": (3, lambda r: r["premise"]),
}
VERBALISERS = {"sst2": [" terrible", " great"], "rte": ["Yes", "No"], "cb": ["Yes", "No", "Maybe"],
               "boolq": ["Yes", "No"], "wsc": ["No", "Yes"], "wic": ["No", "Yes"], "multirc": ["No", "Yes"],
               "mnli": ["Yes", "No", "Maybe"], "snli": ["Yes", "No", "Maybe"]}
CLASSIFICATION = {n: t for n, t in tasks.TASKS.items() if not tasks.is_generation(t)}
# few-shot tasks whose 32-example train file cannot give 16 per class (MeZO's RoBERTa k)
SMALL = {"cb", "boolq", "wic", "copa"}


def test_registry():
    assert set(CLASSIFICATION) == set(EXPECTED) and tasks.SST2 is tasks.TASKS["sst2"]
    assert set(tasks.TASKS) - set(CLASSIFICATION) == {"squad", "gsm8k", "nq_open"}  # tests/test_generation.py
    assert get_task("RTE") is tasks.RTE


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_splits(name):
    spec = get_task(name)
    n_cands, probe = EXPECTED[name]
    assert set(spec.files) in ({"train", "test"}, {"train", "dev", "test"})
    for split in spec.files:
        exs = load_split(spec, split)
        assert len(exs) > 0
        for ex in exs:
            assert ex.prompt.strip() and len(ex.candidates) == n_cands and 0 <= ex.label < n_cands
            if name in VERBALISERS:
                assert ex.candidates == VERBALISERS[name]
        assert len(Counter(ex.label for ex in exs)) >= 2, f"{name}/{split} has one class only"
    first = read_rows(Path(tasks.default_data_dir()) / spec.files["train"], spec.columns)[0]
    assert probe(first) in load_split(spec, "train")[0].prompt


def test_test_split_is_labeled_validation_not_unlabeled_test(tmp_path):
    for spec in CLASSIFICATION.values():
        assert not spec.files["test"].endswith("/test.jsonl"), spec.name
    # an unlabeled file (as SuperGLUE's test.jsonl) is refused, never scored against a guessed label
    (tmp_path / "test.jsonl").write_text('{"premise": "a", "hypothesis": "b", "idx": 0}\n')
    unlabeled = TaskSpec("rte_test", {"test": str(tmp_path / "test.jsonl")}, tasks.RTE.template,
                         label_words=tasks.RTE.label_words)
    with pytest.raises(TaskError, match="missing label field"):
        load_split(unlabeled, "test")


def test_known_sizes():
    n = {name: {s: len(load_split(spec, s)) for s in spec.files} for name, spec in tasks.TASKS.items()}
    assert n["rte"] == {"train": 2490, "test": 277} and n["wsc"] == {"train": 554, "test": 104}
    assert n["cb"] == {"train": 32, "dev": 32, "test": 56} and n["boolq"]["test"] == 3270
    assert n["multirc"] == {"train": 154, "dev": 167, "test": 4848}   # (question, answer) pairs
    assert n["mnli"] == {"train": 120, "test": 120} and n["snli"] == {"train": 121, "test": 119}


def test_templates_match_mezo():
    rte = load_split(tasks.RTE, "train")[0]
    assert rte.prompt == ('No Weapons of Mass Destruction Found in Iraq Yet.\nDoes this mean that "Weapons of '
                          'Mass Destruction Found in Iraq." is true? Yes or No?\n') and rte.label == 1
    wsc = load_split(tasks.WSC, "train")[0]
    assert wsc.prompt.endswith('\nIn the previous sentence, does the pronoun "he" refer to Mark? Yes or No?\n')
    boolq = load_split(tasks.BOOLQ, "train")[0]
    assert boolq.prompt.endswith(" Is ghost in the shell based on the anime?\n") and boolq.label == 1
    copa = load_split(tasks.COPA, "train")[0]
    assert copa.prompt == "The chandelier shattered on the floor because"
    assert copa.candidates == [" the chandelier dropped from the ceiling.",
                               " the chandelier's lights flickered on and off."] and copa.label == 0
    exs = load_split(tasks.COPA, "test")
    assert all(ex.prompt.endswith((" because", " so")) and not ex.prompt.endswith(". so") for ex in exs)
    first = {c.split()[0] for ex in exs for c in ex.candidates}   # CopaTemplate.capitalize: "I" kept
    assert all(c.startswith(" ") for ex in exs for c in ex.candidates)
    assert "I" in first and all(w == "I" or not w[0].isupper() for w in first)


def test_multirc_flattens_every_answer():
    rows = read_rows(Path(tasks.default_data_dir()) / tasks.MULTIRC.files["train"])
    pairs = [(q["question"], a) for r in rows for q in r["passage"]["questions"] for a in q["answers"]]
    exs = load_split(tasks.MULTIRC, "train")
    assert len(exs) == len(pairs)
    for ex, (question, answer) in zip(exs, pairs):
        assert f"Question: {question}\n" in ex.prompt and f'answer "{answer["text"]}"' in ex.prompt
        assert ex.label == answer["label"]


@pytest.mark.parametrize("name", ["mnli", "snli"])
def test_nli_halves_are_disjoint_balanced_and_fixed(name):
    spec = get_task(name)
    train, test = load_split(spec, "train"), load_split(spec, "test")
    pooled = read_rows(Path(tasks.default_data_dir()) / spec.files["train"])
    assert len(train) + len(test) == len(pooled)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    tr, te = Counter(e.label for e in train), Counter(e.label for e in test)
    assert all(0 <= tr[c] - te[c] <= 1 for c in range(3))
    assert [e.prompt for e in load_split(spec, "train")] == [e.prompt for e in train]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_k_shot(name):
    spec = get_task(name)
    n_classes = EXPECTED[name][0]
    d = splits(spec, k_shot=2, seed=13)
    assert len(d["train"]) == len(d["dev"]) == 2 * n_classes and 0 < len(d["test"]) <= 1000
    assert Counter(e.label for e in d["train"]) == {c: 2 for c in range(n_classes)}
    assert splits(spec, k_shot=2, seed=13)["train"] == d["train"]
    if "dev" not in spec.files:  # dev drawn from train, never overlapping the train draw
        assert not {e.prompt for e in d["train"]} & {e.prompt for e in d["dev"]}
    if name in SMALL:
        with pytest.raises(TaskError, match=rf"task '{name}', train split \(32 examples\).*16 per class"):
            splits(spec, k_shot=16, seed=13)
    else:
        assert len(splits(spec, k_shot=16, seed=13)["train"]) == 16 * n_classes
    with pytest.raises(TaskError, match="4000 per class requested"):
        splits(spec, k_shot=4000, seed=13)


def test_dev_comes_from_the_dev_file():
    dev_file = {e.prompt for e in load_split(tasks.CB, "dev")}
    d = splits(tasks.CB, k_shot=2, seed=21)   # CB dev32 has exactly 2 neutral examples
    assert {e.prompt for e in d["dev"]} <= dev_file
    d = splits(tasks.MULTIRC, k_shot=None, seed=0, n_train=100, n_dev=150, n_test=300)
    assert (len(d["train"]), len(d["dev"]), len(d["test"])) == (100, 150, 300)


def test_opt_setting_needs_enough_train_data():
    d = splits(tasks.RTE, k_shot=None, seed=0)
    assert (len(d["train"]), len(d["dev"]), len(d["test"])) == (1000, 500, 277)
    assert not {e.prompt for e in d["train"]} & {e.prompt for e in d["dev"]}
    with pytest.raises(TaskError, match=r"'wsc', train split \(554 examples\): 1000 examples requested"):
        splits(tasks.WSC, k_shot=None, seed=0)
    with pytest.raises(TaskError, match=r"train \(for dev\) split \(54 examples\): 500 examples"):
        splits(tasks.WSC, k_shot=None, seed=0, n_train=500)
    with pytest.raises(TaskError, match=r"'copa', train split \(32 examples\)"):
        splits(tasks.COPA, k_shot=None, seed=0)


# --- bad input ---------------------------------------------------------------------------------------

def _file(tmp_path, lines) -> str:
    (tmp_path / "d.jsonl").write_text("".join(l + "\n" for l in lines))
    return str(tmp_path / "d.jsonl")


def _task(path, like=None) -> TaskSpec:
    """A built-in task's definition over another file, or a plain "{text} It was" task."""
    if like is not None:
        return replace(like, files={"train": path})
    return TaskSpec("t", {"train": path}, "{text} It was", label_words={"0": " bad", "1": " good"})


COPA_ROW = {"premise": "It rained.", "choice1": "We got wet.", "choice2": "We sang.", "question": "effect",
            "label": 0}


def test_empty_file(tmp_path):
    with pytest.raises(TaskError, match="empty"):
        load_split(_task(_file(tmp_path, ["", "  "])), "train")


def test_malformed_json_line(tmp_path):
    with pytest.raises(TaskError, match=r"d\.jsonl:2: not valid JSON"):
        load_split(_task(_file(tmp_path, ['{"text": "ok", "label": 0}', '{"text": "broken'])), "train")
    with pytest.raises(TaskError, match="must be a JSON object"):
        load_split(_task(_file(tmp_path, ['["text", 0]'])), "train")


def test_missing_field(tmp_path):
    with pytest.raises(TaskError, match="missing field 'text'"):
        load_split(_task(_file(tmp_path, ['{"sentence": "x", "label": 0}'])), "train")
    with pytest.raises(TaskError, match="missing label field"):
        load_split(_task(_file(tmp_path, ['{"text": "x"}'])), "train")
    with pytest.raises(TaskError, match=r"d\.jsonl, row 1: missing field 'target'"):
        load_split(_task(_file(tmp_path, ['{"text": "He ran.", "label": true}']), tasks.WSC), "train")
    with pytest.raises(TaskError, match=r"d\.jsonl, row 1: missing field 'questions'"):
        load_split(_task(_file(tmp_path, ['{"passage": {"text": "p"}}']), tasks.MULTIRC), "train")
    row = {k: v for k, v in COPA_ROW.items() if k != "choice2"}
    with pytest.raises(TaskError, match="missing field 'choice2'"):
        load_split(_task(_file(tmp_path, [json.dumps(row)]), tasks.COPA), "train")


def test_unknown_label(tmp_path):
    with pytest.raises(TaskError, match=r"unknown label 'positive'"):
        load_split(_task(_file(tmp_path, ['{"text": "x", "label": "positive"}'])), "train")
    path = _file(tmp_path, ['{"premise": "p", "hypothesis": "h", "label": "neutral"}'])
    with pytest.raises(TaskError, match="unknown label 'neutral'"):
        load_split(_task(path, tasks.RTE), "train")
    for bad, msg in (({"label": 2}, "unknown label 2"), ({"question": "why"}, "unknown COPA question")):
        with pytest.raises(TaskError, match=rf"d\.jsonl, row 1: {msg}"):
            load_split(_task(_file(tmp_path, [json.dumps({**COPA_ROW, **bad})]), tasks.COPA), "train")


def test_template_without_slot():
    with pytest.raises(TaskError, match="no {field} slot"):
        TaskSpec("t", {"train": "x.jsonl"}, template="It was", label_words={"0": " bad", "1": " good"})
    with pytest.raises(TaskError, match="at least two label words"):
        TaskSpec("t", {"train": "x.jsonl"}, template="{text}", label_words={"0": " bad"})


def test_missing_split_and_unknown_task():
    with pytest.raises(TaskError, match="no 'dev' split"):
        load_split(tasks.RTE, "dev")
    with pytest.raises(TaskError, match="unknown task 'qnli'"):
        get_task("qnli")


def test_yaml_task_file(tmp_path):
    rows = [{"review": f"film number {i}", "y": "pos" if i % 2 else "neg"} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (tmp_path / "t.yaml").write_text("name: mine\ntrain: d.jsonl\ndev: dev.jsonl\ntest: d.jsonl\n"
                                     "template: '{review} All in all, it was'\nlabel_field: y\n"
                                     "label_words: {neg: ' bad', pos: ' good'}\n")
    spec = get_task(str(tmp_path / "t.yaml"))
    assert spec.name == "mine"
    ex = load_split(spec, "train")[1]
    assert ex == Example("film number 1 All in all, it was", [" bad", " good"], 1)
    d = splits(spec, k_shot=3, seed=1)
    assert len(d["train"]) == len(d["dev"]) == 6 and len(d["test"]) == 20
    assert {e.prompt for e in d["dev"]} <= {e.prompt for e in load_split(spec, "dev")}
    with pytest.raises(TaskError, match=r"'mine', dev split \(6 examples\): only 3 examples"):
        splits(spec, k_shot=4, seed=1)
    (tmp_path / "bad.yaml").write_text("train: d.jsonl\ntest: d.jsonl\ntemplate: 'no slot'\n"
                                       "label_words: {neg: ' bad', pos: ' good'}\n")
    with pytest.raises(TaskError, match="no {field} slot"):
        get_task(str(tmp_path / "bad.yaml"))


# --- tokenization -------------------------------------------------------------------------------------

def test_copa_encodes_as_multi_token_spans(tmp_path):
    from transformers import AutoTokenizer

    from tests.tiny_models import make_tiny_llama
    from sglang_mezo.objectives.label_words import encode

    tok = AutoTokenizer.from_pretrained(make_tiny_llama(str(tmp_path / "m")))
    exs = load_split(tasks.COPA, "train")[:4]
    enc = encode(exs, tok, tasks.COPA.single_token_labels)
    assert len(enc.requests) == 2 * len(exs) and enc.labels.tolist() == [e.label for e in exs]
    for ex, (kind, idx) in zip(exs, enc.where):
        assert kind == "span"
        for cand, i in zip(ex.candidates, idx):
            n = len(tok.encode(cand, add_special_tokens=False))
            assert n > 1 and enc.requests[i].target_len == n


@pytest.mark.slow
def test_label_words_are_single_tokens_for_a_real_bpe_tokenizer(embedded_model):
    """SmolLM2's GPT-2-style BPE (the tiny model's vocabulary is too small for this check)."""
    from transformers import AutoTokenizer

    from sglang_mezo.objectives.label_words import encode

    tok = AutoTokenizer.from_pretrained(embedded_model)
    for name, spec in CLASSIFICATION.items():
        if spec.single_token_labels:
            ex = load_split(spec, "test")[:2]
            assert encode(ex, tok, True).requests[0].next_ids, name
            # the word scored after the prompt is the token the joined text has there
            full = tok.encode(ex[0].prompt + ex[0].candidates[ex[0].label])
            assert full[:-1] == tok.encode(ex[0].prompt), name

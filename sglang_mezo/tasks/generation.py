"""A generation task: a prompt template, the accepted answers, a metric, and how much to generate.

Built-in: `squad` (SQuAD v1.1, MeZO's prompt: title, context, question → answer; EM/F1 with the
official normalisation), `gsm8k` (numeric match on the final number), `nq_open` (closed-book questions;
EM/F1 against the answer list). A YAML file with `type: generation` defines a new one:

    type: generation
    name: my_qa
    train: data/train.jsonl        # .jsonl or .tsv; relative to this file
    test: data/test.jsonl
    template: "Question: {question}\\nAnswer:"
    answer_field: answers          # a string or a list of accepted strings per row
    metric: f1                     # em | f1 | numeric | contains | module:function
    max_new_tokens: 16
    stop: ["\\n"]                  # optional
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import rewards
from .spec import TaskError, load_split, sample_n


@dataclass
class GenExample:
    prompt: str
    answers: list[str]      # accepted answers; rewards take the best match
    target: str             # teacher-forced continuation for the `lm` objective/loss


@dataclass
class GenerationSpec:
    name: str
    files: dict[str, str]
    template: str
    answer_field: str = "answer"
    metric: str = "f1"
    max_new_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    # row -> (accepted answers, lm target) for fields that need parsing (GSM8K's worked solutions)
    answers_of: Callable[[dict], tuple[list[str], str]] | None = None
    columns = None          # load_split's hooks (header-less CSV/TSV, split selection), unused here
    select = None
    kind = "generation"

    def __post_init__(self):
        if not [f for _, f, _, _ in string.Formatter().parse(self.template) if f]:
            raise TaskError(f"task {self.name!r}: template {self.template!r} has no {{field}} slot")
        if not self.answer_field and self.answers_of is None:
            raise TaskError(f"task {self.name!r}: a generation task needs answer_field")
        if self.metric not in rewards.METRICS and ":" not in self.metric:
            raise TaskError(f"task {self.name!r}: unknown metric {self.metric!r} "
                            f"(choose {sorted(rewards.METRICS)} or module:function)")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens <= 0:
            raise TaskError(f"task {self.name!r}: max_new_tokens must be a positive integer, "
                            f"got {self.max_new_tokens!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list) or any(not isinstance(s, str) or not s for s in self.stop):
            raise TaskError(f"task {self.name!r}: stop must be a list of non-empty strings, got {self.stop!r}")

    def rows(self, row: dict, where: str) -> list[dict]:
        return [row]

    def example(self, row: dict, where: str) -> GenExample:
        try:
            prompt = self.template.format(**row)
        except KeyError as e:
            raise TaskError(f"{where}: missing field {e} needed by the template of {self.name!r}") from None
        if self.answers_of is not None:
            try:
                answers, target = self.answers_of(row)
            except KeyError as e:
                raise TaskError(f"{where}: missing field {e} for task {self.name!r}") from None
            except (TaskError, TypeError, AttributeError, IndexError) as e:
                raise TaskError(f"{where}: {e} (task {self.name!r})") from None
        else:
            if self.answer_field not in row:
                raise TaskError(f"{where}: missing answer field {self.answer_field!r} (task {self.name!r})")
            raw = row[self.answer_field]
            answers = [raw] if isinstance(raw, str) else raw
            if not isinstance(answers, list):
                raise TaskError(f"{where}: answer field {self.answer_field!r} must be a string or a list of "
                                f"strings, got {raw!r}")
            target = " " + answers[0] if answers and isinstance(answers[0], str) else ""
        if ":" not in self.metric:  # a user metric decides for itself what an answer is
            try:
                rewards.check_answers(self.metric, answers, where)
            except rewards.RewardError as e:
                raise TaskError(f"{e} (task {self.name!r})") from None
        return GenExample(prompt, list(answers), target)


def is_generation(spec) -> bool:
    return getattr(spec, "kind", None) == "generation"


def splits(spec: GenerationSpec, *, k_shot: int | None, seed: int, n_train: int = 1000, n_dev: int = 500,
           n_test: int = 1000, data_dir=None) -> dict[str, list[GenExample]]:
    """Train and dev drawn without replacement from the train file (MeZO's SQuAD protocol; k_shot = the
    number of training examples, and as many for dev), test up to n_test from the test file."""
    train_all = load_split(spec, "train", data_dir)
    test_all = load_split(spec, "test", data_dir)
    n_tr, n_dv = (k_shot, k_shot) if k_shot else (n_train, n_dev)
    try:
        train, used = sample_n(train_all, n_tr, seed)
        if "dev" in spec.files:
            dev = sample_n(load_split(spec, "dev", data_dir), n_dv, seed + 1)[0]
        else:
            dev = sample_n(train_all, n_dv, seed + 1, exclude=used)[0]
    except TaskError as e:
        raise TaskError(f"task {spec.name!r}: {e}") from None
    test = test_all if len(test_all) <= n_test else sample_n(test_all, n_test, seed)[0]
    return {"train": train, "dev": dev, "test": test}


def _gsm8k(row: dict) -> tuple[list[str], str]:
    """GSM8K's answer is a worked solution ending in '#### N': N is the answer; the solution (calculator
    annotations <<...>> removed) is the lm target."""
    sol = row["answer"]
    if "####" not in sol:
        raise TaskError(f"GSM8K answer without '#### <number>': {sol[-60:]!r}")
    final = sol.rsplit("####", 1)[1].strip().replace(",", "")
    return [final], " " + re.sub(r"<<[^>]*>>", "", sol)


def _squad(row: dict) -> tuple[list[str], str]:
    return list(row["answers"]), " " + row["answers"][0]


# MeZO's SQuAD prompt (large_models/templates.py); test = the official dev set (10,570 questions).
SQUAD = GenerationSpec(
    name="squad", files={"train": "SQuAD/jsonl/train.jsonl", "test": "SQuAD/jsonl/dev.jsonl"},
    template="Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer:",
    answer_field="answers", answers_of=_squad, metric="f1", max_new_tokens=16, stop=["\n"])

GSM8K = GenerationSpec(
    name="gsm8k", files={"train": "GSM8K/original/train.jsonl", "test": "GSM8K/original/test.jsonl"},
    template="Question: {question}\nAnswer:", answer_field="answer", answers_of=_gsm8k,
    metric="numeric", max_new_tokens=256, stop=["\n\nQuestion:", "\nQuestion:"])

# Closed-book: no passage. NQ-open has no train file here; EfficientQA's dev (a different 1,800
# questions) serves as train, the original NQ-open dev (3,610) as test.
NQ_OPEN = GenerationSpec(
    name="nq_open",
    files={"train": "NQ-open/nq_open/NQ-open.efficientqa.dev.1.1.jsonl",
           "test": "NQ-open/nq_open/NQ-open.dev.jsonl"},
    template="Question: {question}?\nAnswer:", answer_field="answer", metric="f1", max_new_tokens=16,
    stop=["\n"])

GENERATION: dict[str, GenerationSpec] = {t.name: t for t in (SQUAD, GSM8K, NQ_OPEN)}


def load_generation_file(path: Path, doc: dict) -> GenerationSpec:
    """The `type: generation` YAML (already parsed); paths relative to the file."""
    missing = [k for k in ("train", "test", "template", "answer_field") if k not in doc]
    if missing:
        raise TaskError(f"{path}: a generation task needs {missing}")
    unknown = set(doc) - {"type", "name", "train", "dev", "test", "template", "answer_field", "metric",
                          "max_new_tokens", "stop"}
    if unknown:
        raise TaskError(f"{path}: unknown key(s) {sorted(unknown)}")
    files = {s: str((path.parent / doc[s]).resolve()) for s in ("train", "dev", "test") if s in doc}
    stop = doc.get("stop", [])
    try:
        return GenerationSpec(name=str(doc.get("name", path.stem)), files=files, template=str(doc["template"]),
                              answer_field=str(doc["answer_field"] or ""), metric=str(doc.get("metric", "f1")),
                              max_new_tokens=doc.get("max_new_tokens", 16), stop=stop)
    except TaskError as e:
        raise TaskError(f"{path}: {e}") from None

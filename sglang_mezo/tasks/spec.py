"""A classification task: where its examples come from and how an example becomes a prompt + candidates."""
from __future__ import annotations

import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import TaskError
from .readers import read_rows

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass
class Example:
    prompt: str
    candidates: list[str]   # text appended after the prompt, one per class / option
    label: int              # index into candidates


@dataclass
class TaskSpec:
    name: str
    files: dict[str, str]                   # split -> path (relative to the data dir or absolute)
    template: str = ""                      # str.format template over the example's fields
    label_field: str = "label"
    label_words: dict = field(default_factory=dict)   # raw label value -> candidate text
    single_token_labels: bool = True        # verbaliser words must be one token each (MeZO/LM-BFF)
    build: Callable[[dict], Example] | None = None    # custom row -> Example (multi-choice tasks)
    columns: list[str] | None = None        # for header-less CSV/TSV files
    # file row -> the rows the template sees: derived fields (WSC's nested spans), or several examples
    # from one row (MultiRC: a paragraph holds many question/answer pairs)
    expand: Callable[[dict], list[dict]] | None = None
    # (split, examples of that split's file) -> the part that belongs to the split, for tasks whose
    # train and test come out of one file (MNLI/SNLI here)
    select: Callable[[str, list[Example]], list[Example]] | None = None

    def __post_init__(self):
        if self.build is None:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
            if not fields:
                raise TaskError(f"task {self.name!r}: template {self.template!r} has no {{field}} slot")
            if len(self.label_words) < 2:
                raise TaskError(f"task {self.name!r}: needs at least two label words, got {self.label_words}")

    def rows(self, row: dict, where: str) -> list[dict]:
        if self.expand is None:
            return [row]
        try:
            return self.expand(row)
        except KeyError as e:
            raise TaskError(f"{where}: missing field {e} for task {self.name!r}") from None
        except (TypeError, AttributeError) as e:
            raise TaskError(f"{where}: malformed row for task {self.name!r} ({e})") from None

    def example(self, row: dict, where: str) -> Example:
        if self.build is not None:
            try:
                return self.build(row)
            except KeyError as e:
                raise TaskError(f"{where}: missing field {e} for task {self.name!r}") from None
            except (ValueError, TypeError) as e:  # TaskError included: add where it happened
                raise TaskError(f"{where}: {e} (task {self.name!r})") from None
        try:
            prompt = self.template.format(**row)
        except KeyError as e:
            raise TaskError(f"{where}: missing field {e} needed by the template of {self.name!r}") from None
        if self.label_field not in row:
            raise TaskError(f"{where}: missing label field {self.label_field!r}")
        raw = row[self.label_field]
        keys = list(self.label_words)
        match = [k for k in keys if str(k).lower() == str(raw).lower()]
        if not match:
            raise TaskError(f"{where}: unknown label {raw!r} (task {self.name!r} knows {keys})")
        return Example(prompt, [self.label_words[k] for k in keys], keys.index(match[0]))


def default_data_dir() -> Path:
    """$SGLANG_MEZO_DATA, else the data shipped inside the package (sglang_mezo/data)."""
    env = os.environ.get("SGLANG_MEZO_DATA")
    return Path(env) if env else PACKAGE_DATA


def load_split(spec: TaskSpec, split: str, data_dir: str | Path | None = None) -> list[Example]:
    if split not in spec.files:
        raise TaskError(f"task {spec.name!r} has no {split!r} split (has {sorted(spec.files)})")
    path = Path(spec.files[split])
    if not path.is_absolute():
        path = Path(data_dir or default_data_dir()) / path
    examples = []
    for i, row in enumerate(read_rows(path, spec.columns)):
        where = f"{path}, row {i + 1}"
        examples += [spec.example(r, where) for r in spec.rows(row, where)]
    if not examples:
        raise TaskError(f"{path}: no examples for task {spec.name!r}")
    return spec.select(split, examples) if spec.select else examples


def sample_k_shot(examples: list[Example], k: int, seed: int, exclude: set[int] = frozenset()
                  ) -> tuple[list[Example], set[int]]:
    """k examples per class (LM-BFF/MeZO sampler), shuffled; returns them and the indices used."""
    rng = random.Random(seed)
    order = [i for i in range(len(examples)) if i not in exclude]
    rng.shuffle(order)
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(examples[i].label, []).append(i)
    picked = []
    for label, idx in sorted(by_class.items()):
        if len(idx) < k:
            raise TaskError(f"only {len(idx)} examples of class {label} left, {k} per class requested")
        picked += idx[:k]
    rng.shuffle(picked)
    return [examples[i] for i in picked], set(picked)


def sample_n(examples: list[Example], n: int, seed: int, exclude: set[int] = frozenset()
             ) -> tuple[list[Example], set[int]]:
    """n examples drawn without replacement (MeZO's 1,000 / 500 / 1,000 setting)."""
    pool = [i for i in range(len(examples)) if i not in exclude]
    if len(pool) < n:
        raise TaskError(f"{n} examples requested but only {len(pool)} are available")
    picked = random.Random(seed).sample(pool, n)
    return [examples[i] for i in picked], set(picked)

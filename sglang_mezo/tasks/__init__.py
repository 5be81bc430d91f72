"""Tasks: MeZO's prompt templates and label words, data shipped in sglang_mezo/data or a user path, samplers."""
from __future__ import annotations

from pathlib import Path

from .builtin import (BOOLQ, BUILTIN, CB, COPA, MNLI, MULTIRC, RTE, SNLI, SST2, WIC,  # noqa: F401
                      WSC)
from .chat import apply_chat_template
from .errors import TaskError
from .readers import read_rows
from .spec import Example, TaskSpec, default_data_dir, load_split, sample_k_shot, sample_n

from .generation import GENERATION, GenerationSpec, GenExample, is_generation  # noqa: F401

TASKS: dict[str, TaskSpec | GenerationSpec] = {**BUILTIN, **GENERATION}


def get_task(name_or_path: str) -> TaskSpec:
    if name_or_path.lower() in TASKS:
        return TASKS[name_or_path.lower()]
    if Path(name_or_path).suffix in (".yaml", ".yml", ".json"):
        from .task_file import load_task_file

        return load_task_file(name_or_path)
    raise TaskError(f"unknown task {name_or_path!r}: choose one of {sorted(TASKS)} or give a task .yaml file")


def splits(spec: TaskSpec, *, k_shot: int | None, seed: int, n_train: int = 1000, n_dev: int = 500,
           n_test: int = 1000, data_dir=None) -> dict[str, list[Example]]:
    """MeZO's protocols: k per class for train and again for dev (RoBERTa setting), else 1,000 train /
    500 dev (OPT setting), and up to 1,000 test. Dev comes from the task's dev file where it has one
    (FewGLUE's dev32), else from train examples not drawn for train. A split too small for the request
    raises TaskError naming the task and split: data is never invented or silently cut short."""
    if is_generation(spec):
        from .generation import splits as generation_splits

        return generation_splits(spec, k_shot=k_shot, seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test,
                                 data_dir=data_dir)
    train_all = load_split(spec, "train", data_dir)
    test_all = load_split(spec, "test", data_dir)
    dev_all = load_split(spec, "dev", data_dir) if "dev" in spec.files else None

    def draw(split, pool, *args, exclude=frozenset()):
        sampler = sample_k_shot if k_shot else sample_n
        try:
            return sampler(pool, *args, exclude=exclude)
        except TaskError as e:
            raise TaskError(f"task {spec.name!r}, {split} split ({len(pool) - len(exclude)} examples): {e}"
                            ) from None

    if k_shot:
        train, used = draw("train", train_all, k_shot, seed)
        dev = draw("dev", dev_all, k_shot, seed + 1)[0] if dev_all else \
            draw("train (for dev)", train_all, k_shot, seed + 1, exclude=used)[0]
    else:
        train, used = draw("train", train_all, n_train, seed)
        dev = draw("dev", dev_all, n_dev, seed + 1)[0] if dev_all else \
            draw("train (for dev)", train_all, n_dev, seed + 1, exclude=used)[0]
    return {"train": train, "dev": dev, "test": subsample(test_all, n_test, seed)}


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """At most n examples: all of them if there are no more, else n drawn with `seed` (MeZO's test set)."""
    return sample_n(examples, n, seed)[0] if n is not None and len(examples) > n else examples


__all__ = ["apply_chat_template", "Example", "GenerationSpec", "GenExample", "is_generation", "TaskError", "TaskSpec", "TASKS", "SST2", "get_task", "load_split", "read_rows",
           "sample_k_shot", "sample_n", "splits", "subsample", "default_data_dir"]

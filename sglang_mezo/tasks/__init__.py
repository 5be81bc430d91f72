"""Tasks: MeZO's prompt templates and label words, data from shared/data or a user path, samplers."""
from __future__ import annotations

from pathlib import Path

from .spec import (Example, TaskError, TaskSpec, default_data_dir, load_split, read_rows, sample_k_shot,
                   sample_n)

# MeZO large_models/templates.py SST2Template: "<sentence> It was" -> " terrible" / " great".
# Files: the LM-BFF layout MeZO samples from (train 6,920 sentences; its dev.tsv, 872, is the test set).
SST2 = TaskSpec(
    name="sst2",
    files={"train": "SST-2/lmbff_original/train.tsv", "test": "SST-2/lmbff_original/dev.tsv"},
    template="{sentence} It was",
    label_words={"0": " terrible", "1": " great"},
)

TASKS: dict[str, TaskSpec] = {"sst2": SST2}


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
    500 dev from the train file and up to 1,000 test (OPT setting)."""
    train_all = load_split(spec, "train", data_dir)
    test_all = load_split(spec, "test", data_dir)
    if k_shot:
        train, used = sample_k_shot(train_all, k_shot, seed)
        dev, _ = sample_k_shot(train_all, k_shot, seed + 1, exclude=used)
        test = test_all[:n_test] if len(test_all) > n_test else test_all
    else:
        train, used = sample_n(train_all, min(n_train, len(train_all)), seed)
        dev, _ = sample_n(train_all, min(n_dev, len(train_all) - len(used)), seed + 1, exclude=used)
        test = sample_n(test_all, n_test, seed)[0] if len(test_all) > n_test else test_all
    return {"train": train, "dev": dev, "test": test}


__all__ = ["Example", "TaskError", "TaskSpec", "TASKS", "get_task", "load_split", "read_rows",
           "sample_k_shot", "sample_n", "splits", "default_data_dir"]

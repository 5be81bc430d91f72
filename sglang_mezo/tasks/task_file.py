"""A classification task defined by a small YAML file — no code needed:

    name: my_sentiment
    train: data/train.jsonl          # relative to this file; .jsonl .json .csv .tsv .parquet (.gz too),
    test: data/test.csv              # or a folder written by datasets' save_to_disk
    template: "{text} All in all, it was"
    label_field: label
    label_words: {neg: " bad", pos: " good"}
    columns: [text, label]           # optional: column names of header-less CSV/TSV files
"""
from __future__ import annotations

from pathlib import Path

from .spec import TaskError, TaskSpec


def load_task_file(path: str | Path) -> TaskSpec:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise TaskError(f"{path}: expected a mapping with name/train/test/template/label_words")
    if doc.get("type", "classification") == "generation":  # tasks/generation.py
        from .generation import load_generation_file

        return load_generation_file(path, doc)
    if doc.get("type", "classification") != "classification":
        raise TaskError(f"{path}: unknown type {doc['type']!r} (classification or generation)")
    missing = [k for k in ("train", "test", "template", "label_words") if k not in doc]
    if missing:
        raise TaskError(f"{path}: missing key(s) {missing}")
    if not isinstance(doc["label_words"], dict):
        raise TaskError(f"{path}: label_words must map each label value to its word")
    unknown = set(doc) - {"type", "name", "train", "dev", "test", "template", "label_field", "label_words",
                          "single_token_labels", "columns"}
    if unknown:
        raise TaskError(f"{path}: unknown key(s) {sorted(unknown)}")
    columns = doc.get("columns")
    if columns is not None and (not isinstance(columns, list) or not columns
                                or not all(isinstance(c, str) and c for c in columns)):
        raise TaskError(f"{path}: columns must be a list of column names, got {columns!r}")
    files = {s: str((path.parent / doc[s]).resolve()) for s in ("train", "dev", "test") if s in doc}
    return TaskSpec(name=str(doc.get("name", path.stem)), files=files, template=str(doc["template"]),
                    label_field=str(doc.get("label_field", "label")),
                    label_words={str(k): str(v) for k, v in doc["label_words"].items()},
                    single_token_labels=bool(doc.get("single_token_labels", True)), columns=columns)

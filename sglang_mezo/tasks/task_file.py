"""A classification task defined by a small YAML file — no code needed:

    name: my_sentiment
    train: data/train.jsonl          # .jsonl or .tsv (with a header row); relative to this file
    test: data/test.jsonl
    template: "{text} All in all, it was"
    label_field: label
    label_words: {neg: " bad", pos: " good"}
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
    missing = [k for k in ("train", "test", "template", "label_words") if k not in doc]
    if missing:
        raise TaskError(f"{path}: missing key(s) {missing}")
    if not isinstance(doc["label_words"], dict):
        raise TaskError(f"{path}: label_words must map each label value to its word")
    unknown = set(doc) - {"name", "train", "dev", "test", "template", "label_field", "label_words",
                          "single_token_labels"}
    if unknown:
        raise TaskError(f"{path}: unknown key(s) {sorted(unknown)}")
    files = {s: str((path.parent / doc[s]).resolve()) for s in ("train", "dev", "test") if s in doc}
    return TaskSpec(name=str(doc.get("name", path.stem)), files=files, template=str(doc["template"]),
                    label_field=str(doc.get("label_field", "label")),
                    label_words={str(k): str(v) for k, v in doc["label_words"].items()},
                    single_token_labels=bool(doc.get("single_token_labels", True)))

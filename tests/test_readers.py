"""Users' own task data in every supported format, and bad files stopped with a message naming the file
and the line or column. Pure data tests: no engine (readers and task files only)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sglang_mezo import tasks
from sglang_mezo.tasks import TaskError, get_task, load_split, read_rows

ROWS = [{"text": "a fine film", "label": "pos"}, {"text": "a dull film", "label": "neg"},
        {"text": "so good", "label": "pos"}]
WANT = [("a fine film It was", 1), ("a dull film It was", 0), ("so good It was", 1)]


def task_yaml(tmp_path, train: str, extra: str = "") -> str:
    path = tmp_path / "task.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: mine
        train: {train}
        test: {train}
        template: "{{text}} It was"
        label_words: {{neg: " bad", pos: " good"}}
        """) + extra)
    return str(path)


def examples(yaml_path: str):
    return [(e.prompt, e.label) for e in load_split(get_task(yaml_path), "train")]


def write_csv(path, rows, sep=",", header=True):
    lines = ([sep.join(rows[0])] if header else []) + [sep.join(str(v) for v in r.values()) for r in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "csv-noheader", "jsonl.gz", "parquet",
                                 "save_to_disk"])
def test_every_format_gives_the_same_examples(tmp_path, fmt):
    extra = ""
    if fmt == "jsonl":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        name = "d.jsonl"
    elif fmt == "json":
        (tmp_path / "d.json").write_text(json.dumps(ROWS))
        name = "d.json"
    elif fmt in ("csv", "tsv"):
        write_csv(tmp_path / f"d.{fmt}", ROWS, "," if fmt == "csv" else "\t")
        name = f"d.{fmt}"
    elif fmt == "csv-noheader":
        write_csv(tmp_path / "d.csv", ROWS, header=False)
        name, extra = "d.csv", "columns: [text, label]\n"
    elif fmt == "jsonl.gz":
        (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
        name = "d.jsonl.gz"
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
        name = "d.parquet"
    else:
        import datasets

        datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
        name = "ds"
    assert examples(task_yaml(tmp_path, name, extra)) == WANT


def test_csv_labels_are_strings_matched_as_strings(tmp_path):
    # numeric labels in a CSV stay strings; YAML keys 0/1 (ints) match them as strings
    (tmp_path / "d.csv").write_text('text,label\n"good, really",1\nbad,0\n')
    path = tmp_path / "t.yaml"
    path.write_text('train: d.csv\ntest: d.csv\ntemplate: "{text} It was"\nlabel_words: {0: " bad", 1: " good"}\n')
    assert [(e.prompt, e.label) for e in load_split(get_task(str(path)), "train")] == \
        [("good, really It was", 1), ("bad It was", 0)]
    assert read_rows(tmp_path / "d.csv")[0]["label"] == "1"


def test_builtin_data_ships_with_the_package(monkeypatch):
    monkeypatch.delenv("SGLANG_MEZO_DATA", raising=False)
    root = tasks.default_data_dir()
    assert root == tasks.spec.PACKAGE_DATA and root.parent.name == "sglang_mezo"
    for spec in tasks.TASKS.values():
        for rel in spec.files.values():
            assert (root / (rel + ".gz")).is_file(), rel
        assert (root / spec.files["train"].split("/")[0] / "PROVENANCE.md").is_file()
    assert len(load_split(tasks.SST2, "train")) == 6920 and len(load_split(tasks.SST2, "test")) == 872


def test_env_and_data_dir_override(tmp_path, monkeypatch):
    (tmp_path / "SST-2" / "lmbff_original").mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / "SST-2" / "lmbff_original" / f"{split}.tsv").write_text("sentence\tlabel\nok .\t1\nno .\t0\n")
    monkeypatch.setenv("SGLANG_MEZO_DATA", str(tmp_path))
    assert len(load_split(tasks.SST2, "train")) == 2
    monkeypatch.delenv("SGLANG_MEZO_DATA")
    assert len(load_split(tasks.SST2, "train", data_dir=tmp_path)) == 2
    assert len(load_split(tasks.SST2, "train")) == 6920


# --- bad input: each message names the file and the line / column / package ---

def test_missing_column(tmp_path):
    (tmp_path / "d.csv").write_text("sentence,label\nfine,pos\n")
    with pytest.raises(TaskError, match=r"d\.csv, row 1: missing field 'text'"):
        examples(task_yaml(tmp_path, "d.csv"))
    (tmp_path / "e.csv").write_text("text,y\nfine,pos\n")
    with pytest.raises(TaskError, match=r"e\.csv, row 1: missing label field 'label'"):
        examples(task_yaml(tmp_path, "e.csv"))


def test_csv_row_with_wrong_number_of_fields(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nfine,pos\nbad,neg,extra\n")
    with pytest.raises(TaskError, match=r"d\.csv:3: 3 fields, expected 2 \(\['text', 'label'\]\)"):
        read_rows(tmp_path / "d.csv")
    (tmp_path / "d.tsv").write_text("only one column\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"d\.tsv:1: 1 fields, expected 2"):
        examples(task_yaml(tmp_path, "d.tsv", "columns: [text, label]\n"))


@pytest.mark.parametrize("content", ["text,label\n", "", "[]"])
def test_empty_split(tmp_path, content):
    name = "d.json" if content == "[]" else "d.csv"
    (tmp_path / name).write_text(content)
    with pytest.raises(TaskError, match=rf"task file is empty: .*{name}"):
        examples(task_yaml(tmp_path, name))


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(TaskError, match=r"d\.xlsx: unsupported file type '\.xlsx'; supported: \.jsonl, \.json, "
                                        r"\.csv, \.tsv, \.parquet"):
        read_rows(tmp_path / "d.xlsx")
    (tmp_path / "folder").mkdir()
    with pytest.raises(TaskError, match="not one written by datasets' save_to_disk"):
        read_rows(tmp_path / "folder")


def test_bad_json_and_columns(tmp_path):
    (tmp_path / "d.json").write_text('{"text": "x"}')
    with pytest.raises(TaskError, match=r"d\.json: a \.json task file must hold a list of objects, got dict"):
        read_rows(tmp_path / "d.json")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(TaskError, match="columns must be a list of column names"):
        get_task(task_yaml(tmp_path, "d.csv", "columns: text\n"))


def test_dataset_dict_folder_names_its_splits(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(TaskError, match=r"holds a DatasetDict; name one split's folder instead \(.*dd/train\)"):
        read_rows(tmp_path / "dd")


@pytest.mark.parametrize("package,make", [
    ("pyarrow", "import pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.Table.from_pylist(ROWS), P)"),
    ("datasets", "import datasets; datasets.Dataset.from_list(ROWS).save_to_disk(P)")])
def test_missing_optional_package_is_named(tmp_path, package, make):
    """In a fresh process where the package cannot be imported (as on a machine without it)."""
    path = str(tmp_path / ("d.parquet" if package == "pyarrow" else "ds"))
    exec(make, {"ROWS": ROWS, "P": path})
    code = (f"import sys; sys.modules[{package!r}] = None\n"
            "from sglang_mezo.tasks import read_rows, TaskError\n"
            f"try: read_rows({path!r})\n"
            "except TaskError as e: print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert f"needs the '{package}' package (pip install {package})" in p.stdout, p.stderr[-2000:]

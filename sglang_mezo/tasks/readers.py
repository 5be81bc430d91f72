"""Task data files -> rows (dicts). One reader per format; `.gz` on any file name is read transparently.

    .jsonl  one JSON object per line          .json     a list of objects
    .csv    header row, or `columns`           .tsv      header row, or `columns`
    .parquet (needs pyarrow)                   a folder written by `datasets`' save_to_disk (needs datasets)

CSV/TSV values stay strings (label_words keys are matched as strings).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from .errors import TaskError

FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", "a datasets save_to_disk folder")


def resolve(path: Path) -> Path:
    """`path`, or its `.gz` copy (the package ships its data compressed)."""
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.is_file() else path


def read_rows(path: str | Path, columns: list[str] | None = None) -> list[dict]:
    path = resolve(Path(path))
    if path.is_dir():
        rows = _datasets_folder(path)
    elif not path.is_file():
        raise TaskError(f"task file not found: {path}")
    else:
        fmt = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
        reader = {".jsonl": _jsonl, ".json": _json, ".csv": _delimited, ".tsv": _delimited,
                  ".parquet": _parquet}.get(fmt.lower())
        if reader is None:
            raise TaskError(f"{path}: unsupported file type {fmt or '(none)'!r}; supported: {', '.join(FORMATS)}"
                            " (optionally .gz-compressed)")
        rows = reader(path, columns) if reader is _delimited else reader(path)
    if not rows:
        raise TaskError(f"task file is empty: {path}")
    return rows


def _text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _jsonl(path: Path) -> list[dict]:
    rows = []
    with _text(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path}:{i}: each line must be a JSON object")
            rows.append(row)
    return rows


def _json(path: Path) -> list[dict]:
    with _text(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(doc, list):
        raise TaskError(f"{path}: a .json task file must hold a list of objects, got {type(doc).__name__}")
    for i, row in enumerate(doc):
        if not isinstance(row, dict):
            raise TaskError(f"{path}: item {i} is a {type(row).__name__}, expected an object")
    return doc


def _delimited(path: Path, columns: list[str] | None) -> list[dict]:
    tsv = ".tsv" in path.suffixes
    with _text(path) as f:
        # TSV files of this field (GLUE, LM-BFF) are unquoted; CSV follows RFC 4180 quoting
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(f)
        try:
            header = list(columns) if columns else next(reader, None)
            if header is None:
                return []
            if len(set(header)) != len(header):
                raise TaskError(f"{path}: repeated column name in {header}")
            rows = []
            for rec in reader:
                if not rec:
                    continue
                if len(rec) != len(header):
                    raise TaskError(f"{path}:{reader.line_num}: {len(rec)} fields, expected {len(header)} "
                                    f"({header})")
                rows.append({k: v.strip() for k, v in zip(header, rec)})
        except csv.Error as e:
            raise TaskError(f"{path}:{reader.line_num}: malformed {'TSV' if tsv else 'CSV'} ({e})") from None
    return rows


def _parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"{path}: reading .parquet needs the 'pyarrow' package (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise TaskError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def _datasets_folder(path: Path) -> list[dict]:
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise TaskError(f"{path} holds a DatasetDict; name one split's folder instead "
                        f"({', '.join(str(path / s) for s in splits)})")
    if not (path / "state.json").is_file():
        raise TaskError(f"{path} is a folder but not one written by datasets' save_to_disk (no state.json); "
                        f"supported: {', '.join(FORMATS)}")
    try:
        import datasets
    except ImportError:
        raise TaskError(f"{path}: reading a save_to_disk folder needs the 'datasets' package "
                        "(pip install datasets)") from None
    return datasets.load_from_disk(str(path)).to_list()

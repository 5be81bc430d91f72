"""Copy the files the built-in tasks read from the project's offline data folder (../shared/data) into
sglang_mezo/data as package data: gzip-compressed (`<original name>.gz`, mtime 0 so rebuilds are
byte-identical), each task's PROVENANCE.md beside it, large train splits subsampled deterministically.

    python tools/ship_data.py [--src ../shared/data]

Run by maintainers when the data changes; users never need ../shared (the package carries its data).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "sglang_mezo" / "data"

# task folder -> the files its built-in task reads (paths relative to the task folder)
FILES = {
    "SST-2": ["lmbff_original/train.tsv", "lmbff_original/dev.tsv"],
    "RTE": ["superglue/train.jsonl", "superglue/val.jsonl"],
    "WSC": ["superglue/train.jsonl", "superglue/val.jsonl"],
    **{t: ["fewglue_32dev/train.jsonl", "fewglue_32dev/dev32.jsonl", "fewglue_32dev/val.jsonl"]
       for t in ("CB", "BoolQ", "WiC", "MultiRC", "COPA")},
    "MNLI": ["jsonl/pooled_kshot_from_train.jsonl"],
    "SNLI": ["jsonl/pooled_kshot_from_train.jsonl"],
    "SQuAD": ["jsonl/dev.jsonl", "jsonl/train.jsonl"],
    "GSM8K": ["original/train.jsonl", "original/test.jsonl"],
    "NQ-open": ["nq_open/NQ-open.dev.jsonl", "nq_open/NQ-open.efficientqa.dev.1.1.jsonl"],
}
# file -> keep every k-th line (first line kept): keeps the wheel small, deterministic, order preserved
SUBSAMPLE = {("SQuAD", "jsonl/train.jsonl"): 8}


README = """# Task data shipped with sglang_mezo

The files the built-in tasks read, copied by `tools/ship_data.py` from the project's offline data folder
and gzip-compressed. Each task folder keeps its `PROVENANCE.md` (source repository, commit, licence as
stated by the source, md5 of the original files); `SOURCE_README.md` is that folder's overview.
Licences differ per task (MIT, CC BY-SA 3.0/4.0, ...): read the task's PROVENANCE.md before
redistributing. md5 below is of the uncompressed content.

| file | lines | content | md5 |
|---|---|---|---|
{rows}

SQuAD's train split is subsampled (every 8th question, in the original order) to keep the package small;
point `--data-dir` / `$SGLANG_MEZO_DATA` at a folder with the full file to use all 87,599.
"""


def read_source(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gzip.decompress(gz.read_bytes())
    raise SystemExit(f"missing source file {path} (or {gz.name})")


def write_gz(data: bytes, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "data"))
    src = Path(ap.parse_args().src)
    if DEST.exists():
        shutil.rmtree(DEST)
    manifest = {}
    for task, files in FILES.items():
        for rel in files:
            data = read_source(src / task / rel)
            note = "verbatim"
            k = SUBSAMPLE.get((task, rel))
            if k:
                lines = data.decode("utf-8").splitlines(keepends=True)
                data = "".join(lines[::k]).encode("utf-8")
                note = f"every {k}th line of {len(lines)} (lines 1, {k + 1}, {2 * k + 1}, ...)"
            write_gz(data, DEST / task / (rel + ".gz"))
            manifest[f"{task}/{rel}"] = {"lines": data.count(b"\n"), "md5": hashlib.md5(data).hexdigest(),
                                         "content": note}
        shutil.copyfile(src / task / "PROVENANCE.md", DEST / task / "PROVENANCE.md")
    shutil.copyfile(src / "README.md", DEST / "SOURCE_README.md")
    (DEST / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    rows = "\n".join(f"| `{k}.gz` | {v['lines']:,} | {v['content']} | `{v['md5']}` |" for k, v in manifest.items())
    (DEST / "README.md").write_text(README.format(rows=rows))
    total = sum(p.stat().st_size for p in DEST.rglob("*") if p.is_file())
    print(f"{DEST}: {len(manifest)} files, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

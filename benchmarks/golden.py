"""Golden records of sglang_mezo's behaviour, driven only through its CLI, to prove that a refactor keeps
training trajectories and exported models bit-identical.

    python benchmarks/golden.py record OUT.json [--models DIR] [--work DIR]
    python benchmarks/golden.py compare A.json B.json

`record` trains a fixed set of short runs on tiny models (`python -m sglang_mezo train`, then `replay`)
with this interpreter and environment, in the repo root of whichever sglang_mezo this interpreter imports
(e.g. PYTHONPATH=/work/golden_base for a frozen worktree). Tiny models are built once into --models and
reused, so "before" and "after" records start from the same files (their hashes are recorded too).
Per run: trajectory.jsonl (header with paths made relative, steps verbatim), metrics.jsonl without
timings, the CLI's summary JSON, sha256 of DIR/model/*.safetensors and of the replayed safetensors.
A run that fails is left out of the record (listed under "failed"). `compare` prints IDENTICAL or the
first difference per run and exits 1 if any run differs or is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CLS = ["--task", "sst2", "--steps", "4", "--batch-size", "4", "--k-shot", "4", "--n-test", "8",
       "--eval-every", "2", "--lr", "1e-2", "--eps", "1e-2", "--seed", "7", "--progress-off"]
# nq_open (short closed-book prompts: SQuAD's passages exceed the tiny Llama's 512-token context)
GEN = ["--task", "nq_open", "--steps", "3", "--batch-size", "2", "--k-shot", "4", "--n-test", "4",
       "--eval-every", "2", "--max-new-tokens", "4", "--temperature", "1.0", "--lr", "1e-2", "--eps", "1e-2",
       "--seed", "7", "--keep", "last", "--progress-off"]
# name: (tiny model, train flags); a flag given twice takes its last value (argparse). --keep last where the
# best dev step would be 0 (the export would then be the base model and prove nothing about training).
RUNS = {
    "cls_ce_layerwise": ("llama", CLS),
    "cls_accuracy_inplace": ("llama", CLS + ["--objective", "accuracy", "--perturb", "inplace",
                                             "--keep", "last"]),
    "cls_fzoo_n3": ("llama", CLS + ["--estimator", "fzoo", "--n-queries", "3"]),
    "cls_one_point_wd": ("llama", CLS + ["--estimator", "one_point", "--weight-decay", "0.1"]),
    "cls_ce_hf": ("llama", CLS + ["--backend", "hf"]),
    "tied_keep_last": ("llama_tied", CLS + ["--keep", "last"]),
    # a random tiny model scores F1 = 0 (zero gradients): weight decay still moves the weights
    "gen_nq_open_f1": ("llama", GEN + ["--weight-decay", "0.1"]),
    "gen_nq_open_lm": ("llama", GEN + ["--objective", "lm"]),
    "bert_ce": ("bert", CLS + ["--lr", "1e-3", "--keep", "last"]),
    "bert_accuracy_hf": ("bert", CLS + ["--objective", "accuracy", "--backend", "hf", "--eps", "1e-1",
                                 "--keep", "last"]),
    "lowrank_r2": ("llama", CLS + ["--perturb", "lowrank", "--rank", "2", "--keep", "last"]),
    "lowrank_r2_fzoo_n2": ("llama", CLS + ["--perturb", "lowrank", "--rank", "2", "--estimator", "fzoo",
                                           "--n-queries", "2"]),
    "cls_bf16": ("llama", CLS + ["--dtype", "bfloat16"]),
}
TIMING = ("time_s", "time_split")


def repo_root() -> Path:
    import sglang_mezo  # the package this interpreter (PYTHONPATH) imports: its repo is the cwd of the CLI

    return Path(sglang_mezo.__file__).resolve().parents[1]


def make_models(models: Path, root: Path) -> None:
    sys.path.insert(0, str(root))
    try:
        from tests.tiny_models import make_tiny_bert, make_tiny_llama
    except ImportError:
        from sglang_mezo.models import make_tiny_bert, make_tiny_llama
    builders = {  # as tests/conftest.py (tiny_model, tiny_tied_model) and tests/test_encoder.py (tiny_bert2)
        "llama": lambda d: make_tiny_llama(d),
        "llama_tied": lambda d: make_tiny_llama(d, tie_word_embeddings=True, vocab_size=1003, seed=1),
        "bert": lambda d: make_tiny_bert(d, num_labels=2, seed=1),
    }
    for name, build in builders.items():
        if not (models / name / "config.json").exists():
            print(f"building tiny model {models / name}", file=sys.stderr)
            build(str(models / name))


def sha256s(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def clean(x, subs, drop_timing=False):
    """Known folders -> <models>/<work>; other absolute paths dropped; timing keys dropped if asked."""
    if isinstance(x, dict):
        out = {k: clean(v, subs, drop_timing) for k, v in x.items()
               if not (drop_timing and (k.endswith("_s") or k in TIMING))}
        return {k: v for k, v in out.items() if v is not None or x[k] is None}
    if isinstance(x, list):
        return [clean(v, subs, drop_timing) for v in x]
    if isinstance(x, str) and os.path.isabs(x):
        for old, new in subs:
            if x == old or x.startswith(old + os.sep):
                return new + x[len(old):]
        return None
    return x


def cli(root: Path, args: list[str]) -> dict:
    p = subprocess.run([sys.executable, "-m", "sglang_mezo", *args], cwd=root, env=dict(os.environ),
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: " + "\n".join(p.stderr.strip().splitlines()[-3:]))
    return json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])


def record_run(root: Path, model: Path, flags: list[str], out: Path, subs) -> dict:
    for d in (out, out.with_name(out.name + "_replay")):
        shutil.rmtree(d, ignore_errors=True)
    summary = cli(root, ["train", "--model", str(model), *flags, "--out", str(out)])
    replay = out.with_name(out.name + "_replay")
    rsum = cli(root, ["replay", "--base", str(model), "--trajectory", str(out / "trajectory.jsonl"),
                      "--out", str(replay)])
    lines = [json.loads(l) for l in (out / "trajectory.jsonl").read_text().splitlines()]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return {"flags": flags, "summary": clean(summary, subs), "trajectory_header": clean(lines[0], subs),
            "trajectory_steps": lines[1:], "metrics": [clean(m, subs, drop_timing=True) for m in metrics],
            "model_sha256": sha256s(out / "model"), "replay_summary": clean(rsum, subs),
            "replay_sha256": sha256s(replay)}


def record(args) -> int:
    root, models, work = repo_root(), Path(args.models).resolve(), Path(args.work).resolve()
    print(f"sglang_mezo from {root}", file=sys.stderr)
    models.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    make_models(models, root)
    subs = [(str(models), "<models>"), (str(work), "<work>")]
    rec = {"models": {m: sha256s(models / m) for m in ("llama", "llama_tied", "bert")}, "runs": {},
           "failed": {}}
    t_all = time.time()
    for name, (model, flags) in RUNS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        try:
            rec["runs"][name] = record_run(root, models / model, flags, work / name, subs)
            print(f"{name}: ok ({time.time() - t0:.0f} s)", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - a failing run is reported and left out of the record
            rec["failed"][name] = str(e)
            print(f"{name}: FAILED ({time.time() - t0:.0f} s) {e}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{len(rec['runs'])} runs recorded, {len(rec['failed'])} failed, {time.time() - t_all:.0f} s "
          f"-> {args.out}", file=sys.stderr)
    return 0


def first_diff(a, b, path="") -> tuple[str, object, object] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}", a.get(k, "<missing>"), b.get(k, "<missing>")
            d = first_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None if len(a) == len(b) else (f"{path} (length)", len(a), len(b))
    # leaves: JSON text, so 1 != 1.0, NaN == NaN, and floats compare bit for bit (shortest repr)
    return None if json.dumps(a) == json.dumps(b) else (path, a, b)


def compare(args) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    bad = 0
    d = first_diff(a["models"], b["models"], "models")
    print(f"{'tiny models':24s} " + ("IDENTICAL" if d is None else f"DIFFER at {d[0]}: {d[1]!r} != {d[2]!r}"))
    bad += d is not None
    for name in sorted(set(a["failed"]) & set(b["failed"])):
        print(f"{name:24s} failed in both records (not compared)")
    for name in sorted(set(a["runs"]) | set(b["runs"])):
        if name not in a["runs"] or name not in b["runs"]:
            where = " and ".join(p for p, r in ((args.a, a), (args.b, b)) if name not in r["runs"])
            print(f"{name:24s} MISSING in {where}")
            bad += 1
            continue
        d = first_diff(a["runs"][name], b["runs"][name], name)
        print(f"{name:24s} " + ("IDENTICAL" if d is None else f"DIFFER at {d[0]}: {d[1]!r} != {d[2]!r}"))
        bad += d is not None
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    r.add_argument("--models", default="/work/golden_models")
    r.add_argument("--work", default="/tmp/golden_work", help="run folders (each run's is replaced)")
    r.add_argument("--only", nargs="*", help="record only these runs (debugging)")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    return record(args) if args.cmd == "record" else compare(args)


if __name__ == "__main__":
    sys.exit(main())

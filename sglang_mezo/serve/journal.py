"""The write-ahead journal of a served run: `sglang-mezo serve --mezo-run-dir DIR` → DIR/trajectory.jsonl.

Who writes: the scheduler that applies the steps (under TP, rank 0; every rank reads the journal at start
and replays its own shard). It is the one process that knows a step exists before anyone is told: a
step's record — or a rollback — is appended and fsync'd before the scheduler answers the RPC, so no
client (/mezo/step's reply, /mezo/train's progress, /mezo/status) ever sees a step the journal lacks. A
crash between the weights changing and the write loses a step nobody was told of; the restart serves
the journal's weights.

The file is an ordinary trajectory (trajectory.py: header, step lines, `{"rollback_to": N}` lines), so
`sglang-mezo replay --trajectory DIR/trajectory.jsonl` rebuilds the served model offline. Its header pins
what a replay needs — base model (path and content hash), dtype, perturbation mode, rank, noise version,
trained tensors — and the TP size it was written under (informational: z is keyed by HF name and index,
so a journal replays bit-identically under any TP layout).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .. import trajectory
from ..backends.layout import checkpoint_files

RUN_DIR_ENV = "SGLANG_MEZO_RUN_DIR"          # set by `serve --mezo-run-dir` for the schedulers
BASE_SHA256_ENV = "SGLANG_MEZO_BASE_SHA256"  # the base model's content hash, computed once at launch
FILE = "trajectory.jsonl"
log = logging.getLogger("sglang_mezo.serve")

# what must match for a journal to be replayed onto this server, and how a mismatch is named
PINNED = {"base_model_sha256": "base model (content sha256)", "dtype": "dtype", "noise": "noise version",
          "perturb": "perturbation mode (--mezo-perturb)", "rank": "low-rank rank (--mezo-rank)",
          "sparsity": "Sparse MeZO sparsity (--mezo-sparsity)", "trainable_names": "trained tensors"}
ABSENT = {"sparsity": 0.0}   # a header without the key holds this value (dense runs write no sparsity)


class JournalError(RuntimeError):
    """A journal that cannot be used for this server; the message names the file and the mismatch."""


def model_sha256(model_path: str) -> str:
    """sha256 over the model folder's config.json and *.safetensors (names and bytes): the same weights
    under another path hash the same; any changed byte does not."""
    folder = Path(model_path)
    if not folder.is_dir():
        raise JournalError(f"--mezo-run-dir pins the base model's content: --model-path {model_path!r} must "
                           "be a local model folder")
    h = hashlib.sha256()
    for f in [folder / "config.json", *checkpoint_files(str(folder))]:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def mismatches(found: dict, expected: dict) -> list[str]:
    """Each pinned fact of `expected` that the journal's header `found` disagrees on, named."""
    out = []
    for key, what in PINNED.items():
        if key in ABSENT:   # compared always: a dense server must not replay a sparse journal, nor back
            found, expected = {key: ABSENT[key], **found}, {key: ABSENT[key], **expected}
        if key in expected and found.get(key) != expected[key]:
            a, b = found.get(key), expected[key]
            if key == "trainable_names":
                a, b = f"{len(a or [])} tensors", f"{len(b)} tensors"
            elif key == "base_model_sha256":
                a = f"{str(a)[:12]}... ({found.get('base_model')})"
                b = f"{b[:12]}... ({expected.get('base_model')})"
            out.append(f"{what}: journal {a}, this server {b}")
    return out


def refuse(path: Path, problems: list[str]) -> JournalError:
    return JournalError(f"--mezo-run-dir journal {path} was written for another setup and is not replayed "
                        f"({'; '.join(problems)}): start the server as the journal says, or give a new "
                        "--mezo-run-dir")


def check_at_launch(run_dir: str, expected: dict) -> None:
    """In `serve`'s own process, before SGLang starts: a journal that cannot be replayed here is refused
    with its mismatch named (the schedulers check every pinned fact again at start)."""
    path = Path(run_dir) / FILE
    if path.exists():
        try:
            header = trajectory.load(path).header
        except trajectory.TrajectoryError as e:
            raise JournalError(f"--mezo-run-dir: {e}") from None
        problems = mismatches(header, expected)
        if problems:
            raise refuse(path, problems)


class Journal:
    """DIR/trajectory.jsonl of one server: what it restored at start (`restored`), then every step and
    rollback appended durably (`writer`: TP rank 0; the other ranks only read)."""

    def __init__(self, run_dir: str, header: dict, writer: bool):
        self.path = Path(run_dir) / FILE
        self.restored = None
        if self.path.exists():
            try:
                t = trajectory.load(self.path)
            except trajectory.TrajectoryError as e:
                raise JournalError(f"--mezo-run-dir: {e}") from None
            problems = mismatches(t.header, header)
            if problems:
                raise refuse(self.path, problems)
            bad = next((i for i, r in enumerate(t.records) if r.step != i + 1), None)
            if bad is not None:
                raise JournalError(f"--mezo-run-dir journal {self.path}: its steps are not numbered 1, 2, ... "
                                   f"(the {bad + 1}th is step {t.records[bad].step}): not a served run's journal")
            if t.header.get("base_model") != header.get("base_model"):
                log.warning("MeZO journal %s: base model moved from %s to %s (same content sha256)", self.path,
                            t.header.get("base_model"), header.get("base_model"))
            if t.torn is not None and writer:
                log.warning("MeZO journal %s: its last line was cut short by a crash during the write and is "
                            "dropped (that step was never acknowledged): %r...", self.path, t.torn)
            self.restored = t
            self.writer = trajectory.TrajectoryWriter(self.path, durable=True, keep_bytes=t.size) if writer else None
        else:
            self.writer = trajectory.TrajectoryWriter(self.path, header, durable=True) if writer else None

    def step(self, rec) -> str | None:
        """Append a step's record; None, or what went wrong (the caller undoes the step)."""
        return self._write(lambda w: w.append(rec))

    def rollback(self, to: int) -> str | None:
        return self._write(lambda w: w.rollback(to))

    def _write(self, fn) -> str | None:
        if self.writer is None:
            return None
        try:
            fn(self.writer)
        except OSError as e:
            log.error("MeZO journal %s: write failed: %s", self.path, e)
            return f"the journal could not be written ({e.strerror or e})"
        return None


def prepare_launch(run_dir: str, model_path: str, expected: dict) -> dict:
    """`serve --mezo-run-dir DIR`: DIR made, the base model hashed, an unusable journal refused; returns
    the environment the schedulers read."""
    os.makedirs(run_dir, exist_ok=True)
    sha = model_sha256(model_path)
    check_at_launch(run_dir, {"base_model_sha256": sha, "base_model": model_path, **expected})
    return {RUN_DIR_ENV: os.path.realpath(run_dir), BASE_SHA256_ENV: sha}

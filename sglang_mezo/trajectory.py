"""trajectory.jsonl: a header line, then one line per MeZO step (seeds + projected gradients + losses),
and — in a served run's journal — `{"rollback_to": N}` lines (the steps after N were undone).

Because z is a pure function of (seed, HF name, HF index), the base model plus this file (a few KB) is a
complete checkpoint: `replay` redoes each step's exact arithmetic, without forward passes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .backends.base import Piece
from .mezo import StepRecord, replay_step
from .perturb import make

FORMAT = "sglang_mezo.trajectory/1"
log = logging.getLogger("sglang_mezo")


class TrajectoryError(ValueError):
    pass


def make_header(base_model: str, dtype: str, pieces, backend: str, perturb: str, trainable=None,
                rank: int | None = None, sparsity: float = 0.0) -> dict:
    """What a replay needs besides the steps: base model, dtype, the trained HF tensors, noise, perturb mode
    (and, for lowrank, the rank of every direction; for Sparse MeZO, the sparsity; absent: dense)."""
    from .noise import VERSION

    head = {"base_model": base_model, "dtype": dtype, "trainable": trainable,
            "trainable_names": list(dict.fromkeys(p.hf_name for p in pieces)), "noise": VERSION,
            "backend": backend, "perturb": perturb}
    if perturb == "lowrank":
        head["rank"] = rank
    if sparsity:
        head["sparsity"] = sparsity
    return head


def write(path: str | Path, header: dict, records) -> None:
    """A whole trajectory file, written to a temporary name, fsync'd and renamed into place (a reader, or
    a crash, sees the old file or the new one, never half of one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_line({"format": FORMAT, **header}))
        for r in records:
            f.write(_line(asdict(r)))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode("utf-8")


def _fsync_dir(folder: Path) -> None:
    """A new or renamed file survives a power cut only once its directory entry is on disk too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TrajectoryWriter:
    """Appends step lines (and rollback lines) to a trajectory.

    `header`: a new file (header written atomically, so a file never lacks it); None: continue an
    existing file after its first `keep_bytes` bytes (`load(...).size`: a torn last line is cut away).
    `durable`: each line is fsync'd before `append` returns — the serve journal acknowledges a step only
    after that; otherwise each line is flushed (a killed process loses nothing, a power cut may)."""

    def __init__(self, path: Path, header: dict | None = None, durable: bool = False,
                 keep_bytes: int | None = None):
        self.path, self.durable = Path(path), durable
        if header is not None:
            write(self.path, header, [])
        elif keep_bytes is not None:
            os.truncate(self.path, keep_bytes)
        self.f = open(self.path, "ab")
        if header is None and self.f.tell() and not self.path.read_bytes().endswith(b"\n"):
            self.f.write(b"\n")  # a last line written without its newline: the next one starts afresh

    def _write(self, obj: dict) -> None:
        pos = self.f.tell()
        try:
            self.f.write(_line(obj))
            self.f.flush()  # every finished step is on disk: a crash loses nothing already done
            if self.durable:
                os.fsync(self.f.fileno())
        except OSError:
            try:  # no half line stays behind for the next append to follow
                self.f.truncate(pos)
            except OSError:
                pass
            raise

    def append(self, rec: StepRecord) -> None:
        self._write(asdict(rec))

    def rollback(self, to: int) -> None:
        """The steps after `to` are undone: a reader keeps only the steps numbered <= to."""
        self._write({"rollback_to": to})

    def close(self) -> None:
        self.f.close()


@dataclass
class Trajectory:
    """A trajectory file as read: the steps in force, and what the file holds besides."""
    header: dict
    records: list[StepRecord]     # the steps in force: every rollback applied
    taken: list[StepRecord]       # every step line in file order, rolled back or not
    rollbacks: int
    torn: str | None              # the last line, cut short by a crash and left out; None: none
    size: int                     # bytes up to the end of the last whole line (where appending resumes)


def load(path: str | Path) -> Trajectory:
    """Header, step lines and rollback lines (`{"rollback_to": N}`). A last line without its newline that
    does not parse is what a crash in the middle of a write leaves: it is left out (`torn`); a bad line
    anywhere else is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"trajectory not found: {path}")
    data = path.read_bytes()
    lines, pos, size, torn = [], 0, 0, None
    while pos < len(data):
        end = data.find(b"\n", pos)
        whole = end >= 0
        raw = data[pos: end if whole else len(data)]
        nxt = end + 1 if whole else len(data)
        if raw.strip():
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if whole:
                    raise TrajectoryError(f"{path}: line {len(lines) + 1} is malformed ({e})") from None
                torn = raw[:60].decode("utf-8", "replace")
                break
            lines.append((len(lines) + 1, obj))
        pos = size = nxt
    if not lines:
        raise TrajectoryError(f"{path} is empty" + (" (its only line is torn)" if torn else ""))
    header = lines[0][1]
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TrajectoryError(f"{path}: first line is not a {FORMAT} header")
    records, taken, rollbacks = [], [], 0
    for n, obj in lines[1:]:
        try:
            if isinstance(obj, dict) and set(obj) == {"rollback_to"}:
                to = obj["rollback_to"]
                if not isinstance(to, int) or to < 0 or to > (records[-1].step if records else 0):
                    raise TrajectoryError(f"{path}: line {n} rolls back to step {to!r}, past the last step")
                records = [r for r in records if r.step <= to]
                rollbacks += 1
                continue
            rec = StepRecord(**obj)
        except TypeError as e:
            raise TrajectoryError(f"{path}: line {n} is malformed ({e})") from None
        records.append(rec)
        taken.append(rec)
    return Trajectory(header, records, taken, rollbacks, torn, size)


def read(path: str | Path) -> tuple[dict, list[StepRecord]]:
    """(header, the steps in force); a torn last line is dropped with a warning."""
    t = load(path)
    if t.torn is not None:
        log.warning("%s: the last line is incomplete (a crash during its write) and is left out: %r...",
                    path, t.torn)
    return t.header, t.records


GENESIS = hashlib.sha256(FORMAT.encode()).hexdigest()


def head(records, start: str = GENESIS) -> str:
    """A hash chain over the steps' replay fields (not `extra`): two holders of the same head took the
    same steps; `start` continues the chain from an earlier head (a run that began on k steps)."""
    h = start
    for r in records:
        fields = {k: v for k, v in asdict(r).items() if k != "extra"}
        h = hashlib.sha256((h + json.dumps(fields, sort_keys=True)).encode()).hexdigest()
    return h


def checkpoint_pieces(model_path: str, names: list[str], dtype: torch.dtype) -> list[Piece]:
    """The named HF tensors of a checkpoint, loaded in `dtype`, as whole-tensor pieces (no engine)."""
    from safetensors import safe_open

    from .backends.layout import checkpoint_files

    want, pieces = set(names), {}
    for f in checkpoint_files(model_path):
        with safe_open(str(f), framework="pt") as st:
            for n in st.keys():
                if n in want:
                    t = st.get_tensor(n).to(dtype).contiguous()
                    pieces[n] = Piece(n, tuple(t.shape), t, (0,) * t.dim())
    missing = want - set(pieces)
    if missing:
        raise TrajectoryError(f"base model {model_path} lacks trained tensors {sorted(missing)[:5]}")
    return [pieces[n] for n in names]


def rewind(backend, pieces: list[Piece], perturb: str, records, rank: int | None = None,
           reload: bool = True, sparsity: float = 0.0) -> None:
    """The engine's weights at the end of `records`, without a second copy of the model: the base
    weights back in place, then the records replayed (best dev step, rollback). reload=False: the engine
    holds the base weights already (a server restoring its journal at start)."""
    if reload:
        backend.load_base()
    redo = make(perturb, pieces, backend, replay=True, rank=rank, sparsity=sparsity)
    for rec in records:
        replay_step(redo, rec)


def replay(base_model: str, trajectory: str | Path, upto: int | None = None) -> dict[str, torch.Tensor]:
    """Weights after replaying the trajectory on the base model (HF names, the run's dtype)."""
    from .backends.base import hf_dtype

    header, records = read(trajectory)
    pieces = checkpoint_pieces(base_model, header["trainable_names"], hf_dtype(header["dtype"]))
    weights = make(header.get("perturb", "inplace"), pieces, replay=True, rank=header.get("rank"),
                   sparsity=header.get("sparsity", 0.0))
    for rec in records:
        if upto is not None and rec.step > upto:
            break
        replay_step(weights, rec)
    return {p.hf_name: p.view for p in pieces}

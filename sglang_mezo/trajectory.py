"""trajectory.jsonl: a header line, then one line per MeZO step (seeds + projected gradients + losses).

Because z is a pure function of (seed, HF name, HF index), the base model plus this file (a few KB) is a
complete checkpoint: `replay` redoes each step's exact arithmetic, without forward passes.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .backends.base import Piece
from .mezo import StepRecord, replay_step
from .perturb import make

FORMAT = "sglang_mezo.trajectory/1"


class TrajectoryError(ValueError):
    pass


def make_header(base_model: str, dtype: str, pieces, backend: str, perturb: str, trainable=None,
                rank: int | None = None) -> dict:
    """What a replay needs besides the steps: base model, dtype, the trained HF tensors, noise, perturb mode
    (and, for lowrank, the rank of every direction)."""
    from .noise import VERSION

    head = {"base_model": base_model, "dtype": dtype, "trainable": trainable,
            "trainable_names": list(dict.fromkeys(p.hf_name for p in pieces)), "noise": VERSION,
            "backend": backend, "perturb": perturb}
    if perturb == "lowrank":
        head["rank"] = rank
    return head


def write(path: str | Path, header: dict, records) -> None:
    """A whole trajectory file, written to a temporary name and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    w = TrajectoryWriter(tmp, header)
    for r in records:
        w.append(r)
    w.close()
    tmp.replace(path)


class TrajectoryWriter:
    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.f = open(self.path, "w", encoding="utf-8")
        self._write({"format": FORMAT, **header})

    def _write(self, obj: dict) -> None:
        self.f.write(json.dumps(obj) + "\n")
        self.f.flush()  # every finished step is on disk: a crash loses nothing already done

    def append(self, rec: StepRecord) -> None:
        self._write(asdict(rec))

    def close(self) -> None:
        self.f.close()


def read(path: str | Path) -> tuple[dict, list[StepRecord]]:
    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"trajectory not found: {path}")
    lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    if not lines:
        raise TrajectoryError(f"{path} is empty")
    try:
        header = json.loads(lines[0])
        if header.get("format") != FORMAT:
            raise TrajectoryError(f"{path}: first line is not a {FORMAT} header")
        records = [StepRecord(**json.loads(l)) for l in lines[1:]]
    except (json.JSONDecodeError, TypeError) as e:
        raise TrajectoryError(f"{path}: malformed line ({e})") from None
    return header, records


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


def rewind(backend, pieces: list[Piece], perturb: str, records, rank: int | None = None) -> None:
    """The engine's weights at the end of `records`, without a second copy of the model: the base
    weights back in place, then the records replayed (best dev step, rollback)."""
    backend.load_base()
    redo = make(perturb, pieces, backend, replay=True, rank=rank)
    for rec in records:
        replay_step(redo, rec)


def replay(base_model: str, trajectory: str | Path, upto: int | None = None) -> dict[str, torch.Tensor]:
    """Weights after replaying the trajectory on the base model (HF names, the run's dtype)."""
    from .backends.base import hf_dtype

    header, records = read(trajectory)
    pieces = checkpoint_pieces(base_model, header["trainable_names"], hf_dtype(header["dtype"]))
    weights = make(header.get("perturb", "inplace"), pieces, replay=True, rank=header.get("rank"))
    for rec in records:
        if upto is not None and rec.step > upto:
            break
        replay_step(weights, rec)
    return {p.hf_name: p.view for p in pieces}

"""Engine parameter ↔ Hugging Face tensor: which slice of which HF tensor each engine tensor holds.

SGLang fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj` (concatenated along the output dim),
pads the vocabulary rows of embeddings/lm_head, ties lm_head to the embedding, and shards under TP.
We read the HF names and shapes from the checkpoint's safetensors headers (no tensor data), then map each
engine parameter to `Piece`s. `verify` compares every piece with the checkpoint, so a layout SGLang
changes in a later version fails loudly instead of training the wrong rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .piece import BackendError, Piece

# SGLang's Llama-family models declare this as `packed_modules_mapping`; used when a model does not.
DEFAULT_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def checkpoint_files(model_path: str) -> list[Path]:
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise BackendError(f"{model_path}: no *.safetensors files (convert .bin checkpoints with "
                           "transformers' save_pretrained first)")
    return files


def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for f in checkpoint_files(model_path):
        with open(f, "rb") as fh:  # header only: 8-byte length + JSON
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                shapes[name] = tuple(meta["shape"])
    return shapes


def tied_embeddings(model_path: str) -> bool:
    """Whether the model's LM head is its input embedding (one HF tensor, model.embed_tokens.weight, and
    one engine tensor: its piece is listed once, under the embedding's name)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return bool(getattr(cfg, "tie_word_embeddings", False))


def packed_mapping(model: torch.nn.Module) -> dict[str, list[str]]:
    """fused engine module -> HF modules, in concatenation order, as the model class declares it."""
    stacked = getattr(model, "stacked_params_mapping", None)  # [(".qkv_proj", ".q_proj", "q"), ...]
    if stacked:
        out: dict[str, list[str]] = {}
        for fused, part, *_ in stacked:
            out.setdefault(fused.strip("."), []).append(part.strip("."))
        return out
    return getattr(model, "packed_modules_mapping", None) or DEFAULT_PACKED


def engine_pieces(model: torch.nn.Module, hf_shapes: dict[str, tuple[int, ...]],
                  packed: dict[str, list[str]] | None = None, skip: tuple[str, ...] = ()) -> list[Piece]:
    """`packed` overrides the model's fused mapping (for models whose loader renames inline, e.g. BERT);
    engine parameters whose names end with one of `skip` are not weights (never read) and get no piece."""
    packed = packed or packed_mapping(model)
    pieces: list[Piece] = []
    for name, param in model.named_parameters():
        if skip and name.endswith(skip):
            continue
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        module = getattr(module, "base_layer", module)  # a LoRA wrapper: its layer holds the layout
        if name in hf_shapes:
            piece = _one_to_one(name, hf_shapes[name], param, module)
            if piece is not None:  # None: this rank holds only padding of it
                pieces.append(piece)
            continue
        fused = next((k for k in packed if f".{k}." in f".{name}"), None)
        if fused is None:
            raise BackendError(f"engine parameter {name!r} has no Hugging Face tensor in the checkpoint "
                               "and is not a known fused layout; this model is not supported yet")
        parts = [name.replace(fused, sub) for sub in packed[fused]]
        missing = [p for p in parts if p not in hf_shapes]
        if missing:
            raise BackendError(f"fused engine parameter {name!r} expects {missing} in the checkpoint")
        pieces.extend(_fused(parts, hf_shapes, param, module))
    return pieces


def _rank_size(module, group_attr: str = "tp_group") -> tuple[int, int]:
    """This process's (rank, size) in the group a layer is sharded over. SGLang 0.5.23's linear layers
    keep the group (`tp_group`, `kv_tp_group` for QKV's k/v), not a rank; None means unsharded."""
    if hasattr(module, group_attr):
        g = getattr(module, group_attr)
        return (0, 1) if g is None else (g.rank_in_group, g.world_size)
    return getattr(module, "tp_rank", 0), getattr(module, "tp_size", 1)


def _one_to_one(name, shape, param, module) -> Piece:
    tp_rank, tp_size = _rank_size(module)
    if len(shape) != param.dim():
        raise BackendError(f"{name}: engine shape {tuple(param.shape)} vs checkpoint {shape}")
    si = getattr(module, "shard_indices", None)
    if si is not None:  # vocab-parallel embedding / lm_head: real rows first, padding rows never move
        start, end = si.org_vocab_start_index, si.org_vocab_end_index
        return Piece(name, shape, param.data[: end - start], (start,) + (0,) * (len(shape) - 1))
    start = [0] * len(shape)
    view = param.data
    for attr in ("output_dim", "input_dim"):
        d = getattr(param, attr, None)
        if d is not None and tp_size > 1 and param.shape[d] != shape[d]:
            start[d] = tp_rank * param.shape[d]
            # on CPU SGLang pads attention heads to a multiple of tp (e.g. 9 -> 12): a rank's shard is
            # its real HF columns/rows first, then zeros that are never trained
            real = max(0, min(param.shape[d], shape[d] - start[d]))
            if real == 0:
                return None
            view = view.narrow(d, 0, real)
    if any(s + n > full for s, n, full in zip(start, view.shape, shape)):
        raise BackendError(f"{name}: engine shape {tuple(param.shape)} does not fit checkpoint {shape}")
    return Piece(name, shape, view, tuple(start))


def _fused(parts, hf_shapes, param, module) -> list[Piece]:
    tp_rank, tp_size = _rank_size(module)
    kv_rank, kv_size = _rank_size(module, "kv_tp_group") if hasattr(module, "kv_tp_group") else (tp_rank, tp_size)
    replicas = getattr(module, "num_kv_head_replicas", 1)
    # rows each part holds on this rank; SGLang's own figure, which includes CPU head padding
    local = getattr(module, "output_partition_sizes", None)
    out, row = [], 0
    for i, hf in enumerate(parts):
        shape = hf_shapes[hf]
        if i > 0 and hasattr(module, "num_kv_head_replicas"):  # QKV's k/v: own group, maybe replicated
            n = shape[0] * replicas // kv_size   # heads replicated across ranks when tp > num_kv_heads
            if local is not None and len(local) == len(parts):
                n = local[i]
            start = (kv_rank // replicas) * n
        else:
            n = local[i] if local is not None and len(local) == len(parts) else shape[0] // tp_size
            start = tp_rank * n
        real = max(0, min(n, shape[0] - start))  # padded heads (zeros, never trained) follow the real rows
        if real:
            out.append(Piece(hf, shape, param.data[row: row + real], (start,) + (0,) * (len(shape) - 1)))
        row += n
    if row != param.shape[0]:
        raise BackendError(f"fused parameter holds {param.shape[0]} rows but {parts} give {row}")
    return out


def piece_of(tensor: torch.Tensor, piece: Piece) -> torch.Tensor:
    """The slice of a full HF tensor that `piece` holds."""
    idx = tuple(slice(s, s + n) for s, n in zip(piece.hf_start, piece.view.shape))
    return tensor[idx]


def checkpoint_slices(pieces: list[Piece], model_path: str):
    """(piece, its slice of the checkpoint in the piece's dtype) for every piece, one tensor at a time."""
    from safetensors import safe_open

    by_name: dict[str, list[Piece]] = {}
    for p in pieces:
        by_name.setdefault(p.hf_name, []).append(p)
    for f in checkpoint_files(model_path):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name in by_name:
                    full = st.get_tensor(name)
                    for p in by_name[name]:
                        yield p, piece_of(full, p).to(p.view.dtype)


def verify(pieces: list[Piece], model_path: str) -> None:
    """Every piece equals its slice of the checkpoint (in the engine's dtype), else BackendError."""
    bad = [p.hf_name for p, ref in checkpoint_slices(pieces, model_path) if not torch.equal(ref, p.view.cpu())]
    if bad:
        raise BackendError(f"engine weights differ from the checkpoint for {bad[:5]}: SGLang's weight "
                           "layout is not what layout.py expects (version drift?)")


def load_base(pieces: list[Piece], model_path: str) -> None:
    """Copy the checkpoint back into the pieces, in place (pointers kept: CUDA graphs stay valid)."""
    for p, ref in checkpoint_slices(pieces, model_path):
        p.view.copy_(ref)

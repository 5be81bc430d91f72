"""How a step visits θ ± εz: one interface (base.Perturbation), three strategies, one factory.

  layerwise  exact: each weight perturbed only while its own module runs (the default)
  inplace    MeZO's +ε/−2ε/+ε on all weights
  sparse     layerwise with z masked to each matrix's small-magnitude weights (--sparsity s, Sparse MeZO)
  lowrank    rank-r directions U·Vᵀ: LoRA adapters where the engine has them (all of a step's points in
             one batch), merged and copied back elsewhere (the reference); updates land in place
"""
from __future__ import annotations

from .base import NoWeights, ObjectiveError, OneSeedAtATime, Perturbation, finite
from .inplace import InPlace
from .layerwise import Layerwise
from .lowrank import LowRank
from .sparse import Sparse

MODES = ("layerwise", "inplace", "lowrank")


def make(mode: str, pieces, backend=None, *, replay: bool = False, rank: int | None = None,
         sparsity: float = 0.0) -> Perturbation:
    """The `mode` strategy over `pieces`. `backend` gives the capabilities a strategy uses (decoder layers
    and the model for layerwise, LoRA adapters for lowrank, `changed` after a weight change); None: bare
    tensors (offline replay). sparsity > 0: Sparse MeZO (layerwise only)."""
    on_change = backend.changed if backend is not None else (lambda: None)
    if sparsity and mode != "layerwise":
        raise ValueError(f"--sparsity is for --perturb layerwise (got --perturb {mode})")
    if mode == "lowrank":
        if rank is None:
            raise ValueError("--perturb lowrank needs --rank R")
        adapters = backend.adapters() if backend is not None and not replay else None
        tied = adapters is not None and backend.tied_embeddings  # the adapters cover both uses of a tied one
        return LowRank(pieces, rank, adapters, on_change, replay, tied)
    if mode == "layerwise":
        layers = backend.layers if backend is not None else None
        if not layers and not replay:
            raise ValueError("exact layer-wise perturbation needs the model's decoder layer list")
        model = backend.model if backend is not None else None
        if sparsity:
            return Sparse(pieces, layers or [], on_change, replay, model, sparsity)
        return Layerwise(pieces, layers or [], on_change, replay, model)
    if mode == "inplace":
        return InPlace(pieces, on_change)  # deterministic: replay runs the same arithmetic
    raise ValueError(f"unknown perturbation mode {mode!r}: choose one of {MODES}")


__all__ = ["MODES", "make", "Perturbation", "ObjectiveError", "finite", "NoWeights", "OneSeedAtATime",
           "InPlace", "Layerwise", "LowRank", "Sparse"]

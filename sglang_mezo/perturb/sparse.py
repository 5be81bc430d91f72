"""Sparse MeZO (Liu et al., 2024): layer-wise perturbation of only the small-magnitude weights.

With --sparsity s (0 < s < 1), in every trainable matrix (a tensor of two or more dimensions, one whole
HF parameter) z is multiplied by the mask

    m = |w_start| <= q,    q = the k-th smallest |w_start| (float32), k = max(1, round(s·numel))

taken from the weights at the step's start; ties at q are all inside, so more than s of the elements may
move when values repeat (bf16/fp16). 1-D tensors (norms, biases) stay dense. Weight decay still reaches
every element (it is not a z thing). The mask is a function of the weights, so nothing is stored and a
replay recomputes it bit for bit.

Every use of the mask in a step sees the step-start weights: the thresholds q are computed once at
`losses_at` (kept until `flush`); a layer-wise window opens on weights at their step-start values (each
forward restores them bit for bit), so its mask is read there; the updates are deferred to `flush`,
which takes the mask once per chunk from the start values and then applies every seed's update in seed
order — per element the arithmetic of sequential updates, without seed 2 seeing seed 1's change.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..noise import Add, Update
from ..noise_sweep import sweep, sweep_masked
from .layerwise import Layerwise


def masked(piece) -> bool:
    """Sparse MeZO masks matrices; vectors (norms, biases) stay dense."""
    return len(piece.hf_shape) >= 2


def threshold(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """q: the k-th smallest |w| in float32, k = max(1, round(sparsity·numel)) (a 0-dim tensor on w's device)."""
    a = w.detach().float().abs().reshape(-1)
    return torch.kthvalue(a, max(1, round(sparsity * a.numel()))).values


class Sparse(Layerwise):
    name = "sparse"

    def __init__(self, pieces, layers: Sequence[torch.nn.Module], on_change: Callable[[], None] = lambda: None,
                 replay: bool = False, model: torch.nn.Module | None = None, sparsity: float = 0.5):
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
            raise ValueError(f"--sparsity must be in (0, 1) for sparse perturbation, got {sparsity!r}")
        for p in pieces:
            if masked(p) and tuple(p.view.shape) != tuple(p.hf_shape):
                raise ValueError(f"--sparsity: {p.hf_name} is held in parts (rows/columns "
                                 f"{list(p.hf_start)}+{list(p.view.shape)} of {list(p.hf_shape)}: tensor "
                                 "parallelism), so a part's quantile would depend on the layout; sparse "
                                 "MeZO needs every matrix whole (--tp-size 1)")
        super().__init__(pieces, layers, on_change, replay, model)
        self.sparsity = sparsity
        self._q: dict | None = None               # hf_name → q from the step-start weights (until flush)
        self._updates: list[tuple[int, list]] = []   # (seed, [Update]) deferred to flush, in seed order

    def _thresholds(self) -> dict:
        return {p.hf_name: threshold(p.view, self.sparsity) for p in self.pieces if masked(p)}

    def losses_at(self, points, loss):
        self._q, self._updates = self._thresholds(), []
        try:
            return super().losses_at(points, loss)
        except BaseException:   # the step is aborted (weights restored): no thresholds outlive it
            self._q = None
            raise

    def losses(self, seed: int, scales: Sequence[float], loss: Callable[[], float]) -> list[float]:
        if self._q is not None:     # inside a step (losses_at)
            return super().losses(seed, scales, loss)
        self._q = self._thresholds()   # a direct call (a replica's forward half): the weights of now
        try:
            return super().losses(seed, scales, loss)
        finally:
            self._q = None

    def _perturb(self, pieces, seed: int, scale: float) -> None:
        dense, sparse = [p for p in pieces if not masked(p)], [p for p in pieces if masked(p)]
        if dense:
            sweep(dense, seed, [Add(scale)])
        if sparse:
            sweep_masked(sparse, [(seed, [Add(scale)])], self._q)

    def update(self, seed: int, coef: float, decay: float) -> None:
        if coef or decay:
            self._updates.append((seed, [Update(coef, decay)]))

    def flush(self) -> None:
        updates, q = self._updates, self._q
        self._updates, self._q = [], None
        if not updates:
            return
        if q is None:   # updates without losses_at: the weights are still the step's start
            q = self._thresholds()
        dense, sparse = [p for p in self.pieces if not masked(p)], [p for p in self.pieces if masked(p)]
        for seed, ops in updates:
            sweep(dense, seed, ops)
        sweep_masked(sparse, updates, q)
        self.on_change()

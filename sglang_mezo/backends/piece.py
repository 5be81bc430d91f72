"""The two types every backend module shares (a leaf: base.py and layout.py both import it)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


class BackendError(ValueError):
    """A model or request this backend cannot serve; the message names the problem."""


@dataclass
class Piece:
    """A view into an engine tensor that holds `hf_name[hf_start[0]:..., hf_start[1]:...]` (view's shape)."""
    hf_name: str
    hf_shape: tuple[int, ...]
    view: torch.Tensor
    hf_start: tuple[int, ...]

    @property
    def decays(self) -> bool:
        # MeZO skips weight decay for biases and layer norms.
        return not (self.hf_name.endswith("bias") or "norm" in self.hf_name)

"""Exact layer-wise perturbation (the default).

Each weight is perturbed only while the module that reads it runs — a decoder layer just before it runs,
copied back from a scratch buffer right after (forward hooks); the embedding, final norm and lm_head
likewise around their own modules (a tied embedding gets two such windows: the lookup and the logits).
Weights come back bit-identical in every dtype; the one scratch buffer is as large as the largest window
(a layer or the largest single tensor), never a model copy; pointers never change.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, NamedTuple, Sequence

import torch

from ..noise import Add, Update
from ..noise_sweep import sweep
from .base import OneSeedAtATime, finite


class Window(NamedTuple):
    """Pieces perturbed only while `module` runs: saved and perturbed by its forward pre-hook, restored
    bit for bit by its forward hook."""
    module: torch.nn.Module
    pieces: list


class Layerwise(OneSeedAtATime):
    name = "layerwise"

    def __init__(self, pieces, layers: Sequence[torch.nn.Module], on_change: Callable[[], None] = lambda: None,
                 replay: bool = False, model: torch.nn.Module | None = None):
        self.pieces, self.on_change, self.replay = pieces, on_change, replay
        # Windows: (module, pieces perturbed only while that module runs). A decoder layer is a window for
        # its own weights; outside the layers, the module owning a weight (embedding, final norm, lm_head)
        # is its window, and SGLang's logits processor is a second window for lm_head's weight (it reads
        # lm_head.weight without calling lm_head). Anything else is perturbed for the whole forward.
        users: dict[int, list[torch.nn.Module]] = {}
        for layer in layers:
            for prm in layer.parameters():
                users[prm.untyped_storage().data_ptr()] = [layer]
        if model is not None:
            layer_ids = {id(l) for l in layers}
            inside = {id(x) for l in layers for x in l.modules()}
            for m in model.modules():
                if id(m) in inside or any(id(x) in layer_ids for x in m.modules()):
                    continue  # a layer, inside one, or an ancestor of layers: not a window of its own
                for prm in m._parameters.values():
                    if prm is not None:
                        users.setdefault(prm.untyped_storage().data_ptr(), []).append(m)
            lm_head, lp = getattr(model, "lm_head", None), getattr(model, "logits_processor", None)
            if isinstance(lm_head, torch.nn.Module) and isinstance(lp, torch.nn.Module):
                for prm in lm_head.parameters():
                    users.setdefault(prm.untyped_storage().data_ptr(), []).append(lp)
        windows: dict[int, Window] = {}
        self.outside: list = []
        for p in pieces:
            mods = users.get(p.view.untyped_storage().data_ptr())
            if not mods:
                self.outside.append(p)
            for m in mods or []:
                windows.setdefault(id(m), Window(m, [])).pieces.append(p)
        self.windows = list(windows.values())
        self._scratch: dict = {}
        self._open: tuple[Window, ExitStack] | None = None   # the window open now, and its restore

    def _buf(self, tag, tensors) -> torch.Tensor:
        n = sum(t.numel() for t in tensors)
        dev, dt = tensors[0].device, tensors[0].dtype
        buf = self._scratch.get((tag, dev, dt))
        if buf is None or buf.numel() < n:
            buf = self._scratch[(tag, dev, dt)] = torch.empty(n, dtype=dt, device=dev)
        return buf

    @staticmethod
    def _tensors(pieces) -> list[torch.Tensor]:
        return [p.view for p in pieces]

    @contextmanager
    def _saved(self, pieces, tag):
        """Perturbable pieces copied to scratch on entry and copied back (bit-exact) on exit."""
        ts = self._tensors(pieces)
        if not ts:
            yield
            return
        groups: dict = {}
        for t in ts:
            groups.setdefault(t.dtype, []).append(t)
        saved = []
        for dt, group in groups.items():
            buf, o = self._buf(tag, group), 0
            for t in group:
                buf[o: o + t.numel()].view_as(t).copy_(t)
                saved.append((t, buf, o))
                o += t.numel()
        try:
            yield
        finally:
            for t, buf, o in saved:
                t.copy_(buf[o: o + t.numel()].view_as(t))

    def losses(self, seed: int, scales: Sequence[float], loss: Callable[[], float]) -> list[float]:
        if self.replay:  # perturbations leave no trace: nothing to redo
            return [finite(loss()) for _ in scales]
        return [self._at(seed, s, loss) for s in scales]

    def _enter(self, window: Window, seed: int, scale: float) -> None:
        # Invariant: at most one window is open at a time. Every window saves its weights in the same
        # scratch buffer ("window"), so a window opened inside another would overwrite the saved copy and
        # the restore would no longer be exact. Decoder layers run one after another and the other
        # windows are modules outside them; a model where one window's module runs inside another's is
        # refused here instead of silently corrupting the weights.
        if self._open is not None:
            raise RuntimeError(f"layer-wise perturbation: window {type(window.module).__name__} opened "
                               f"inside window {type(self._open[0].module).__name__}; windows share one "
                               "scratch buffer and must not nest "
                               "(use --perturb inplace for this model)")
        restore = ExitStack()
        self._open = (window, restore)
        restore.enter_context(self._saved(window.pieces, "window"))
        self._perturb(window.pieces, seed, scale)

    def _perturb(self, pieces, seed: int, scale: float) -> None:
        """pieces += scale·z(seed), on weights at their step-start values (sparse.py masks z here)."""
        sweep(pieces, seed, [Add(scale)])

    def _exit(self) -> None:
        if self._open is not None:
            restore = self._open[1]
            self._open = None
            restore.close()

    def _at(self, seed: int, scale: float, loss: Callable[[], float]) -> float:
        if scale == 0:
            return finite(loss())
        with ExitStack() as stack:  # unwinds in reverse: weights restored, on_change, hooks removed
            for w in self.windows:
                stack.callback(w.module.register_forward_pre_hook(
                    lambda m, args, w=w: self._enter(w, seed, scale)).remove)
                stack.callback(w.module.register_forward_hook(lambda m, args, out: self._exit()).remove)
            stack.callback(self.on_change)
            stack.callback(self._exit)  # a forward that raised inside a window: its weights go back too
            stack.enter_context(self._saved(self.outside, "forward"))
            self._perturb(self.outside, seed, scale)
            self.on_change()
            return finite(loss())

    def update(self, seed: int, coef: float, decay: float) -> None:
        if coef or decay:
            sweep(self.pieces, seed, [Update(coef, decay)])
            self.on_change()

    def flush(self) -> None:
        pass

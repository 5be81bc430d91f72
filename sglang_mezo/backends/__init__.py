"""Engine adapters behind one interface (base.Backend): `sglang` (in-process ModelRunner) and `hf`."""
from __future__ import annotations

from .base import Backend, BackendError, Piece, ScoreRequest, ScoreResult, select_trainable

BACKENDS = ("sglang", "hf")


def make_backend(name: str, model_path: str, dtype: str = "float32", **kw) -> Backend:
    from .encoder import is_encoder

    if is_encoder(model_path):  # BERT / RoBERTa / XLM-R classifiers: class logits instead of token log-probs
        return make_encoder_backend(name, model_path, dtype, **kw)
    if name == "sglang":
        from .sglang_runner import SGLangBackend

        return SGLangBackend(model_path, dtype, **kw)
    if name == "hf":
        from .hf import HFBackend

        return HFBackend(model_path, dtype, **kw)
    raise BackendError(f"unknown backend {name!r}: choose one of {BACKENDS}")


def make_encoder_backend(name: str, model_path: str, dtype: str = "float32", **kw) -> Backend:
    if name == "sglang":
        from .encoder import SGLangEncoderBackend

        return SGLangEncoderBackend(model_path, dtype, **kw)
    if name == "hf":
        from .hf_encoder import HFEncoderBackend

        return HFEncoderBackend(model_path, dtype, **kw)
    raise BackendError(f"unknown backend {name!r}: choose one of {BACKENDS}")


def attach_backend(runner, tokenizer, model_path: str, verify_layout: bool = False, group=None) -> Backend:
    """The backend over a ModelRunner SGLang already built (the serving plugin, in a scheduler): class
    logits for an encoder classifier, token log-probs and generation otherwise."""
    from .encoder import is_encoder, unsupported

    why = unsupported(model_path)  # SGLang may serve it (a Llama reward model); MeZO cannot train it
    if why:
        raise BackendError(why)
    if is_encoder(model_path):
        from .encoder import SGLangEncoderBackend

        return SGLangEncoderBackend.attach(runner, tokenizer, model_path, verify_layout, group=group)
    from .sglang_runner import SGLangBackend

    return SGLangBackend.attach(runner, tokenizer, model_path, verify_layout, group=group)


def register_models() -> None:
    """Model classes we add to SGLang's registry (the mean-pooled BERT classifier), in this process."""
    from .mean_pool_sglang import register

    register()


__all__ = ["Backend", "BackendError", "Piece", "ScoreRequest", "ScoreResult", "select_trainable",
           "make_backend", "attach_backend", "register_models", "BACKENDS"]

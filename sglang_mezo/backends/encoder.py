"""Encoder classifiers (BERT, RoBERTa, XLM-RoBERTa `*ForSequenceClassification`) on SGLang's runner: class logits.

SGLang serves these as embedding models (`/classify`): one prefill, its own pooler and classifier
(`CrossEncodingPooler`), `[B, num_labels]` out. MeZO needs nothing else from the engine: the objective
(objectives/class_logits.py) reads the logits. Weights are tied to HF names like every backend's; SGLang's
bert.py stacks `self.query/key/value` into `self_attn.qkv_proj` (renaming `self` → `self_attn`), which
`ENCODER_PACKED` maps back. A headless `BertModel` gets its head from models.encoder_classifier (an HF
`BertForSequenceClassification` folder), so base weights, export and replay need no special case.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from . import layout, mean_pool_sglang
from .base import Backend, BackendError, ScoreRequest
from .mean_pool_hf import ARCH as MEAN_POOL_ARCH
from .sglang_runner import SGLangBackend

# the mean-pooled BERT head (mean_pool_*.py) is ours; the others are SGLang's and transformers' own
CLASSIFIER_ARCHS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
                    "XLMRobertaForSequenceClassification", MEAN_POOL_ARCH)
HEADLESS_ARCHS = ("BertModel", "RobertaModel", "XLMRobertaModel")
ENCODER_PACKED = {"self_attn.qkv_proj": ["self.query", "self.key", "self.value"]}
# RoBERTa and XLM-R are one architecture under two names: the same modules and HF weight names
# (`roberta.*`, `classifier.dense`, `classifier.out_proj`), positions counted from padding_idx + 1 in both
# (SGLang's roberta.py computes them from the token ids as transformers does). SGLang 0.5.23 registers
# only the XLM-R names, so a RoBERTa folder is built as its XLM-R twin through SGLang's own config
# override (`architectures` in json_model_override_args): the registry, the embedding/cross-encoder
# routing and /classify all see the class SGLang has. The folder itself keeps its RoBERTa name.
SGLANG_ARCH = {"RobertaForSequenceClassification": "XLMRobertaForSequenceClassification",
               "RobertaModel": "XLMRobertaModel"}
# names transformers gives encoder checkpoints (a head on an encoder); any such architecture not accepted
# above is refused by name, with the accepted list, before a run reads the folder as a decoder
ENCODER_HEADS = ("ForSequenceClassification", "ForMaskedLM", "ForTokenClassification", "ForQuestionAnswering",
                 "ForMultipleChoice", "ForPreTraining", "ForNextSentencePrediction")


def architectures(model_path: str) -> list[str]:
    cfg = Path(model_path) / "config.json"
    return list(json.loads(cfg.read_text()).get("architectures") or []) if cfg.is_file() else []


def is_encoder(model_path: str) -> bool:
    return any(a in CLASSIFIER_ARCHS + HEADLESS_ARCHS for a in architectures(model_path))


def unsupported(model_path: str) -> str | None:
    """Why MeZO cannot train this folder's architecture (None when it can, or cannot tell): an encoder
    or sequence-classification architecture that is not one of the accepted encoders."""
    archs = architectures(model_path)
    if not archs or any(a in CLASSIFIER_ARCHS + HEADLESS_ARCHS for a in archs):
        return None
    odd = [a for a in archs if a.endswith(ENCODER_HEADS) or (a.endswith("Model") and _masked_lm_family(model_path))]
    if not odd:
        return None  # a decoder (or something SGLang itself will name when it cannot build it)
    return (f"{model_path} is a {odd[0]}, which sglang-mezo does not train. Encoder classifiers accepted: "
            f"{', '.join(CLASSIFIER_ARCHS)}; headless encoders, given a seeded head with --num-labels N: "
            f"{', '.join(HEADLESS_ARCHS)}. Decoders: a causal LM SGLang serves (*ForCausalLM), trained on "
            "token log-probs")


def _masked_lm_family(model_path: str) -> bool:
    """A headless `*Model` of an encoder family (transformers has a masked-LM head for its model_type):
    DistilBertModel, AlbertModel, ... — not a decoder base such as Qwen3Model or ChatGLMModel."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = json.loads((Path(model_path) / "config.json").read_text()).get("model_type")
    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def max_tokens(cfg: dict) -> int:
    """The longest input the position table of this config.json holds: RoBERTa / XLM-R count positions
    from padding_idx + 1 (roberta-base: 514 rows, 512 tokens), BERT from 0. SGLang's context length is
    the raw row count."""
    n = cfg["max_position_embeddings"]
    if cfg.get("model_type") in ("roberta", "xlm-roberta"):
        n -= (cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else 1) + 1
    return n


def sglang_overrides(cfg: dict) -> dict:
    """json_model_override_args SGLang needs to build this encoder folder as we read it.

    - `architectures`: a RoBERTa folder built as its XLM-R twin (SGLANG_ARCH).
    - `position_embedding_type` when the folder lacks it (transformers 5 stopped writing it; SGLang's
      bert.py and roberta.py read it and fail to build the model without it)."""
    out = {} if "position_embedding_type" in cfg else {"position_embedding_type": "absolute"}
    archs = list(cfg.get("architectures") or [])
    if any(a in SGLANG_ARCH for a in archs):
        out["architectures"] = [SGLANG_ARCH.get(a, a) for a in archs]
    return out


def check_classifier(model_path: str) -> int:
    """num_labels of an encoder classifier folder; BackendError for a headless encoder."""
    archs = architectures(model_path)
    if not any(a in CLASSIFIER_ARCHS for a in archs):
        raise BackendError(f"{model_path} is a {archs} without a classification head: pass --num-labels N "
                           "(a seeded head is added) or give a *ForSequenceClassification folder")
    n = len(json.loads((Path(model_path) / "config.json").read_text()).get("id2label") or {}) or 2
    if n < 2:
        raise BackendError(f"{model_path} has a {n}-output head (a regression/reranker score): MeZO's "
                           "classification objectives need >= 2 classes")
    return n


def serve_argv(argv: list[str]) -> list[str]:
    """sglang.launch_server's argv with what `sglang-mezo serve` needs for an encoder (unchanged for others).

    - `--disable-radix-cache`: measured with SGLang 0.5.23 on CPU, a served BertForSequenceClassification
      answers /classify with wrong logits while the radix cache is on (text and token-id requests for the
      same tokens disagree with each other and with transformers); off, they equal transformers' to 1e-6.
      A classifier's one-shot prefills gain nothing from prefix reuse anyway.
    - `--json-model-override-args` with `sglang_overrides` (a RoBERTa folder built as XLM-R, the
      `position_embedding_type` transformers 5 no longer writes), merged into the operator's own
      overrides, whose keys win.
    - `--context-length` for RoBERTa / XLM-R: SGLang takes max_position_embeddings as the context length,
      two more than the position table holds (max_tokens), and a /classify that indexes past the table
      kills the scheduler (IndexError; measured on 0.5.23 CPU). SGLang refuses an input of >= context
      length tokens, or with --allow-auto-truncate cuts it to context length tokens: max_tokens + 1, or
      max_tokens when it truncates, lets exactly the inputs the table holds through.
    """
    def value(flags):
        for i, a in enumerate(argv):
            name, eq, v = a.partition("=")
            if name in flags:
                return i, (v if eq else argv[i + 1] if i + 1 < len(argv) else None), bool(eq)
        return None, None, False

    _, path, _ = value(("--model-path", "--model"))
    if not path or not is_encoder(path):
        return list(argv)
    argv = list(argv)
    if "--disable-radix-cache" not in argv:
        argv.append("--disable-radix-cache")
    cfg = json.loads((Path(path) / "config.json").read_text())
    i, given, eq = value(("--json-model-override-args",))
    merged = {**sglang_overrides(cfg), **json.loads(given or "{}")}
    if i is None:
        argv += ["--json-model-override-args", json.dumps(merged)] if merged else []
    elif eq:
        argv[i] = "--json-model-override-args=" + json.dumps(merged)
    else:
        argv[i + 1] = json.dumps(merged)
    if value(("--context-length",))[0] is None and cfg.get("model_type") in ("roberta", "xlm-roberta"):
        argv += ["--context-length", str(max_tokens(cfg) + (0 if "--allow-auto-truncate" in argv else 1))]
    return argv


class EncoderBackend(Backend):
    """What an encoder adds to the interface: class logits. Token log-probs do not exist here."""
    num_labels: int
    max_len: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """The tokenizer's framing ([CLS] text [SEP]; RoBERTa / XLM-R <s> text </s>), cut to max_tokens."""
        return [self.tokenizer(t, truncation=True, max_length=self.max_len)["input_ids"] for t in texts]

    def classify(self, ids: Sequence[list[int]]) -> torch.Tensor:
        """[B, num_labels] raw class logits (float32, CPU) for the token ids of each input."""
        for i, x in enumerate(ids):
            if not x or len(x) > self.max_len or not all(0 <= t < self.vocab_size for t in x):
                raise BackendError(f"input {i}: needs 1..{self.max_len} token ids within the vocabulary "
                                   f"(size {self.vocab_size})")
        return torch.cat([self._classify(chunk) for chunk in _batches(ids, self.max_batch_tokens)])

    def score(self, requests):
        raise BackendError(f"{self.model_path} is an encoder classifier: it gives class logits, not token "
                           "log-probs; use the objectives ce or accuracy (over class logits)")

    def _generate(self, ids, p, sampler, stops):
        raise BackendError(f"{self.model_path} is an encoder classifier: it cannot generate text")


def _batches(ids, budget):
    chunk, n = [], 0
    for x in ids:
        if chunk and n + len(x) > budget:
            yield chunk
            chunk, n = [], 0
        chunk.append(x)
        n += len(x)
    if chunk:
        yield chunk


class SGLangEncoderBackend(EncoderBackend, SGLangBackend):
    name = "sglang"

    def __init__(self, model_path: str, dtype: str = "float32", **kw):
        self.num_labels = check_classifier(model_path)
        cfg = json.loads((Path(model_path) / "config.json").read_text())
        # what SGLang needs to build the folder (sglang_overrides); the sentence-transformers activation
        # (e.g. Sigmoid) would hide the raw logits from the objective.
        override = {"sbert_ce_default_activation_function": None, **sglang_overrides(cfg)}
        sa = {"json_model_override_args": json.dumps(override), **kw.pop("server_args", {})}
        mean_pool_sglang.register()
        super().__init__(model_path, dtype, server_args=sa, **kw)

    def _attach(self, runner, tokenizer, model_path, verify_layout, max_total_tokens):
        self.num_labels = check_classifier(model_path)  # also reached by attach() in a serving scheduler
        self.runner, self.tokenizer = runner, tokenizer
        self.model = runner.model
        self.model_path = model_path
        self.dtype = next(self.model.parameters()).dtype
        self.vocab_size = runner.model_config.hf_config.vocab_size
        self.max_len = min(runner.model_config.context_len, max_tokens(runner.model_config.hf_config.to_dict()))
        self.max_tokens = self.max_batch_tokens = min(max_total_tokens, runner.max_total_num_tokens) - 8
        self.max_reqs = max(1, runner.req_to_token_pool.size - 1)
        archs = list(runner.model_config.hf_config.architectures or [])
        if archs[:1] == [MEAN_POOL_ARCH] and type(self.model).__name__ != MEAN_POOL_ARCH:
            raise BackendError(f"{model_path} is a mean-pooled classifier but SGLang built "
                               f"{type(self.model).__name__} (CLS pooler): register the model class first "
                               "(backends/mean_pool_sglang.register; the sglang_mezo plugin does it)")
        act = getattr(getattr(self.model, "pooler", None), "default_activation_function", None)
        if act is not None and not isinstance(act, torch.nn.Identity):
            raise BackendError(f"SGLang applies {act} to this model's logits; the objective needs raw logits: "
                               "serve it with --json-model-override-args "
                               "'{\"sbert_ce_default_activation_function\": null}'")
        # SGLang allocates embeddings.position_ids as a Parameter but takes positions from the batch
        self._pieces = layout.engine_pieces(self.model, layout.checkpoint_shapes(model_path), ENCODER_PACKED,
                                            skip=("position_ids",))
        if verify_layout:
            layout.verify(self._pieces, model_path)

    @torch.no_grad()
    def _classify(self, ids) -> torch.Tensor:
        from array import array

        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        out = []
        for chunk in self._chunks([ScoreRequest(x) for x in ids]):  # KV pool and request slots
            reqs = []
            for i, r in enumerate(chunk):
                req = Req(rid=str(i), origin_input_text="", origin_input_ids=array("q", r.ids),
                          sampling_params=SamplingParams(temperature=0, max_new_tokens=0))
                req.full_untruncated_fill_ids = req.origin_input_ids
                req.logprob_start_len = -1
                req.extend_end = len(r.ids)
                reqs.append(req)
            pooled, _ = self._prefill(reqs)
            logits = pooled.embeddings
            out.append(logits.reshape(len(reqs), -1).float().cpu())  # copied before the next forward
            self.runner.req_to_token_pool.clear()
            self.runner.token_to_kv_pool_allocator.clear()
        return torch.cat(out)

"""Encoder classifiers (BERT, XLM-RoBERTa `*ForSequenceClassification`) on SGLang's runner: class logits.

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
CLASSIFIER_ARCHS = ("BertForSequenceClassification", "XLMRobertaForSequenceClassification", MEAN_POOL_ARCH)
HEADLESS_ARCHS = ("BertModel", "XLMRobertaModel")
ENCODER_PACKED = {"self_attn.qkv_proj": ["self.query", "self.key", "self.value"]}


def architectures(model_path: str) -> list[str]:
    cfg = Path(model_path) / "config.json"
    return list(json.loads(cfg.read_text()).get("architectures") or []) if cfg.is_file() else []


def is_encoder(model_path: str) -> bool:
    return any(a in CLASSIFIER_ARCHS + HEADLESS_ARCHS for a in architectures(model_path))


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


def serve_flags(argv: list[str]) -> list[str]:
    """sglang.launch_server flags `sglang-mezo serve` adds for an encoder classifier (none for others).

    - `--disable-radix-cache`: measured with SGLang 0.5.23 on CPU, a served BertForSequenceClassification
      answers /classify with wrong logits while the radix cache is on (text and token-id requests for the
      same tokens disagree with each other and with transformers); off, they equal transformers' to 1e-6.
      A classifier's one-shot prefills gain nothing from prefix reuse anyway.
    - `position_embedding_type` through --json-model-override-args when the folder lacks it (transformers 5
      stopped writing it; SGLang's bert.py reads it and fails to build the model without it).
    """
    path = next((a.split("=", 1)[1] if "=" in a else argv[i + 1] for i, a in enumerate(argv)
                 if a.split("=", 1)[0] in ("--model-path", "--model") and ("=" in a or i + 1 < len(argv))), None)
    if not path or not is_encoder(path):
        return []
    extra = [] if "--disable-radix-cache" in argv else ["--disable-radix-cache"]
    cfg = json.loads((Path(path) / "config.json").read_text())
    if "position_embedding_type" not in cfg and not any(a.startswith("--json-model-override-args") for a in argv):
        extra += ["--json-model-override-args", json.dumps({"position_embedding_type": "absolute"})]
    return extra


class EncoderBackend(Backend):
    """What an encoder adds to the interface: class logits. Token log-probs do not exist here."""
    num_labels: int
    max_len: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """[CLS] text [SEP] ids, cut to the model's position limit."""
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
        # transformers 5 no longer writes position_embedding_type, which SGLang's bert.py reads; the
        # sentence-transformers activation (e.g. Sigmoid) would hide the raw logits from the objective.
        override = {"sbert_ce_default_activation_function": None,
                    "position_embedding_type": cfg.get("position_embedding_type", "absolute")}
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
        self.max_len = min(runner.model_config.context_len, runner.model_config.hf_config.max_position_embeddings)
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

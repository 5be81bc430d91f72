"""transformers reference for encoder classifiers (backends/encoder.py): the same class logits, padded."""
from __future__ import annotations

import torch

from .base import Piece, hf_dtype
from .encoder import MEAN_POOL_ARCH, EncoderBackend, architectures, check_classifier, max_tokens


class HFEncoderBackend(EncoderBackend):
    """transformers' AutoModelForSequenceClassification: the reference (right-padded batches)."""
    name = "hf"

    def __init__(self, model_path: str, dtype: str = "float32", *, device: str | None = None,
                 batch_tokens: int = 8192):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.num_labels = check_classifier(model_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = hf_dtype(dtype)
        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        cls = AutoModelForSequenceClassification
        if architectures(model_path)[:1] == [MEAN_POOL_ARCH]:  # ours, not transformers' CLS-pooled class
            from .mean_pool_hf import BertMeanPoolForSequenceClassification as cls
        self.model = cls.from_pretrained(model_path, dtype=self.dtype)
        self.model = self.model.to(self.device).eval()
        self.vocab_size = self.model.config.vocab_size
        self.max_len = max_tokens(self.model.config.to_dict())  # RoBERTa: 2 rows fewer than the table
        self.max_batch_tokens = batch_tokens
        self._pieces = [Piece(n, tuple(p.shape), p.data, (0,) * p.dim()) for n, p in self.model.named_parameters()]

    @property
    def pieces(self) -> list[Piece]:
        return self._pieces

    @torch.no_grad()
    def _classify(self, ids) -> torch.Tensor:
        L = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id or 0
        x = torch.full((len(ids), L), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), L, dtype=torch.long)
        for b, t in enumerate(ids):
            x[b, : len(t)] = torch.tensor(t)
            mask[b, : len(t)] = 1
        return self.model(input_ids=x.to(self.device), attention_mask=mask.to(self.device)).logits.float().cpu()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        return {p.hf_name: p.view.detach().cpu().clone() for p in self._pieces}

"""SGLang side of the mean-pooled BERT classifier (the transformers side and the why: mean_pool_hf.py).

SGLang's `BertForSequenceClassification` runs its `CrossEncodingPooler` over BERT's CLS pooler. This
class is that model with the CLS pooler swapped for the per-sequence mean of the token states, still
through SGLang's own `CrossEncodingPooler` and classifier (so `/classify` serves it like any
cross-encoder). The mean is taken per sequence, not with `PoolingType.MEAN`'s cumulative sum over the
whole ragged batch: that subtracts large running sums, and its rounding would depend on the other
sequences in the batch (a sequence's logits must not).

It reaches SGLang through its model registry (`register()`), from our in-process runner and from the
serving plugin in every scheduler process; SGLang itself is not edited. The folder lists this
architecture first and `BertForSequenceClassification` second, so SGLang treats it as the
non-generative cross-encoder it is; backends/encoder.py checks that SGLang really built this class.
"""
from __future__ import annotations

import torch

from .mean_pool_hf import ARCH


class _MeanPool(torch.nn.Module):
    """CrossEncodingPooler's per-sequence pooler: [L, H] states of one sequence -> [H]."""

    def forward(self, hidden_states: torch.Tensor, forward_batch) -> torch.Tensor:
        return hidden_states.mean(dim=0)


def model_class():
    from sglang.srt.layers.pooler import CrossEncodingPooler
    from sglang.srt.models.bert import BertForSequenceClassification

    class BertMeanPoolForSequenceClassification(BertForSequenceClassification):
        def __init__(self, *, config, quant_config=None, prefix: str = ""):
            super().__init__(config=config, quant_config=quant_config, prefix=prefix)
            # bert(...) returns the token states (use_bert_pooler); the CLS pooler's weights are not
            # in the checkpoint and must not be parameters MeZO would perturb
            self.bert.pooler = None
            self.pooler = CrossEncodingPooler(config, self.classifier, _MeanPool())

    BertMeanPoolForSequenceClassification.__name__ = ARCH
    return BertMeanPoolForSequenceClassification


def register() -> None:
    """Add the class to SGLang's model registry in this process (idempotent)."""
    from sglang.srt.models.registry import ModelRegistry

    if ARCH not in ModelRegistry.models:
        ModelRegistry.models[ARCH] = model_class()

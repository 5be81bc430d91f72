"""transformers side of the mean-pooled BERT classifier: logits = classifier(mean of the last hidden states).

transformers' `BertForSequenceClassification` classifies tanh(dense(h[CLS])) — BERT's pretraining pooler.
Sentence encoders such as all-MiniLM-L6-v2 are trained on the *mean* of the token states instead
(sentence-transformers' `1_Pooling/config.json`: `pooling_mode_mean_tokens`), and a linear head over their
CLS pooler starts from features that barely separate SST-2 (logistic regression on all-MiniLM-L6-v2's
frozen features, 1,000 examples: 63.8 % on the CLS pooler, 77.4 % on the mean; benchmarks/encoder_sst2.py). This class is the head over the mean: every token of the sequence, [CLS] and
[SEP] included, weighted equally (as sentence-transformers and SGLang's per-sequence pooling do), no
normalisation, no dropout at eval. Weights keep HF `BertForSequenceClassification`'s names (`bert.*`,
`classifier.*`) without `bert.pooler.*`, which the mean does not read.

This file imports only torch and transformers: models.encoder_classifier copies it into the folder it
builds (with `auto_map`), so `AutoModelForSequenceClassification.from_pretrained(DIR,
trust_remote_code=True)` gives the same logits without sglang_mezo installed. Its SGLang twin is
mean_pool_sglang.py.
"""
from __future__ import annotations

import torch
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

ARCH = "BertMeanPoolForSequenceClassification"


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, H] states, [B, L] 0/1 mask -> [B, H]: the mean over each sequence's own tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class BertMeanPoolForSequenceClassification(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs):
        if attention_mask is None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            attention_mask = torch.ones(shape, dtype=torch.long, device=self.device)
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=position_ids, inputs_embeds=inputs_embeds).last_hidden_state
        logits = self.classifier(masked_mean(h, attention_mask))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)

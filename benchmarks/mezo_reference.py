"""A faithful re-implementation of MeZO's own step (princeton-nlp/MeZO, large_models/, commit 7b2471e), for
comparing against. Nothing here is used by sglang_mezo; it exists so the benchmarks time and count what
MeZO's code does, not a tidied version of it.

From large_models/trainer.py, class OurTrainer:
  * zo_perturb_parameters(random_seed=None, scaling_factor=1): `torch.manual_seed(seed)` (the *global*
    generator), then for each (name, param) in named_parameters_to_optim, in `named_parameters()` order:
        z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
        param.data = param.data + scaling_factor * z * self.args.zo_eps        # rebinds: a new tensor
  * zo_forward(model, inputs): model.eval(); under torch.inference_mode() the loss of compute_loss.
  * zo_step(model, inputs): named_parameters_to_optim = params with requires_grad;
        zo_random_seed = np.random.randint(1000000000)
        perturb(+1) -> loss1; perturb(-2) -> loss2; projected_grad = ((loss1 - loss2) / (2 * zo_eps)).item()
        perturb(+1)   (reset to the parameters at the start of the step); return loss1
  * zo_update(model): torch.manual_seed(zo_random_seed); for each param, regenerate z (a fourth time) and
        if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
            param.data = param.data - lr * (projected_grad * z + weight_decay * param.data)
        else:
            param.data = param.data - lr * (projected_grad * z)
    (the name test is MeZO's, written for OPT; it is kept as is)

The loss, from large_models/run.py (Framework.train, `--train_as_classification`, as mezo.sh runs SST-2) and
large_models/utils.py (encode_prompt, DataCollatorWithPaddingAndNesting, forward_wrap_with_option_len):
  * every example becomes one sequence per candidate, `tokenizer.encode(prompt + candidate)`, with
    option_len = len(encode(prompt + candidate)) - len(encode(prompt));
  * the sequences of a batch are padded on the LEFT (run.py sets tokenizer.padding_side = "left") to a
    multiple of 8 (pad_to_multiple_of=8) and run in one forward with the attention mask;
  * full logits; shift; log_softmax over the vocabulary at every position; the log-probs of the option
    tokens (the last option_len labels) averaged per sequence; CrossEntropy over each example's candidates.
And MeZO's evaluation (run.py Framework.evaluate / one_step_pred / forward): one example at a time, one
forward of [1, L] per candidate, full logits, log_softmax, mean log-prob of the option tokens, argmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MeZOArgs:
    zo_eps: float = 1e-3
    learning_rate: float = 1e-6      # MeZO's scripts use a constant LR scheduler
    weight_decay: float = 0.0


class MeZOReference:
    """OurTrainer's MeZO functions, on a transformers model (no Trainer around it)."""

    def __init__(self, model: torch.nn.Module, args: MeZOArgs):
        self.model, self.args = model, args
        self.named_parameters_to_optim: list = []
        self.zo_random_seed = 0
        self.projected_grad = 0.0

    def _get_learning_rate(self) -> float:
        return self.args.learning_rate

    # trainer.py: OurTrainer.zo_perturb_parameters
    def zo_perturb_parameters(self, random_seed=None, scaling_factor=1):
        torch.manual_seed(random_seed if random_seed is not None else self.zo_random_seed)
        for name, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * self.args.zo_eps

    # trainer.py: OurTrainer.zo_forward (compute_loss -> the wrapped forward's loss)
    def zo_forward(self, model, inputs) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            loss = classification_loss(model, inputs)
        return loss.detach()

    # trainer.py: OurTrainer.zo_step
    def zo_step(self, model, inputs) -> torch.Tensor:
        self.named_parameters_to_optim = []
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.named_parameters_to_optim.append((name, param))
        self.zo_random_seed = np.random.randint(1000000000)
        self.zo_perturb_parameters(scaling_factor=1)
        loss1 = self.zo_forward(model, inputs)
        self.zo_perturb_parameters(scaling_factor=-2)
        loss2 = self.zo_forward(model, inputs)
        self.projected_grad = ((loss1 - loss2) / (2 * self.args.zo_eps)).item()
        self.zo_perturb_parameters(scaling_factor=1)
        self.loss2 = loss2
        return loss1

    # trainer.py: OurTrainer.zo_update
    def zo_update(self, model):
        args = self.args
        torch.manual_seed(self.zo_random_seed)
        for name, param in self.named_parameters_to_optim:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
                param.data = param.data - self._get_learning_rate() * (self.projected_grad * z + args.weight_decay * param.data)
            else:
                param.data = param.data - self._get_learning_rate() * (self.projected_grad * z)

    def step(self, model, inputs) -> tuple[float, float]:
        """What the Trainer's loop does per step with --trainer zo: zo_step then zo_update."""
        loss1 = self.zo_step(model, inputs)
        self.zo_update(model)
        return float(loss1), float(self.loss2)


# ------------------------------------------------------------------------------------ the inputs
def classification_inputs(examples: Sequence, tokenizer, device="cpu", pad_to_multiple_of: int = 8) -> dict:
    """run.py `_convert` + utils.encode_prompt + DataCollatorWithPaddingAndNesting, for examples given as
    (prompt, candidates, label) — our Example objects (prompt "<sentence> It was", candidates
    [" terrible", " great"]) are exactly MeZO's SST-2 template and verbaliser."""
    seqs, option_len, num_options, labels = [], [], [], []
    for ex in examples:
        n_prompt = len(tokenizer.encode(ex.prompt))
        for cand in ex.candidates:
            ids = tokenizer.encode(ex.prompt + cand)
            seqs.append(ids)
            option_len.append(len(ids) - n_prompt)
            num_options.append(len(ex.candidates))
            labels.append(ex.label)
    L = max(len(s) for s in seqs)
    L = -(-L // pad_to_multiple_of) * pad_to_multiple_of
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):  # left padding
        input_ids[i, L - len(s):] = torch.tensor(s)
        attention_mask[i, L - len(s):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "labels": torch.tensor(labels, device=device), "option_len": option_len,
            "num_options": num_options, "pad_token_id": pad}


def classification_loss(model, inputs) -> torch.Tensor:
    """utils.forward_wrap_with_option_len with num_options (train_as_classification)."""
    input_ids, option_len, num_options = inputs["input_ids"], inputs["option_len"], inputs["num_options"]
    labels = inputs["labels"]
    logits = model(input_ids=input_ids, attention_mask=inputs["attention_mask"]).logits
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = torch.clone(input_ids)[..., 1:].contiguous()
    shift_labels[shift_labels == inputs["pad_token_id"]] = -100
    for _i, _len in enumerate(option_len):
        shift_labels[_i, :-_len] = -100
    loss_fct = torch.nn.CrossEntropyLoss(ignore_index=-100)
    log_probs = F.log_softmax(shift_logits, dim=-1)
    mask = shift_labels != -100
    shift_labels[~mask] = 0
    selected = torch.gather(log_probs, dim=-1, index=shift_labels.unsqueeze(-1)).squeeze(-1)
    selected = (selected * mask).sum(-1) / mask.sum(-1)
    if any(x != num_options[0] for x in num_options):
        loss, start, count = 0, 0, 0
        while start < len(num_options):
            end = start + num_options[start]
            loss = loss_fct(selected[start:end].unsqueeze(0), labels[start:end][0].unsqueeze(0)) + loss
            count += 1
            start = end
        return loss / count
    n = num_options[0]
    return loss_fct(selected.view(-1, n), labels.view(-1, n)[:, 0])


# ----------------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def evaluate_one_at_a_time(model, tokenizer, examples: Sequence, device="cpu") -> dict:
    """run.py Framework.evaluate -> one_step_pred -> forward: one [1, L] forward per candidate."""
    model.eval()
    correct = 0
    preds = []
    for ex in examples:
        n_prompt = len(tokenizer.encode(ex.prompt))
        scores = []
        for cand in ex.candidates:
            ids = tokenizer.encode(ex.prompt + cand)
            option_len = len(ids) - n_prompt
            input_ids = torch.tensor([ids]).to(device)
            logits = model(input_ids=input_ids).logits
            labels = input_ids[0, 1:]
            log_probs = F.log_softmax(logits[0, :-1], dim=-1)
            selected = log_probs[torch.arange(len(labels)).to(labels.device), labels].cpu().detach()
            scores.append(selected[-option_len:].mean().item())
        pred = int(np.argmax(scores))
        preds.append(pred)
        correct += int(pred == ex.label)
    return {"accuracy": correct / len(examples), "n": len(examples), "predictions": preds}

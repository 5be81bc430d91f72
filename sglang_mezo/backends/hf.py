"""transformers adapter: the reference implementation of the backend interface, and the fallback."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Backend, Piece, ScoreRequest, ScoreResult, hf_dtype, validate_requests


class HFBackend(Backend):
    name = "hf"

    def __init__(self, model_path: str, dtype: str = "float32", *, device: str | None = None,
                 batch_tokens: int = 8192):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = hf_dtype(dtype)
        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
        self.vocab_size = self.model.config.vocab_size
        self.context_len = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.batch_tokens = batch_tokens
        # named_parameters() lists a tied lm_head once, under the embedding's name, as SGLang does.
        self._pieces = [Piece(n, tuple(p.shape), p.data, (0,) * p.dim())
                        for n, p in self.model.named_parameters()]

    @property
    def pieces(self) -> list[Piece]:
        return self._pieces

    @torch.no_grad()
    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        validate_requests(requests, self.vocab_size)
        out: list[ScoreResult] = []
        i = 0
        while i < len(requests):  # batches of similar token budget, right-padded
            j, longest = i, 0
            while j < len(requests) and max(longest, len(requests[j].ids)) * (j - i + 1) <= self.batch_tokens:
                longest = max(longest, len(requests[j].ids))
                j += 1
            j = max(j, i + 1)
            out.extend(self._forward(requests[i:j]))
            i = j
        return out

    def _forward(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        L = max(len(r.ids) for r in requests)
        ids = torch.zeros(len(requests), L, dtype=torch.long)
        mask = torch.zeros(len(requests), L, dtype=torch.long)
        for b, r in enumerate(requests):
            ids[b, : len(r.ids)] = torch.tensor(r.ids)
            mask[b, : len(r.ids)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        res = []
        for b, r in enumerate(requests):
            n, t = len(r.ids), r.target_len
            lp = torch.log_softmax(logits[b, max(n - t - 1, 0): n].float(), dim=-1)
            nxt = lp[-1, r.next_ids].tolist() if r.next_ids else []
            span = lp[:-1].gather(1, torch.tensor(r.ids[n - t:], device=lp.device)[:, None])[:, 0].tolist() if t else []
            res.append(ScoreResult(nxt, span))
        return res

    @torch.no_grad()
    def _generate(self, ids, p, sampler, stops):
        """transformers `generate`, one prompt at a time (as MeZO's SQuAD code): the reference. Our sampler
        and stop rule ride in as a logits processor and a stopping criterion, so both backends share them."""
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        results = []
        for i, prompt in enumerate(ids):
            class Pick(LogitsProcessor):  # sampled: keep only the token our seeded sampler draws
                def __call__(self, input_ids, scores):
                    t = sampler.pick(scores[:, : p_vocab].float(), [i])[0]
                    forced = torch.full_like(scores, float("-inf"))
                    forced[:, t] = 0.0
                    return forced

            class Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kw):
                    done = stops.finish(input_ids[0, n:].tolist()) is not None
                    return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

            n, p_vocab = len(prompt), self.vocab_size
            x = torch.tensor([prompt], device=self.device)
            out = self.model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=p.max_new_tokens, do_sample=False,
                logits_processor=LogitsProcessorList([Pick()] if p.temperature > 0 else []),
                stopping_criteria=StoppingCriteriaList([Stop()]), eos_token_id=None,
                pad_token_id=self.tokenizer.pad_token_id or 0, temperature=None, top_p=None, top_k=None)
            new = out[0, n:].tolist()
            results.append(stops.result(new, stops.finish(new) or "length"))
        return results

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        return {p.hf_name: p.view.detach().cpu().clone() for p in self._pieces}

"""What a step measures: one interface (base.py), a family per model kind, one router (`family_for`).

  label_words   decoders on classification tasks: candidates' log-likelihoods (ce, accuracy, lm)
  class_logits  encoder classifiers: class logits (ce, accuracy)
  generation    decoders on generation tasks: rewards of generated text (em, f1, ...) or lm

A request's own examples (HTTP, `EngineTrainer`) are parsed here too, into the typed examples the
families read (`parse_examples`): the one place an example's fields decide its kind.
"""
from __future__ import annotations

from ..tasks import Example, GenExample, is_generation
from .base import Measure, ce, neg_accuracy
from .class_logits import WHAT as ENCODER, ClassLogits
from .generation import Generation
from .label_words import LabelWords

FAMILIES = (LabelWords, ClassLogits, Generation)
MAX_CANDIDATES = 64
# the fields of each kind of example, and what a request must give for it
EXAMPLE_KINDS = {
    "label_words": ({"prompt", "candidates", "label"}, "'prompt' (string), 'candidates' (2 to "
                    f"{MAX_CANDIDATES} strings) and 'label' (an index into them): a language model's label words"),
    "class_logits": ({"prompt", "label"}, "'prompt' (string) and 'label' (a class id >= 0): an encoder "
                     "classifier's classes"),
    "generation": ({"prompt", "answers"}, f"'prompt' (string) and 'answers' (a string or 1 to {MAX_CANDIDATES} "
                   "strings): generation scored by a reward"),
}


def builtin_objectives() -> list[str]:
    """Every objective name a request may give without the operator registering it."""
    return sorted(set().union(*(f.OBJECTIVES for f in FAMILIES)))


def family_for(cfg, *, encoder: bool, spec=None, kind: str | None = None, resolve=str, **kw):
    """The family that measures `cfg`'s objective: class logits on an encoder model; on a decoder, the
    task (`spec`) or the kind of a request's examples decides between label words and generation.
    `resolve`: a requested objective name → what is loaded (the server's policy; identity offline)."""
    if encoder:
        if kind == "generation":
            raise ValueError(f"examples with 'answers' ask for generation; {ENCODER} cannot generate text: "
                             "give examples {\"prompt\": ..., \"label\": class id}")
        if kind == "label_words":
            raise ValueError(f"examples with 'candidates' score label words with a language model; {ENCODER}: "
                             "give examples {\"prompt\": ..., \"label\": class id}")
        return ClassLogits(cfg, spec, resolve)
    if cfg.num_labels is not None:
        raise ValueError("--num-labels is for encoder classifiers (BERT / XLM-R, --model minilm); "
                         f"{cfg.model or 'the default model'} is a decoder scored by label words")
    if kind == "class_logits":
        raise ValueError("examples without 'candidates' give class ids for an encoder classifier; the served "
                         "model is a language model: give each example its 'candidates'")
    if kind == "generation" or (kind is None and is_generation(spec)):
        return Generation(cfg, spec, resolve, **kw)
    return LabelWords(cfg, spec, resolve)


def _kind(ex) -> str:
    if isinstance(ex, dict) and "answers" in ex:
        return "generation"
    if isinstance(ex, dict) and "candidates" in ex:
        return "label_words"
    return "class_logits"


def parse_examples(examples) -> tuple[str, list]:
    """A request's examples as (kind, typed examples): tasks.Example (label words; class ids with no
    candidates) or tasks.GenExample. ValueError names the example and the fields each kind takes."""
    kind = _kind(examples[0])
    fields, what = EXAMPLE_KINDS[kind]
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or _kind(ex) != kind:
            raise ValueError(f"examples[{i}] is not like examples[0]; every example of a request is one kind: "
                             + "; ".join(f"{k}: {w}" for k, (_, w) in EXAMPLE_KINDS.items()))
        if set(ex) - fields:
            raise ValueError(f"examples[{i}] has unknown field(s) {sorted(map(repr, set(ex) - fields))[:5]}; "
                             f"it needs {what}")
        out.append(_typed(kind, i, ex, what))
    return kind, out


def _typed(kind: str, i: int, ex: dict, what: str):
    prompt, lab = ex.get("prompt"), ex.get("label")
    if kind == "generation":
        ans = ex.get("answers")
        ok = isinstance(ans, str) or (isinstance(ans, list) and 0 < len(ans) <= MAX_CANDIDATES
                                      and all(isinstance(a, str) for a in ans))
        if not isinstance(prompt, str) or not ok:
            raise ValueError(f"examples[{i}] needs {what}")
        answers = [ans] if isinstance(ans, str) else list(ans)
        return GenExample(prompt, answers, " " + answers[0])
    if kind == "label_words":
        c = ex.get("candidates")
        if not isinstance(prompt, str) or not isinstance(c, list) or not 2 <= len(c) <= MAX_CANDIDATES \
                or not all(isinstance(x, str) for x in c):
            raise ValueError(f"examples[{i}] needs {what}")
        if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < len(c):
            raise ValueError(f"examples[{i}].label must be an index into its candidates")
        return Example(prompt, list(c), lab)
    if not isinstance(prompt, str) or isinstance(lab, bool) or not isinstance(lab, int) or lab < 0:
        raise ValueError(f"examples[{i}] needs {what}; or, for the other kinds: "
                         + "; ".join(w for k, (_, w) in EXAMPLE_KINDS.items() if k != kind))
    return Example(prompt, [], lab)


__all__ = ["FAMILIES", "family_for", "parse_examples", "builtin_objectives", "Measure", "ce", "neg_accuracy",
           "LabelWords", "ClassLogits", "Generation"]

"""A /mezo/step on a served encoder classifier (SGLang's `/classify` models; backends/encoder.py).

The objective reads the `[B, num_labels]` class logits (class_objectives.py: `ce`, `accuracy`, or an
operator-registered `module:function` over ClassOutputs). A step takes a classification task (labels =
the task's label order) or examples `{"prompt": str, "label": class id}`. What an encoder cannot do —
generation examples or tasks, token or generation objectives, chat templates, candidates, a class id
beyond the head — is refused with a 400 naming the mismatch, before anything touches the weights.

Like every /mezo call it runs on the scheduler's thread with ordinary requests paused
(ServedTrainer._exclusive): a `/classify` that arrives during a step waits for that step only.
"""
from __future__ import annotations

import time

from .. import class_objectives as co
from .. import tasks
from ..mezo import MeZOConfig, mezo_step
from .protocol import RequestError, StepArgs

WHAT = "the served model is an encoder classifier (class logits)"


def _examples(trainer, a: StepArgs) -> list:
    n = trainer.backend.num_labels
    if a.examples is not None:
        ex0 = a.examples[0]
        if "answers" in ex0:
            raise RequestError(f"examples with 'answers' ask for generation; {WHAT} cannot generate text: "
                               "give examples {\"prompt\": ..., \"label\": class id}")
        if any("candidates" in e for e in a.examples):
            raise RequestError(f"examples with 'candidates' score label words with a language model; {WHAT}: "
                               "give examples {\"prompt\": ..., \"label\": class id}")
        for i, e in enumerate(a.examples):
            if not 0 <= e["label"] < n:
                raise RequestError(f"examples[{i}].label {e['label']} exceeds the served classifier's {n} "
                                   f"classes (0..{n - 1})")
        return [tasks.Example(e["prompt"], [], int(e["label"])) for e in a.examples]
    spec = tasks.get_task(trainer.policy.task(a.task))
    if tasks.is_generation(spec) or not spec.label_words:
        raise RequestError(f"task {a.task!r} is a generation task; {WHAT} needs a classification task")
    if len(spec.label_words) > n:
        raise RequestError(f"task {a.task!r} has {len(spec.label_words)} classes but the served classifier's "
                           f"head has {n}")
    exs, _ = trainer._batch(a)
    return exs


def encoder_step(trainer, a: StepArgs) -> dict:
    try:
        if a.chat_template:
            raise RequestError(f"'chat_template' wraps prompts for a chat LM; {WHAT} has no chat turns")
        if a.max_new_tokens is not None:
            raise RequestError(f"'max_new_tokens' is for generation; {WHAT} cannot generate text")
        objective = co.get_objective(trainer.policy.objective(a.objective))
        exs = _examples(trainer, a)
        cfg = MeZOConfig(lr=a.lr, eps=a.eps, weight_decay=a.weight_decay, estimator=a.estimator,
                         n_queries=a.n_queries)
        batch = co.encode(exs, trainer.backend)  # cut to the position limit, as offline training does
    except ValueError as e:  # an objective the encoder cannot serve, a task error; RequestError as it is
        raise e if isinstance(e, RequestError) else RequestError(str(e)) from None
    seeds = trainer.seeds(a)
    t0 = time.perf_counter()
    with trainer._exclusive():
        rec = mezo_step(trainer.weights, lambda: objective(co.run_batch(trainer.backend, batch)), seeds, cfg,
                        len(trainer.records) + 1)
    trainer.records.append(rec)
    return {"step": rec.step, "loss_plus": rec.loss_plus, "loss_minus": rec.loss_minus,
            "projected_grad": rec.grads, "seeds": rec.seeds, "time_s": time.perf_counter() - t0}

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
from ..mezo import mezo_step
from ..settings import step_seeds
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
    name = a.settings.task
    spec = tasks.get_task(trainer.policy.task(name))
    if tasks.is_generation(spec) or not spec.label_words:
        raise RequestError(f"task {name!r} is a generation task; {WHAT} needs a classification task")
    if len(spec.label_words) > n:
        raise RequestError(f"task {name!r} has {len(spec.label_words)} classes but the served classifier's "
                           f"head has {n}")
    exs, _ = trainer._batch(a)
    return exs


def encoder_step(trainer, a: StepArgs) -> dict:
    s = a.settings
    try:
        if s.chat_template:
            raise RequestError(f"'chat_template' wraps prompts for a chat LM; {WHAT} has no chat turns")
        if s.max_new_tokens is not None:
            raise RequestError(f"'max_new_tokens' is for generation; {WHAT} cannot generate text")
        objective = co.get_objective(trainer.policy.objective(s.objective or "ce"))
        exs = _examples(trainer, a)
        batch = co.encode(exs, trainer.backend)  # cut to the position limit, as offline training does
    except ValueError as e:  # an objective the encoder cannot serve, a task error; RequestError as it is
        raise e if isinstance(e, RequestError) else RequestError(str(e)) from None
    step = len(trainer.records) + 1
    t0 = time.perf_counter()
    with trainer._exclusive():
        rec = mezo_step(trainer.weights, lambda: objective(co.run_batch(trainer.backend, batch)),
                        step_seeds(s.seed, step, s.n_queries), s, step)  # the seeds of `train` (settings.py)
    trainer.records.append(rec)
    return {"step": rec.step, "loss_plus": rec.loss_plus, "loss_minus": rec.loss_minus,
            "projected_grad": rec.grads, "seeds": rec.seeds, "time_s": time.perf_counter() - t0}

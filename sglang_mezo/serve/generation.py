"""A /mezo/step on a generation task or on generation examples ({"prompt", "answers"}): the objective is
a reward on the served engine's own batched generations (em | f1 | numeric | contains, or a name the
operator registered as module:function), or `lm` on the reference answers.

The generations run inside the scheduler, through the same SGLangBackend.generate as offline training,
while ordinary requests are paused (ServedTrainer._exclusive): no user request sees perturbed weights.
Both signs of the step generate with the same sampling seed (common random numbers).
"""
from __future__ import annotations

import time

from .. import reward_objectives as ro
from .. import rewards, tasks
from ..mezo import mezo_step
from ..settings import sample_seed, step_seeds
from .protocol import RequestError, StepArgs


def is_generation_request(trainer, a: StepArgs) -> bool:
    if a.examples is not None:
        return "answers" in a.examples[0]
    try:
        return tasks.is_generation(tasks.get_task(trainer.policy.task(a.settings.task)))
    except Exception:  # noqa: BLE001 - the classification path reports what is wrong with the task
        return False


def _examples(trainer, a: StepArgs):
    """The step's GenExamples and the task defaults (metric, max_new_tokens, stop)."""
    if a.examples is not None:
        exs = []
        for e in a.examples:
            answers = [e["answers"]] if isinstance(e["answers"], str) else list(e["answers"])
            exs.append(tasks.GenExample(e["prompt"], answers, " " + answers[0]))
        return exs, {"metric": "f1", "max_new_tokens": 16, "stop": []}
    exs, _ = trainer._batch(a)
    spec = tasks.get_task(trainer.policy.task(a.settings.task))
    return exs, {"metric": spec.metric, "max_new_tokens": spec.max_new_tokens, "stop": list(spec.stop)}


def generation_step(trainer, a: StepArgs) -> dict:
    tok, s = trainer.backend.tokenizer, a.settings
    try:
        exs, task = _examples(trainer, a)
        name = s.objective or task["metric"]
        if name in ("ce", "accuracy"):
            raise RequestError(f"objective {name!r} scores candidates; a generation step takes one of "
                               f"{ro.objective_names()} or an operator-registered reward")
        objective = name if name in ro.objective_names() else trainer.policy.objective(name)
        reward_name = task["metric"] if objective == ro.LM else objective
        reward_fn = rewards.get_reward(reward_name)
        if s.chat_template:
            if not getattr(tok, "chat_template", None):
                raise RequestError("'chat_template': the served model's tokenizer has no chat template")
            exs = tasks.apply_chat_template(exs, tok)
        gen = {"max_new_tokens": s.max_new_tokens or task["max_new_tokens"], "temperature": s.temperature,
               "top_p": s.top_p, "stop": task["stop"]}
        batch = ro.encode(exs, tok)
        limit = trainer._max_tokens()
        longest = max(len(p) for p in batch.prompt_ids) + gen["max_new_tokens"]
        if longest > limit:
            raise RequestError(f"a prompt + max_new_tokens is {longest} tokens; this server takes at most {limit}")
    except ValueError as e:  # TaskError, RewardError; a RequestError is re-raised as it is
        raise e if isinstance(e, RequestError) else RequestError(str(e)) from None
    step = len(trainer.records) + 1
    m = ro.Measure(trainer.backend, batch, objective, reward_name, reward_fn, gen,
                   seed=sample_seed(s.seed, step), watch=False)  # the seeds of `train` (settings.py)
    t0 = time.perf_counter()
    try:
        with trainer._exclusive():
            rec = mezo_step(trainer.weights, m, step_seeds(s.seed, step, s.n_queries), s, step)
    except rewards.RewardError as e:  # a registered reward misbehaved: weights already restored
        raise RequestError(str(e)) from None
    rec.extra = {"sample_seed": m.seed}
    trainer.records.append(rec)
    out = {"step": rec.step, "loss_plus": rec.loss_plus, "loss_minus": rec.loss_minus,
           "projected_grad": rec.grads, "seeds": rec.seeds, "time_s": time.perf_counter() - t0}
    return {**out, **m.summary()}

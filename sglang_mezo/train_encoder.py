"""The training job for an encoder classifier (backends/encoder.py): MeZO on ce or accuracy over class
logits, with the same outputs as train.py (config.json, trajectory.jsonl, metrics.jsonl, model/ of the
best dev step, curves.png). `--model minilm` or a headless BERT with `--num-labels` get a seeded head
(models.resolve_encoder); `DIR/config.json` names the folder the run started from (the replay base).
"""
from __future__ import annotations

import time
from pathlib import Path

from . import class_objectives as co
from . import tasks
from .backends import make_backend, select_trainable
from .backends.base import hf_dtype
from .export import save_model
from .mezo import mezo_step
from .models import resolve_encoder
from .settings import Settings, seed_stream
from .train import RunFiles, batches, check_out, check_run, plot_curves
from .trajectory import rewind


def n_classes(spec) -> int:
    return len(spec.label_words) if spec.label_words else 0


def train_encoder(cfg: Settings) -> dict:
    # Everything that can be wrong with the input is checked before anything is written.
    check_run(cfg)
    if cfg.chat_template:
        raise ValueError("--chat-template wraps prompts for a chat LM; an encoder classifier has no chat turns")
    spec = tasks.get_task(cfg.task)
    if tasks.is_generation(spec) or not n_classes(spec):
        raise ValueError(f"task {spec.name!r} is not a classification task with label classes; an encoder "
                         "classifier needs one (label ids = the task's label order)")
    objective = co.get_objective(cfg.objective or "ce")
    hf_dtype(cfg.dtype)
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    model_path = resolve_encoder(cfg.model, cfg.num_labels, n_classes(spec))
    data = tasks.splits(spec, k_shot=cfg.k_shot, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev,
                        n_test=cfg.n_test, data_dir=cfg.data_dir)
    backend = make_backend(cfg.backend, model_path, cfg.dtype)
    for split, examples in data.items():
        co.check_labels(examples, backend.num_labels, f"task {spec.name!r} {split}")
    pieces = select_trainable(backend.pieces, cfg.trainable)
    weights = backend.weights(pieces, cfg.perturb)

    def evaluate(split):
        return co.evaluate(backend, data[split], cfg.eval_batch_size)

    files = RunFiles(out, cfg, model_path, pieces, data, num_labels=backend.num_labels)
    traj, log = files.traj, files.log

    history = {"step": [], "loss": [], "eval_step": [], "dev_acc": []}
    records, best = [], {"step": 0, "accuracy": -1.0}

    def dev_eval(step):
        dev = evaluate("dev")
        log({"step": step, "split": "dev", **dev})
        history["eval_step"].append(step)
        history["dev_acc"].append(dev["accuracy"])
        if dev["accuracy"] > best["accuracy"]:
            best.update(step=step, accuracy=dev["accuracy"])
        return dev

    try:
        dev_eval(0)
        untrained = evaluate("test")  # the untrained (seeded) head: the baseline, on the same test set
        log({"step": 0, "split": "test", "zero_shot": True, **untrained})
        seeds = seed_stream(cfg.seed, cfg.n_queries)
        order = batches(len(data["train"]), cfg.batch_size, cfg.seed)
        from tqdm import tqdm

        bar = tqdm(range(1, cfg.steps + 1), desc="mezo", disable=not cfg.progress, dynamic_ncols=True)
        for step in bar:
            enc = co.encode([data["train"][i] for i in next(order)], backend)
            loss = lambda: objective(co.run_batch(backend, enc))  # noqa: E731
            t0 = time.perf_counter()
            rec = mezo_step(weights, loss, next(seeds), cfg, step)
            dt = time.perf_counter() - t0
            traj.append(rec)
            records.append(rec)
            log({"step": step, "loss": rec.loss, "grad": rec.grads, "time_s": dt})
            history["step"].append(step)
            history["loss"].append(rec.loss)
            bar.set_postfix(loss=f"{rec.loss:.4f}", s_per_step=f"{dt:.3f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                dev_eval(step)
        final_dev = dev_eval(cfg.steps) if cfg.steps else {"accuracy": best["accuracy"]}
        if cfg.keep == "last":
            best.update(step=cfg.steps, accuracy=final_dev["accuracy"])
        if best["step"] != cfg.steps:  # keep the best dev step
            rewind(backend, pieces, cfg.perturb, records[: best["step"]])
        test = evaluate("test")
        log({"step": best["step"], "split": "test", "best_step": best["step"], **test})
    finally:
        files.close()
    save_model(model_path, backend.hf_state_dict(), hf_dtype(cfg.dtype), out / "model")
    plot_curves(history, out / "curves.png", title=f"{spec.name} · {cfg.objective} · {cfg.backend} · encoder")
    backend.close()
    return {"zero_shot_test_accuracy": untrained["accuracy"], "zero_shot_dev_accuracy": history["dev_acc"][0],
            "final_dev_accuracy": final_dev["accuracy"], "best_step": best["step"],
            "best_dev_accuracy": best["accuracy"], "test_accuracy": test["accuracy"], "steps": cfg.steps,
            "model": model_path, "out": str(out)}


def evaluate_encoder(model: str, task: str, split: str, backend: str = "sglang", dtype: str = "float32",
                     limit: int | None = None, seed: int = 42, data_dir=None, batch_size: int = 64,
                     num_labels: int | None = None) -> dict:
    """`sglang-mezo eval` for an encoder classifier: accuracy and ce of the class logits on a split."""
    spec = tasks.get_task(task)
    if tasks.is_generation(spec) or not n_classes(spec):
        raise ValueError(f"task {spec.name!r} is not a classification task; an encoder classifier needs one")
    examples = tasks.subsample(tasks.load_split(spec, split, data_dir), limit, seed)
    b = make_backend(backend, resolve_encoder(model, num_labels, n_classes(spec)), dtype)
    co.check_labels(examples, b.num_labels, f"task {spec.name!r} {split}")
    return {"task": spec.name, "split": split, "backend": backend, "model": b.model_path,
            **co.evaluate(b, examples, batch_size)}

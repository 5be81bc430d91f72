"""The training job: task data + backend + MeZO steps + evaluation + outputs in one directory.

    DIR/config.json       the resolved configuration
    DIR/trajectory.jsonl  header + one line per step (replayable checkpoint)
    DIR/metrics.jsonl     per-step loss/time and periodic dev/test accuracy
    DIR/model/            HF safetensors + config + tokenizer of the best-dev-step weights
                          (= `sglang-mezo replay --upto BEST_STEP`; the summary names the step)
    DIR/curves.png        loss and accuracy curves
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

from . import objectives, tasks
from .backends import BACKENDS, BackendError, make_backend, select_trainable
from .backends.base import hf_dtype
from .export import save_model
from .mezo import mezo_step
from .models import is_encoder_model, resolve_model
from .settings import Settings, seed_stream
from .trajectory import TrajectoryWriter, make_header, rewind


class OutputError(ValueError):
    pass


def check_out(out: Path, overwrite: bool | None) -> None:
    """--out must be a new or empty directory; overwrite=None: the command has no --overwrite."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        hint = "" if overwrite is None else " (or --overwrite to replace the files this job writes)"
        raise OutputError(f"--out {out} is not empty; choose a new directory{hint}")


def check_run(cfg: Settings) -> None:
    """The checks every training job (classification, generation, encoder) makes before writing; the
    settings' own types and ranges were checked when `cfg` was built."""
    if cfg.out is None:
        raise ValueError("--out (the output folder) is required")
    if cfg.backend not in BACKENDS:
        raise BackendError(f"unknown backend {cfg.backend!r}: choose one of {BACKENDS}")
    if cfg.keep not in ("best", "last"):
        raise ValueError(f"--keep must be 'best' or 'last', got {cfg.keep!r}")


class RunFiles:
    """DIR/config.json (the resolved configuration, written at once), DIR/trajectory.jsonl and
    DIR/metrics.jsonl (appended and flushed every step) of one training job."""

    def __init__(self, out: Path, cfg: Settings, model_path: str, pieces, data: dict, **extra):
        out.mkdir(parents=True, exist_ok=True)
        resolved = {**asdict(cfg), "model": model_path, "n_trainable": sum(p.view.numel() for p in pieces),
                    "split_sizes": {k: len(v) for k, v in data.items()}, **extra}
        (out / "config.json").write_text(json.dumps(resolved, indent=2))
        self.traj = TrajectoryWriter(out / "trajectory.jsonl", make_header(
            model_path, cfg.dtype, pieces, cfg.backend, cfg.perturb, cfg.trainable))
        self._metrics = open(out / "metrics.jsonl", "w", encoding="utf-8")

    def log(self, obj: dict) -> None:
        self._metrics.write(json.dumps(obj) + "\n")
        self._metrics.flush()

    def close(self) -> None:
        self.traj.close()
        self._metrics.close()


def batches(n: int, size: int, seed: int):
    """Indices of shuffled epochs, `size` at a time (a fresh permutation per epoch, like a DataLoader)."""
    rng, buf = random.Random(seed), []
    while True:
        if len(buf) < size:
            perm = list(range(n))
            rng.shuffle(perm)
            buf += perm
        yield buf[:size]
        buf = buf[size:]


def train(cfg: Settings) -> dict:
    # Everything that can be wrong with the input is checked before anything is written.
    generation = tasks.is_generation(tasks.get_task(cfg.task))
    if cfg.objective is None and not generation:  # a generation task defaults to its own metric
        cfg.objective = "ce"
    if is_encoder_model(cfg.model):  # BERT / XLM-R classifiers: class logits, not token log-probs
        from .train_encoder import train_encoder

        return train_encoder(cfg)
    if cfg.num_labels is not None:
        raise ValueError("--num-labels is for encoder classifiers (BERT / XLM-R, --model minilm); "
                         f"{cfg.model or 'the default model'} is a decoder scored by label words")
    if generation:
        from .train_generation import train_generation

        return train_generation(cfg)
    check_run(cfg)
    objective = objectives.get_objective(cfg.objective)
    hf_dtype(cfg.dtype)
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    model_path = resolve_model(cfg.model)
    spec = tasks.get_task(cfg.task)
    data = tasks.splits(spec, k_shot=cfg.k_shot, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev,
                        n_test=cfg.n_test, data_dir=cfg.data_dir)
    backend = make_backend(cfg.backend, model_path, cfg.dtype)
    if cfg.chat_template:
        data = {k: tasks.apply_chat_template(v, backend.tokenizer) for k, v in data.items()}
    pieces = select_trainable(backend.pieces, cfg.trainable)
    weights = backend.weights(pieces, cfg.perturb)
    objectives.encode(data["train"][:1], backend.tokenizer, spec.single_token_labels)  # label words ok?

    def evaluate(split):
        return objectives.evaluate(backend, data[split], spec.single_token_labels, cfg.eval_batch_size)

    files = RunFiles(out, cfg, model_path, pieces, data)
    traj, log = files.traj, files.log

    history = {"step": [], "loss": [], "eval_step": [], "dev_acc": []}
    records = []
    best = {"step": 0, "accuracy": -1.0}

    def dev_eval(step):
        dev = evaluate("dev")
        log({"step": step, "split": "dev", **dev})
        history["eval_step"].append(step)
        history["dev_acc"].append(dev["accuracy"])
        if dev["accuracy"] > best["accuracy"]:  # first best wins, as HF Trainer's load_best_model_at_end
            best.update(step=step, accuracy=dev["accuracy"])
        return dev

    try:
        dev_eval(0)
        zero_shot = evaluate("test")  # the baseline the run is judged against, on the same test set
        log({"step": 0, "split": "test", "zero_shot": True, **zero_shot})
        seeds = seed_stream(cfg.seed, cfg.n_queries)
        order = batches(len(data["train"]), cfg.batch_size, cfg.seed)
        from tqdm import tqdm

        bar = tqdm(range(1, cfg.steps + 1), desc="mezo", disable=not cfg.progress, dynamic_ncols=True)
        for step in bar:
            ex = [data["train"][i] for i in next(order)]
            enc = objectives.encode(ex, backend.tokenizer, spec.single_token_labels)
            loss = lambda: objective(objectives.run_batch(backend, ex, enc))  # noqa: E731
            t0 = time.perf_counter()
            rec = mezo_step(weights, loss, next(seeds), cfg, step)
            dt = time.perf_counter() - t0
            traj.append(rec)
            records.append(rec)
            log({"step": step, "loss": rec.loss, "grad": rec.grads, "time_s": dt})
            history["step"].append(step)
            history["loss"].append(rec.loss)
            bar.set_postfix(loss=f"{rec.loss:.4f}", s_per_step=f"{dt:.2f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                dev_eval(step)
        final_dev = dev_eval(cfg.steps) if cfg.steps else {"accuracy": best["accuracy"]}
        if cfg.keep == "last":
            best.update(step=cfg.steps, accuracy=final_dev["accuracy"])
        if best["step"] != cfg.steps:  # keep the best dev step (MeZO's load_best_model_at_end)
            rewind(backend, pieces, cfg.perturb, records[: best["step"]])
        test = evaluate("test")
        log({"step": best["step"], "split": "test", "best_step": best["step"], **test})
    finally:
        files.close()
    save_model(model_path, backend.hf_state_dict(), hf_dtype(cfg.dtype), out / "model")
    plot_curves(history, out / "curves.png", title=f"{spec.name} · {cfg.objective} · {cfg.backend}")
    backend.close()
    return {"zero_shot_test_accuracy": zero_shot["accuracy"], "zero_shot_dev_accuracy": history["dev_acc"][0], "final_dev_accuracy": final_dev["accuracy"],
            "best_step": best["step"], "best_dev_accuracy": best["accuracy"], "test_accuracy": test["accuracy"],
            "steps": cfg.steps, "out": str(out)}


def plot_curves(history: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(history["step"], history["loss"], lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("training objective (mean of L+, L−)")
    b.plot(history["eval_step"], history["dev_acc"], marker="o")
    b.set_xlabel("step")
    b.set_ylabel("dev accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)

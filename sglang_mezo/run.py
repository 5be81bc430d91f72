"""The one run loop. `steps` is MeZO's loop (batch → measure → mezo_step → journal) that every job
shares; `train` is the training job for every family, `evaluate` is `sglang-mezo eval`; the data-parallel
coordinator (replicas.py) drives `steps` too. What differs between families is handed in (objectives/):
how a batch becomes a loss, the dev metric, the log fields, the plot panels, the summary.

    DIR/config.json       the resolved configuration
    DIR/trajectory.jsonl  header + one line per step (replayable checkpoint)
    DIR/metrics.jsonl     per-step loss/time and periodic dev/test metrics
    DIR/model/            HF safetensors + config + tokenizer of the best-dev-step weights
                          (= `sglang-mezo replay --upto BEST_STEP`; the summary names the step)
    DIR/curves.png        training curves and the dev metric
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import perturb, tasks
from .backends import BACKENDS, BackendError, make_backend, select_trainable
from .backends.base import hf_dtype
from .backends.layout import checkpoint_shapes, tied_embeddings
from .backends.lora import engine_targets, resolve_targets
from .export import save_model
from .mezo import mezo_step, points
from .models import check_architecture, is_encoder_model, resolve_encoder, resolve_model
from .objectives import family_for
from .objectives.class_logits import check_labels, n_classes
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


class RunFiles:
    """DIR/config.json (written at once), DIR/trajectory.jsonl and DIR/metrics.jsonl (appended and flushed
    every step) of one job. `resume` (trajectory.load of DIR's trajectory): continue those files instead."""

    def __init__(self, out: Path, config: dict, header: dict, resume=None):
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            (out / "config.json").write_text(json.dumps(config, indent=2))
            self.traj = TrajectoryWriter(out / "trajectory.jsonl", header)
            self._metrics = open(out / "metrics.jsonl", "w", encoding="utf-8")
        else:  # the torn last line a crash may leave is cut from both files before appending
            self.traj = TrajectoryWriter(out / "trajectory.jsonl", keep_bytes=resume.size)
            metrics = out / "metrics.jsonl"
            data = metrics.read_bytes() if metrics.exists() else b""
            self._metrics = open(metrics, "a", encoding="utf-8")
            self._metrics.truncate(data.rfind(b"\n") + 1)

    def log(self, obj: dict) -> None:
        self._metrics.write(json.dumps(obj) + "\n")
        self._metrics.flush()

    def close(self) -> None:
        self.traj.close()
        self._metrics.close()


def steps(cfg: Settings, train: list, weights, measure, files: RunFiles, start: int = 0,
          commit=lambda rec: {}):
    """MeZO's loop: steps start+1 … start+cfg.steps, batches and seeds drawn as every job draws them.
    `measure(examples, step)` → the step's loss (objectives.base.Measure); `commit(record)` runs before the
    step is journaled (the coordinator applies it on the replicas) and returns log fields. Yields
    (record, log fields, seconds) after each step is on disk. Step k draws the seeds and batch step k of
    an uninterrupted run draws (the first `start` are skipped), so a resumed run continues the same stream."""
    seeds = seed_stream(cfg.seed, cfg.n_queries)
    order = batches(len(train), cfg.batch_size, cfg.seed)
    for _ in range(start):
        next(seeds)
        next(order)
    for step in range(start + 1, start + cfg.steps + 1):
        m = measure([train[i] for i in next(order)], step)
        t0 = time.perf_counter()
        rec = mezo_step(weights, m, next(seeds), cfg, step)
        rec.extra = dict(m.extra)
        done = commit(rec)
        dt = time.perf_counter() - t0
        fields = {**m.log(dt), **done}
        files.traj.append(rec)
        files.log({"step": step, "loss": rec.loss, **fields, "grad": rec.grads, "time_s": dt})
        yield rec, fields, dt


def _family(cfg: Settings):
    check_architecture(cfg.model)  # an unsupported encoder is named as such, not read as a decoder
    spec = tasks.get_task(cfg.task)
    encoder = is_encoder_model(cfg.model)
    family = family_for(cfg, encoder=encoder, spec=spec)
    model = (lambda: resolve_encoder(cfg.model, cfg.num_labels, n_classes(spec))) if encoder else \
        (lambda: resolve_model(cfg.model))
    return spec, family, model


def lowrank_targets(cfg: Settings, model_path: str) -> list[str]:
    """SGLang's --lora-target-modules for --lowrank-targets, from the checkpoint (before the engine starts):
    a module named explicitly that the model lacks is refused."""
    asked, tied = resolve_targets(cfg.lowrank_targets), tied_embeddings(model_path)
    shapes = checkpoint_shapes(model_path)
    have = {perturb.lowrank.module(n) for n, sh in shapes.items() if n.endswith(".weight") and len(sh) == 2}
    lacks = sorted(set(asked) - have - ({"lm_head"} if tied and "embed_tokens" in have else set()))
    if lacks and cfg.lowrank_targets not in (None, "all", "projections"):
        raise BackendError(f"--lowrank-targets {cfg.lowrank_targets}: this model has no {', '.join(lacks)} "
                           "matrix for SGLang's LoRA to adapt")
    return engine_targets(asked, tied)


def trainable_pieces(cfg: Settings, backend):
    """--trainable's pieces; in lowrank mode only the matrices of --lowrank-targets, and the run says what
    stays frozen. A target the model lacks, or a rank above a target's smaller dimension: refused here."""
    pieces = select_trainable(backend.pieces, cfg.trainable)
    if cfg.perturb == "lowrank":
        tied = backend.tied_embeddings
        targets = engine_targets(resolve_targets(cfg.lowrank_targets), tied)  # tied: both name one matrix
        pieces, frozen = perturb.lowrank.adaptable(pieces, targets)
        if not pieces:
            raise BackendError("--perturb lowrank: no trainable matrix is a LoRA target of --lowrank-targets "
                               f"({', '.join(targets)})")
        perturb.lowrank.check_rank(cfg.rank, pieces)
        tied = " (tied: one direction for the lookup and the logits)" if tied and any(
            perturb.lowrank.module(p.hf_name) == "embed_tokens" for p in pieces) else ""
        print(f"sglang-mezo: --perturb lowrank --rank {cfg.rank}: training {len(pieces)} matrices "
              f"({', '.join(sorted({perturb.lowrank.module(p.hf_name) for p in pieces}))}){tied}; frozen: "
              f"{len(frozen)} tensors (norms: a LoRA adapter holds matrices only), e.g. {', '.join(frozen[:3])}",
              file=sys.stderr)
    return pieces


def train(cfg: Settings) -> dict:
    # Everything that can be wrong with the input is checked before anything is written.
    spec, family, model = _family(cfg)
    cfg.objective = family.objective_name
    if cfg.perturb == "lowrank" and not family.lowrank:
        raise ValueError("--perturb lowrank runs classification tasks on decoder models (its adapters "
                         "batch scoring forwards); generation tasks and encoder classifiers use layerwise")
    if cfg.resume:
        raise ValueError("--resume continues a `train --replicas` run (a served run resumes from "
                         "`serve --mezo-run-dir`)")
    if cfg.out is None:
        raise ValueError("--out (the output folder) is required")
    if cfg.backend not in BACKENDS:
        raise BackendError(f"unknown backend {cfg.backend!r}: choose one of {BACKENDS}")
    if cfg.keep not in ("best", "last"):
        raise ValueError(f"--keep must be 'best' or 'last', got {cfg.keep!r}")
    hf_dtype(cfg.dtype)
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    model_path = model()
    data = tasks.splits(spec, k_shot=cfg.k_shot, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev,
                        n_test=cfg.n_test, data_dir=cfg.data_dir)
    per_step, lora = len(points([0] * cfg.n_queries, cfg)), {}   # the points (adapters) of one step
    targets = lowrank_targets(cfg, model_path) if cfg.perturb == "lowrank" else None
    if cfg.perturb == "lowrank" and cfg.backend == "sglang":  # the LoRA pool: one step's adapters + the base
        lora = {"lora": {"max_lora_rank": cfg.rank, "max_loras_per_batch": per_step + 1,
                         "lora_target_modules": targets}}
    backend = make_backend(cfg.backend, model_path, cfg.dtype, **lora)
    if cfg.chat_template:
        data = {k: tasks.apply_chat_template(v, backend.tokenizer) for k, v in data.items()}
    pieces = trainable_pieces(cfg, backend)
    weights = perturb.make(cfg.perturb, pieces, backend, rank=cfg.rank, sparsity=cfg.sparsity)
    if isinstance(weights, perturb.LowRank) and weights.adapters is not None:  # the pool holds a step's adapters?
        weights.adapters.check(cfg.rank, per_step)
    family.prepare(backend, data)
    config = {**asdict(cfg), "model": model_path, "n_trainable": sum(p.view.numel() for p in pieces),
              "split_sizes": {k: len(v) for k, v in data.items()}, **family.files_extra(backend)}
    files = RunFiles(out, config, make_header(model_path, cfg.dtype, pieces, cfg.backend, cfg.perturb,
                                              cfg.trainable, cfg.rank, cfg.sparsity))
    key = family.dev_metric
    history = {"step": [], "eval_step": [], "dev": [], **{k: [] for k, _ in family.panels}}
    records, best = [], {"step": 0, "value": -1.0}

    def dev_eval(step):
        dev = family.evaluate(backend, data["dev"])
        files.log({"step": step, "split": "dev", **dev})
        history["eval_step"].append(step)
        history["dev"].append(dev[key])
        if dev[key] > best["value"]:  # first best wins, as HF Trainer's load_best_model_at_end
            best.update(step=step, value=dev[key])
        return dev

    try:
        dev_eval(0)
        zero_shot = family.evaluate(backend, data["test"])  # the baseline, on the same test set
        files.log({"step": 0, "split": "test", "zero_shot": True, **zero_shot})
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc=f"mezo {cfg.objective}", disable=not cfg.progress, dynamic_ncols=True)
        measure = lambda ex, step: family.measure(backend, family.batch(backend, ex), step)  # noqa: E731
        for rec, fields, dt in steps(cfg, data["train"], weights, measure, files):
            records.append(rec)
            history["step"].append(rec.step)
            for k, _ in family.panels:
                history[k].append(rec.loss if k == "loss" else fields.get(k))
            bar.update()
            bar.set_postfix(loss=f"{rec.loss:.4f}", s_per_step=f"{dt:.2f}")
            if cfg.eval_every and rec.step % cfg.eval_every == 0 and rec.step != cfg.steps:
                dev_eval(rec.step)
        bar.close()
        final_dev = dev_eval(cfg.steps) if cfg.steps else {key: best["value"]}
        if cfg.keep == "last":
            best.update(step=cfg.steps, value=final_dev[key])
        if best["step"] != cfg.steps:  # keep the best dev step (MeZO's load_best_model_at_end)
            rewind(backend, pieces, cfg.perturb, records[: best["step"]], cfg.rank, sparsity=cfg.sparsity)
        test = family.evaluate(backend, data["test"])
        files.log({"step": best["step"], "split": "test", "best_step": best["step"], **test})
    finally:
        files.close()
    save_model(model_path, backend.hf_state_dict(), hf_dtype(cfg.dtype), out / "model")
    plot(history, family.panels, key, out / "curves.png",
         title=f"{spec.name} · {cfg.objective} · {cfg.backend} · {family.name}")
    backend.close()
    return family.summary({"zero_shot": zero_shot, "dev0": history["dev"][0], "final_dev": final_dev,
                           "best_step": best["step"], "best_dev": best["value"], "test": test,
                           "steps": cfg.steps, "model": model_path, "out": str(out)})


def evaluate(cfg: Settings, split: str, limit: int | None) -> dict:
    """`sglang-mezo eval`: the family's metrics of a model on a task split."""
    spec, family, model = _family(cfg)
    examples = tasks.subsample(tasks.load_split(spec, split, cfg.data_dir), limit, cfg.seed)
    backend = make_backend(cfg.backend, model(), cfg.dtype)
    if family.name == "class_logits":
        check_labels(examples, backend.num_labels, f"task {spec.name!r} {split}")
    if cfg.chat_template:
        examples = tasks.apply_chat_template(examples, backend.tokenizer)
    return {"task": spec.name, "split": split, "backend": cfg.backend, "model": backend.model_path,
            "chat_template": cfg.chat_template, **family.evaluate(backend, examples, with_lm=False)}


def plot(history: dict, panels, key: str, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.3 * (len(panels) + 1), 3.6))
    for ax, (k, label) in zip(axes, panels):
        pts = [(s, v) for s, v in zip(history["step"], history[k]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[-1].plot(history["eval_step"], history["dev"], marker="o")
    axes[-1].set_xlabel("step")
    axes[-1].set_ylabel(f"dev {key}")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)

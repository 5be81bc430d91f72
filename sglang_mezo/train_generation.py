"""The training job for a generation task (tasks/generation.py): MeZO on a reward of generated text, or on
the LM loss of the reference answer, with the same outputs as train.py:

    DIR/config.json, DIR/trajectory.jsonl (seeds, projected gradients, losses, the step's sampling seed:
    replay never re-generates), DIR/metrics.jsonl (per step: loss, reward, lm_loss and the time split;
    dev/test em, f1, the task's metric and lm_loss), DIR/model/ (best dev step), DIR/curves.png
"""
from __future__ import annotations

import time
from pathlib import Path

from . import reward_objectives as ro
from . import rewards, tasks
from .backends import make_backend, select_trainable
from .backends.base import hf_dtype
from .export import save_model
from .mezo import mezo_step
from .models import resolve_model
from .settings import Settings, sample_seed, seed_stream
from .train import RunFiles, batches, check_out, check_run
from .trajectory import rewind


def train_generation(cfg: Settings) -> dict:
    # Everything that can be wrong with the input is checked before anything is written.
    check_run(cfg)
    spec = tasks.get_task(cfg.task)
    objective = cfg.objective = cfg.objective or spec.metric
    if objective in ("ce", "accuracy"):
        raise ValueError(f"objective {objective!r} scores candidates of a classification task; task "
                         f"{spec.name!r} is a generation task: choose one of {ro.objective_names()} "
                         "or module:function")
    ro.check_objective(objective)
    reward_name = spec.metric if objective == ro.LM else objective
    reward_fn = rewards.get_reward(reward_name)
    hf_dtype(cfg.dtype)
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    model_path = resolve_model(cfg.model)
    data = tasks.splits(spec, k_shot=cfg.k_shot, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev,
                        n_test=cfg.n_test, data_dir=cfg.data_dir)
    gen = {"max_new_tokens": cfg.max_new_tokens if cfg.max_new_tokens is not None else spec.max_new_tokens,
           "temperature": cfg.temperature, "top_p": cfg.top_p, "stop": list(spec.stop)}
    backend = make_backend(cfg.backend, model_path, cfg.dtype)
    if cfg.chat_template:
        data = {k: tasks.apply_chat_template(v, backend.tokenizer) for k, v in data.items()}
    pieces = select_trainable(backend.pieces, cfg.trainable)
    weights = backend.weights(pieces, cfg.perturb)
    # Preflight on two training examples: generation settings and the reward function are checked here,
    # before --out is touched (a reward that raises, returns NaN or the wrong count stops the run now).
    probe = ro.Measure(backend, ro.encode(data["train"][:2], backend.tokenizer), objective, reward_name,
                       reward_fn, gen, sample_seed(cfg.seed, 0), watch=True)
    probe()

    def evaluate(split):
        return ro.evaluate(backend, data[split], spec.metric, gen, cfg.eval_batch_size, seed=cfg.seed,
                           with_lm=True)

    key = spec.metric   # the dev metric that picks the best step
    files = RunFiles(out, cfg, model_path, pieces, data, generation=gen, reward=reward_name, dev_metric=key)
    traj, log = files.traj, files.log

    history = {"step": [], "reward": [], "lm_loss": [], "eval_step": [], "dev": []}
    records, best = [], {"step": 0, "value": -1.0}

    def dev_eval(step):
        dev = evaluate("dev")
        log({"step": step, "split": "dev", **dev})
        history["eval_step"].append(step)
        history["dev"].append(dev[key])
        if dev[key] > best["value"]:  # first best wins, as HF Trainer's load_best_model_at_end
            best.update(step=step, value=dev[key])
        return dev

    try:
        dev_eval(0)
        zero_shot = evaluate("test")
        log({"step": 0, "split": "test", "zero_shot": True, **zero_shot})
        seeds = seed_stream(cfg.seed, cfg.n_queries)
        order = batches(len(data["train"]), cfg.batch_size, cfg.seed)
        from tqdm import tqdm

        bar = tqdm(range(1, cfg.steps + 1), desc=f"mezo {objective}", disable=not cfg.progress,
                   dynamic_ncols=True)
        for step in bar:
            ex = [data["train"][i] for i in next(order)]
            m = ro.Measure(backend, ro.encode(ex, backend.tokenizer), objective, reward_name, reward_fn, gen,
                           sample_seed(cfg.seed, step), cfg.watch)
            t0 = time.perf_counter()
            rec = mezo_step(weights, m, next(seeds), cfg, step)
            dt = time.perf_counter() - t0
            rec.extra = {"sample_seed": m.seed}
            traj.append(rec)
            records.append(rec)
            s = m.summary()
            split = {k: s.pop(k) for k in ("generate_s", "reward_s", "lm_s")}
            split["sweeps_and_rest_s"] = dt - sum(split.values())
            log({"step": step, "loss": rec.loss, **s, "grad": rec.grads, "time_s": dt, "time_split": split})
            history["step"].append(step)
            history["reward"].append(s.get("reward"))
            history["lm_loss"].append(s.get("lm_loss"))
            bar.set_postfix({k: f"{v:.4f}" for k, v in s.items()} | {"s_per_step": f"{dt:.2f}"})
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                dev_eval(step)
        final_dev = dev_eval(cfg.steps) if cfg.steps else {key: best["value"]}
        if cfg.keep == "last":
            best.update(step=cfg.steps, value=final_dev[key])
        if best["step"] != cfg.steps:  # keep the best dev step
            rewind(backend, pieces, cfg.perturb, records[: best["step"]])
        test = evaluate("test")
        log({"step": best["step"], "split": "test", "best_step": best["step"], **test})
    finally:
        files.close()
    save_model(model_path, backend.hf_state_dict(), hf_dtype(cfg.dtype), out / "model")
    plot(history, key, out / "curves.png", title=f"{spec.name} · {objective} · {cfg.backend}")
    backend.close()
    return {"task": spec.name, "objective": objective, "dev_metric": key,
            "zero_shot_test": zero_shot, "test": test, "best_step": best["step"],
            "best_dev": best["value"], "steps": cfg.steps, "out": str(out)}


def plot(history: dict, key: str, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, k, label in ((axes[0], "reward", "train reward (mean of ±)"),
                         (axes[1], "lm_loss", "train LM loss (mean of ±)")):
        pts = [(s, v) for s, v in zip(history["step"], history[k]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[2].plot(history["eval_step"], history["dev"], marker="o")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel(f"dev {key}")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)

"""Data-parallel MeZO across `sglang-mezo serve` replicas: they exchange scalars, never weights.

    for each step (seeds and batches drawn exactly as `train` draws them):
        split the batch into one contiguous shard per replica (sizes differ by at most one)
        every replica:  L±_i = objective on its shard at θ ± εz(s)         POST /mezo/losses
        L± = Σ n_i·L±_i / Σ n_i                                            (exact for mean objectives)
        record = mezo_step on the combined losses: g = (L+ − L−)/2ε        (mezo.py, Algorithm 1)
        every replica:  replay_step(record): θ ← θ − η(g·z(s) + λθ)        POST /mezo/apply
    every K steps (and the last) the replicas' weight checksums must agree; they go in the trajectory

A replica that does not answer, answers late or diverges is named and the run stops cleanly: the
trajectory holds every step all replicas applied. Combining by shard size is exact for objectives that
are means over examples (ce, accuracy, lm); a user objective that is not a per-example mean combines
only approximately. Transport: JSON over HTTP to the servers (serve/client.py), nothing else.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from . import tasks, trajectory
from .objectives import Measure, family_for
from .perturb import OneSeedAtATime
from .run import RunFiles, batches, check_out, steps
from .serve.client import MezoClient, MezoError
from .settings import HTTP_FIELDS

# train options with no meaning here: the model, engine and weights are the replicas' own
_FIXED = {"model": None, "backend": "sglang", "dtype": "float32", "trainable": None, "perturb": "layerwise",
          "sparsity": 0.0,   # a replica's own (serve --mezo-sparsity): its header says, and all must agree
          "eval_every": 0, "keep": "best", "num_labels": None}
# what a resumed run must share with the run it continues (its batches, seeds and steps depend on them)
_SAME_RUN = sorted(HTTP_FIELDS | {"n_train", "n_dev", "n_test", "data_dir"})


class ReplicaError(ValueError):
    """A replica is unreachable, late, inconsistent or diverged; the message names it (bad input to
    `train --replicas` as much as a bad flag: the CLI prints it without a traceback)."""


class Replica:
    def __init__(self, index: int, url: str, timeout: float, admin_api_key: str | None):
        self.index, self.url = index, url.rstrip("/")
        self.client = MezoClient(self.url, timeout=timeout, admin_api_key=admin_api_key)

    @property
    def name(self) -> str:
        return f"replica {self.index} ({self.url})"

    def call(self, op: str, fn, *args, **kw):
        import requests

        try:
            return fn(*args, **kw)
        except requests.Timeout:
            raise ReplicaError(f"{self.name} answered late: no reply to {op} within "
                               f"{self.client.timeout:g} s") from None
        except requests.RequestException:  # refused, reset, or a reply cut off mid-body (a killed server)
            raise ReplicaError(f"{self.name} does not answer {op}: connection refused or lost "
                               "(is its server running?)") from None
        except MezoError as e:
            raise ReplicaError(f"{self.name}: {op} failed with {e}") from None


def shards(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous [start, end) ranges over n items, sizes differing by at most one."""
    q, r = divmod(n, k)
    out, s = [], 0
    for i in range(k):
        e = s + q + (1 if i < r else 0)
        out.append((s, e))
        s = e
    return out


def combine(losses: list[float], sizes: list[int]) -> float:
    """The full batch's mean objective from per-shard means (a single replica's loss as it is)."""
    if len(losses) == 1:
        return losses[0]
    return math.fsum(n * l for n, l in zip(sizes, losses)) / sum(sizes)


class RemoteWeights(OneSeedAtATime):
    """The perturbation of a set of replicas: each point's loss is every replica's loss on its shard,
    combined; the update is sent afterwards as the whole step record (`Coordinator.apply`), so every
    replica applies exactly what `replay` would."""
    name = "replicas"

    def __init__(self, coord: "Coordinator"):
        self.coord = coord

    def losses(self, seed: int, scales, loss) -> list[float]:
        per = self.coord.each("/mezo/losses", lambda r, ex: r.client.losses(seed, list(scales), examples=ex,
                                                                        **self.coord.body))
        n = [p["n"] for p in per]
        return [combine([p["losses"][j] for p in per], n) for j in range(len(scales))]

    def update(self, seed: int, coef: float, decay: float) -> None:
        pass

    def flush(self) -> None:
        pass


class Coordinator:
    def __init__(self, urls: list[str], body: dict, timeout: float = 600, admin_api_key: str | None = None):
        urls = [u.strip() for u in urls if u.strip()]
        if not urls:
            raise ValueError("--replicas needs at least one URL")
        if len(set(u.rstrip("/") for u in urls)) != len(urls):
            raise ValueError(f"--replicas lists a URL twice: {urls}")
        self.replicas = [Replica(i, u, timeout, admin_api_key) for i, u in enumerate(urls)]
        self.body = body              # objective, eps, chat_template: what each /mezo/losses carries
        self.shard_examples: list[list[dict]] = []
        self.pool = ThreadPoolExecutor(len(urls))

    def each(self, op: str, fn) -> list:
        """fn(replica, its shard) on every replica at once; the first failure (in replica order) raises."""
        futs = [self.pool.submit(r.call, op, fn, r, ex) for r, ex in
                zip(self.replicas, self.shard_examples or [None] * len(self.replicas))]
        out, err = [], None
        for f in futs:
            try:
                out.append(f.result())
            except ReplicaError as e:
                err = err or e
        if err:
            raise err
        return out

    def preflight(self, batch_size: int, first_batch: list[dict]) -> dict:
        """Before any step: every replica answers, serves the same weights, layout and trajectory head,
        and accepts the request (objective, examples). Returns replica 0's info."""
        if batch_size < len(self.replicas):
            r = self.replicas[batch_size]
            raise ReplicaError(f"--batch-size {batch_size} is smaller than the number of replicas "
                               f"({len(self.replicas)}): {r.name} would get no examples")
        infos = self.each("/mezo/info", lambda r, _: r.client.info())
        ref, r0 = infos[0], self.replicas[0]
        for r, inf in zip(self.replicas, infos):
            if inf["perturb"] != "layerwise":
                raise ReplicaError(f"{r.name} perturbs {inf['perturb']!r}: data-parallel steps need the "
                                   "exact layer-wise perturbation (unset SGLANG_MEZO_PERTURB there)")
        for r, inf in zip(self.replicas[1:], infos[1:]):
            a, b = (i["trajectory_header"].get("sparsity", 0.0) for i in (inf, ref))
            if a != b:
                raise ReplicaError(f"{r.name} runs --mezo-sparsity {a}, {r0.name} {b}: replicas must perturb alike")
            if (inf["tp_size"], inf["dtype"]) != (ref["tp_size"], ref["dtype"]):
                raise ReplicaError(f"{r.name} runs tp {inf['tp_size']} / {inf['dtype']}, {r0.name} tp "
                                   f"{ref['tp_size']} / {ref['dtype']}: replicas must share one layout and dtype")
            if inf["head"] != ref["head"]:
                raise ReplicaError(f"{r.name} has a different trajectory head ({inf['steps']} steps, "
                                   f"{inf['head'][:12]}) from {r0.name} ({ref['steps']} steps, "
                                   f"{ref['head'][:12]}): roll it back or restart it")
            if inf["weights_sha256"] != ref["weights_sha256"]:
                a, b = inf["trajectory_header"]["base_model"], ref["trajectory_header"]["base_model"]
                raise ReplicaError(f"{r.name} serves different weights from {r0.name} (model {a!r} vs "
                                   f"{b!r}, sha256 {inf['weights_sha256'][:12]} vs "
                                   f"{ref['weights_sha256'][:12]}): every replica must serve the same model")
        self.set_batch(first_batch)
        self.each("/mezo/losses", lambda r, ex: r.client.losses(0, [], examples=ex, **self.body))  # no forward
        return ref

    def set_batch(self, examples: list[dict]) -> None:
        self.shard_examples = [examples[s:e] for s, e in shards(len(examples), len(self.replicas))]

    def apply(self, rec, checksum: bool) -> None:
        """Every replica applies the step's record (with shard sizes, and the checksums when asked)."""
        rec.extra = {"replicas": len(self.replicas), "shard_sizes": [len(s) for s in self.shard_examples]}
        body = asdict(rec)
        try:
            res = self.each("/mezo/apply", lambda r, _: r.client.apply(body, checksum))
        except ReplicaError as e:
            raise ReplicaError(f"{e}; step {rec.step} may be applied on the other replicas (roll them back "
                               "one step before resuming)") from None
        if checksum:
            sums = [x["weights_sha256"] for x in res]
            bad = [r for r, s in zip(self.replicas, sums) if s != sums[0]]
            if bad:
                raise ReplicaError(f"replicas diverged at step {rec.step}: " + ", ".join(
                    f"{r.name} weights sha256 {s[:12]}" for r, s in zip(self.replicas, sums)))
            rec.extra["weights_sha256"] = sums[0]

    def bytes(self) -> int:
        return sum(r.client.bytes_sent + r.client.bytes_received for r in self.replicas)

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def train_replicas(cfg, urls: list[str], checksum_every: int = 10, timeout: float = 600,
                   admin_api_key: str | None = None) -> dict:
    """`sglang-mezo train --replicas URL,...`: run.steps (the training job's loop) driven across replicas.

    Writes DIR/config.json, DIR/trajectory.jsonl (replayable with `sglang-mezo replay --base MODEL`)
    and DIR/metrics.jsonl; the trained weights live on the replicas (`/mezo/save` on any of them)."""
    given = {k: getattr(cfg, k) for k, default in _FIXED.items() if getattr(cfg, k) != default}
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
        raise ValueError(f"--replicas does not take {flags}: the model, engine, dtype, perturbation (serve "
                         "--mezo-perturb/--mezo-sparsity) and trained weights are the replicas' own; evaluate a "
                         "saved model with `sglang-mezo eval`")
    spec = tasks.get_task(cfg.task)
    # the family only; each replica resolves the objective name under its own policy (/mezo/losses)
    family = family_for(cfg, encoder=False, spec=spec, resolve=lambda name: "ce")
    if family.name != "label_words":
        raise ValueError(f"--replicas: {spec.name} is a generation task; data-parallel steps take "
                         "classification tasks")
    objective = family.objective_name
    out = Path(cfg.out)
    journal = _resumable(cfg, out, objective) if cfg.resume else None
    if journal is None:
        check_out(out, cfg.overwrite)
    data = tasks.splits(spec, k_shot=cfg.k_shot, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev,
                        n_test=cfg.n_test, data_dir=cfg.data_dir)
    train = [{"prompt": e.prompt, "candidates": list(e.candidates), "label": int(e.label)} for e in data["train"]]
    body = {"objective": objective, "eps": cfg.eps, "chat_template": cfg.chat_template}
    coord = Coordinator(urls, body, timeout, admin_api_key)
    times, sizes, done, last = [], [], 0, None
    try:
        if journal is not None:  # the replicas at the trajectory's last step, before the usual checks
            _resume_at(coord, journal)
            cfg = replace(cfg, steps=max(0, cfg.steps - len(journal[1].records)))
        ref = coord.preflight(cfg.batch_size, [train[i] for i in next(batches(len(train), cfg.batch_size, cfg.seed))])
        start = ref["steps"]
        config = {**vars(cfg), "objective": objective, "replicas": urls, "checksum_every": checksum_every,
                  "start_step": start, "start_head": ref["head"]}
        files = RunFiles(out, config, {**ref["trajectory_header"], "replicas": [r.url for r in coord.replicas]},
                         resume=journal and journal[1])
        sent = [0]

        def measure(examples, step):
            coord.set_batch(examples)
            sent[0] = coord.bytes()
            return Measure(lambda: None)   # the replicas measure (RemoteWeights)

        def commit(rec):
            i = rec.step - start
            coord.apply(rec, checksum=i % checksum_every == 0 or i == cfg.steps)
            return {"bytes": coord.bytes() - sent[0], **rec.extra}

        try:
            for last, fields, dt in steps(cfg, train, RemoteWeights(coord), measure, files, start, commit):
                times.append(dt)
                sizes.append(fields["bytes"])
                done += 1
        except ReplicaError as e:
            raise ReplicaError(f"{e}. Stopped: {out / 'trajectory.jsonl'} holds the {done} steps every "
                               "replica applied") from None
        finally:
            files.close()
    finally:
        coord.close()
    return {"steps": done, "out": str(out), "replicas": [r.url for r in coord.replicas],
            "final_loss": last.loss if last else None,
            "weights_sha256": last.extra.get("weights_sha256") if last else ref["weights_sha256"],
            "s_per_step_median": statistics.median(times) if times else None,
            "bytes_per_step_median": statistics.median(sizes) if sizes else None}


def _resumable(cfg, out: Path, objective: str) -> tuple[dict, "trajectory.Trajectory"]:
    """`--resume`: --out's config and trajectory, refused (naming the setting) if this command would draw
    other batches, seeds or steps than the run it continues."""
    path = out / "trajectory.jsonl"
    if not path.is_file() or not (out / "config.json").is_file():
        raise ValueError(f"--resume: {out} holds no run to continue (config.json and trajectory.jsonl)")
    config = json.loads((out / "config.json").read_text())
    if "start_head" not in config:
        raise ValueError(f"--resume: {out} was not written by a resumable `train --replicas` run")
    now = {**vars(cfg), "objective": objective}
    diff = [f"--{k.replace('_', '-')} {config.get(k)!r} -> {now[k]!r}" for k in _SAME_RUN if config.get(k) != now[k]]
    if diff:
        raise ValueError(f"--resume: this command differs from the run in {out}: {', '.join(diff)}")
    t = trajectory.load(path)
    if t.torn is not None:
        print(f"sglang-mezo train --resume: {path}: its last line was cut short by a crash and is dropped",
              file=sys.stderr)
    return config, t


def _resume_at(coord: Coordinator, journal) -> None:
    """Every replica must hold exactly the trajectory's steps (the same hash chain). One step more is what a
    coordinator killed between applying a step and writing it leaves (on some replicas or all): those
    replicas roll it back."""
    config, t = journal
    steps = config["start_step"] + len(t.records)
    want = trajectory.head(t.records, config["start_head"])
    for r, inf in zip(coord.replicas, coord.each("/mezo/info", lambda r, _: r.client.info())):
        if inf["steps"] == steps + 1:
            print(f"sglang-mezo train --resume: {r.name} holds step {steps + 1}, which the trajectory lacks (the "
                  "coordinator stopped before writing it): rolling it back there", file=sys.stderr)
            r.call("/mezo/rollback", r.client.rollback, 1)
            inf = r.call("/mezo/info", r.client.info)
        if inf["steps"] != steps or inf["head"] != want:
            raise ReplicaError(f"--resume: {r.name} holds {inf['steps']} steps (head {inf['head'][:12]}), the "
                               f"trajectory ends at step {steps} (head {want[:12]}): restart it with its "
                               "--mezo-run-dir journal, or roll it back to the trajectory's last step")

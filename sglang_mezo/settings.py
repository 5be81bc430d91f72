"""Every setting of a MeZO run, defined once: default, help, type and range.

`sglang-mezo train` builds its flags from `Settings` (cli.py), the /mezo/step and /mezo/train bodies are
checked by it (serve/protocol.py, JSON fields named as the attributes) and Python builds it directly, so
an input is accepted or refused the same way everywhere, with the same message. The seeds of a step
come from one scheme too (`seed_stream`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields

from .estimators import ESTIMATORS

MAX_BATCH = 1024   # examples in one step (and one /mezo/step request)


class SettingError(ValueError):
    """A setting out of type or range; the message names the field and its flag."""


def _s(default, help: str, lo=None, hi=None, choices=None, http=False, flag=None, required=False,
       below=False):
    """below=True: `hi` itself is out of range (lo <= v < hi)."""
    return field(default=default, metadata=dict(help=help, lo=lo, hi=hi, choices=choices, http=http,
                                                 flag=flag, required=required, below=below))


@dataclass(kw_only=True)
class Settings:
    # the data and objective of each step (also over HTTP)
    task: str = _s("sst2", "built-in task name or a task .yaml file", http=True)
    objective: str | None = _s(None, "classification: ce (default) | accuracy | lm | module:function; "
                               "generation: em | f1 | numeric | contains | lm | module:function (default: "
                               "the task's metric)", http=True)
    batch_size: int = _s(16, "examples per step", 1, MAX_BATCH, http=True)
    k_shot: int = _s(16, "examples per class; 0 = the 1,000/500/1,000 setting (--n-train/--n-dev)", 0,
                     100_000, http=True)
    seed: int = _s(42, "data sample and order, noise seeds (seed_stream) and sampling", 0, 2**63 - 1, http=True)
    chat_template: bool = _s(False, "wrap each prompt as a user turn with the tokenizer's chat template",
                             http=True)
    # MeZO (mezo.py)
    lr: float = _s(1e-6, "learning rate", 0, 1, http=True)
    eps: float = _s(1e-3, "perturbation scale ε", 1e-8, 1, http=True)
    weight_decay: float = _s(0.0, "weight decay (not on biases and norms)", 0, 1, http=True)
    estimator: str = _s("two_point", "two_point | one_point | fzoo (one-sided, n >= 2 directions, step / σ "
                        "of the perturbed losses)", choices=tuple(ESTIMATORS), http=True)
    n_queries: int = _s(1, "n-SPSA: seeds per step, projected gradients averaged", 1, 64, http=True)
    # generation tasks
    max_new_tokens: int | None = _s(None, "generation tasks: tokens per generation (default: the task's; "
                                    "at most the model's context)", 1, 10**6, http=True)
    temperature: float = _s(0.0, "generation tasks: 0 = greedy", 0, 10, http=True)
    top_p: float = _s(1.0, "generation tasks: nucleus sampling", 1e-6, 1, http=True)
    watch: bool = _s(True, "generation tasks: measure only the optimised objective (not reward and LM loss)")
    # the training job (`sglang-mezo train`)
    out: str | None = _s(None, "output folder", required=True)
    model: str | None = _s(None, "local HF model folder (default: embedded SmolLM2-135M), or minilm "
                           "(embedded encoder classifier)")
    num_labels: int | None = _s(None, "encoder without a classification head: classes of the seeded head "
                                "to add", 1, 100_000)
    backend: str = _s("sglang", "sglang | hf")
    steps: int = _s(100, "MeZO steps", 0, 10**9)
    n_train: int = _s(1000, "with --k-shot 0", 1, 10**9)
    n_dev: int = _s(500, "with --k-shot 0", 1, 10**9)
    n_test: int = _s(1000, "test examples", 1, 10**9)
    eval_every: int = _s(0, "dev evaluation every K steps (0: before and after training)", 0, 10**9)
    eval_batch_size: int = _s(64, "examples per engine batch in evaluation", 1, 10**6)
    dtype: str = _s("float32", "float32 | bfloat16 | float16")
    trainable: str | None = _s(None, "regex over HF parameter names (default: all)")
    data_dir: str | None = _s(None, "task data root (default: $SGLANG_MEZO_DATA, else the data shipped in "
                              "the package)")
    perturb: str = _s("layerwise", "layerwise (exact, default) | inplace (MeZO's +eps/-2eps/+eps) | lowrank "
                      "(rank-R directions as LoRA adapters, all of a step's in one batch; needs --rank)",
                      choices=("layerwise", "inplace", "lowrank"))
    rank: int | None = _s(None, "with --perturb lowrank: rank of each direction", 1, 4096)
    sparsity: float = _s(0.0, "Sparse MeZO: perturb only the weights of each matrix whose |w| is at most its "
                         "s-quantile at the step's start, 0 <= s < 1 (0: dense; --perturb layerwise only)", 0, 1,
                         below=True)
    lowrank_targets: str | None = _s(None, "with --perturb lowrank: the matrices directions cover: all (default: "
                                     "the q/k/v/o/gate/up/down projections, embed_tokens and lm_head) | "
                                     "projections | module names, comma-separated")
    keep: str = _s("best", "best (dev) step or last step as DIR/model")
    overwrite: bool = _s(False, "replace the files this job writes in a non-empty --out")
    progress: bool = _s(True, "no progress bar", flag="--progress-off")
    # data parallel (replicas.py)
    replicas: str | None = _s(None, "data parallel: drive these `sglang-mezo serve` replicas, URL[,URL...] "
                              "(each computes its shard; admin key from $SGLANG_MEZO_ADMIN_API_KEY)")
    checksum_every: int = _s(10, "with --replicas: compare the replicas' weight checksums every K steps",
                             1, 10**9)
    replica_timeout: float = _s(600.0, "with --replicas: seconds a replica may take to answer", 1e-3, 10**6)
    resume: bool = _s(False, "with --replicas: continue the run whose trajectory is in --out (the replicas must "
                      "hold the steps it records, e.g. restored from their --mezo-run-dir journals)")

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _check(f, getattr(self, f.name)))
        if self.estimator == "fzoo" and self.n_queries < 2:
            raise SettingError("'estimator' (--estimator) fzoo scales the step by the spread of the batch's "
                               f"losses: it needs 'n_queries' (--n-queries) >= 2, got {self.n_queries}")
        if self.perturb == "lowrank" and self.rank is None:
            raise SettingError("'perturb' (--perturb) lowrank needs 'rank' (--rank R)")
        if self.perturb != "lowrank" and self.rank is not None:
            raise SettingError(f"'rank' (--rank) is for --perturb lowrank (got --perturb {self.perturb})")
        if self.sparsity and self.perturb != "layerwise":
            why = ("in-place perturbation overwrites the start weights the mask is chosen from"
                   if self.perturb == "inplace" else "low-rank directions are not masked")
            raise SettingError(f"'sparsity' (--sparsity) needs --perturb layerwise ({why}; got --perturb "
                               f"{self.perturb})")
        if self.perturb != "lowrank" and self.lowrank_targets is not None:
            raise SettingError("'lowrank_targets' (--lowrank-targets) is for --perturb lowrank (got --perturb "
                               f"{self.perturb})")
        if self.lowrank_targets is not None:
            from .backends.lora import resolve_targets

            try:
                resolve_targets(self.lowrank_targets)
            except ValueError as e:
                raise SettingError(f"'lowrank_targets' {e}") from None

    @classmethod
    def from_json(cls, d: dict, **extra) -> "Settings":
        """A /mezo/* body's settings (fields that may come over HTTP only); `extra` fills the others."""
        unknown = set(d) - HTTP_FIELDS
        if unknown:
            raise SettingError(f"unknown field(s) {sorted(map(_short, unknown))}")
        return cls(**d, **extra)


def _name(f) -> str:
    return f"'{f.name}' (--{f.name.replace('_', '-')})"


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _check(f, v):
    """`v` as the setting `f` takes it, or SettingError (the same for a Python value, JSON and a flag)."""
    m, kind = f.metadata, f.type.split(" |")[0]
    if v is None and f.default is None:
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise SettingError(f"{_name(f)} must be true or false, got {_short(v)}")
        return v
    if kind == "str":
        if not isinstance(v, str) or not 0 < len(v) <= 4096:
            raise SettingError(f"{_name(f)} must be a non-empty string, got {_short(v)}")
        if m["choices"] and v not in m["choices"]:
            raise SettingError(f"{_name(f)} must be one of {', '.join(map(repr, m['choices']))}, got {_short(v)}")
        return v
    if isinstance(v, bool) or not isinstance(v, int if kind == "int" else (int, float)):
        raise SettingError(f"{_name(f)} must be {'an integer' if kind == 'int' else 'a number'}, got {_short(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise SettingError(f"{_name(f)} must be finite, got {v!r}")
    v = float(v) if kind == "float" and abs(v) < 1e300 else v   # 2 and "2" read alike: 2.0
    if m["below"] and not m["lo"] <= v < m["hi"]:
        raise SettingError(f"{_name(f)} must be at least {m['lo']:g} and below {m['hi']:g}, got {_short(v)}")
    if not m["lo"] <= v <= m["hi"]:
        raise SettingError(f"{_name(f)} must be between {m['lo']:g} and {m['hi']:g}, got {_short(v)}")
    return v


FIELDS = {f.name: f for f in fields(Settings)}
HTTP_FIELDS = {n for n, f in FIELDS.items() if f.metadata["http"]}


def add_flags(parser, only=None) -> None:
    """One flag per setting (or per setting in `only`); values are parsed by `from_flags`, so they are
    checked as JSON is."""
    for name, f in FIELDS.items() if only is None else ((n, FIELDS[n]) for n in only):
        flag, h = "--" + name.replace("_", "-"), f.metadata["help"]
        if f.type == "bool" and f.default:  # on by default: the flag turns it off
            parser.add_argument(f.metadata["flag"] or f"--no-{name.replace('_', '-')}", dest=name,
                                action="store_false", default=None, help=h)
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=h)
        else:
            parser.add_argument(flag, default=None, metavar=name.upper(), required=f.metadata["required"],
                                help=h + ("" if f.default is None else f" (default: {f.default})"))


def from_flags(ns) -> Settings:
    """Settings from parsed flags: a number is converted here and checked by Settings (same messages)."""
    kw = {}
    for name, f in FIELDS.items():
        v, kind = getattr(ns, name, None), f.type.split(" |")[0]
        if v is not None:
            try:
                kw[name] = int(v) if kind == "int" else float(v) if kind == "float" else v
            except ValueError:  # left as typed: Settings refuses the string as it refuses it in JSON
                kw[name] = v
    return Settings(**kw)


def seed_stream(seed: int, n_queries: int):
    """The one seed scheme: step k (1, 2, ...) perturbs with draws (k−1)·n … k·n−1 of Random(seed)."""
    rng = random.Random(seed)
    while True:
        yield [rng.getrandbits(32) for _ in range(n_queries)]


def step_seeds(seed: int, step: int, n_queries: int) -> list[int]:
    """Step `step`'s seeds in seed_stream (a server's steps are numbered; O(step), cheap next to a step)."""
    stream = seed_stream(seed, n_queries)
    for _ in range(step - 1):
        next(stream)
    return next(stream)


def sample_seed(seed: int, step: int) -> int:
    """The sampling seed of a generation step: both signs (and every query) generate with it."""
    return (seed * 1_000_003 + step) % 2**63

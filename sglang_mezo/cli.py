"""sglang-mezo train | eval | replay — argument parsing only; the work lives in train.py & co."""
from __future__ import annotations

import argparse
import json
import sys

from . import cpu_shims


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="sst2", help="built-in task name or a task .yaml file")
    p.add_argument("--model", default=None, help="local HF model folder (default: embedded SmolLM2-135M), "
                                                 "or minilm (embedded encoder classifier)")
    p.add_argument("--num-labels", type=int, default=None,
                   help="encoder without a classification head: classes of the seeded head to add")
    p.add_argument("--backend", default="sglang", help="sglang | hf")
    p.add_argument("--objective", default=None,
                   help="classification: ce (default) | accuracy | lm | module:function; generation: "
                        "em | f1 | numeric | contains | lm | module:function (default: the task's metric)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--k-shot", type=int, default=16, help="examples per class; 0 = 1,000/500/1,000 setting")
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--estimator", default="two_point",
                   help="two_point | one_point | fzoo (one-sided, n >= 2 directions, step / σ of the losses)")
    p.add_argument("--n-queries", type=int, default=1, help="n-SPSA: seeds per step")
    p.add_argument("--trainable", default=None, help="regex over HF parameter names (default: all)")
    p.add_argument("--data-dir", default=None,
                   help="task data root (default: $SGLANG_MEZO_DATA, else the data shipped in the package)")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap each prompt as a user turn with the tokenizer's chat template")
    p.add_argument("--n-train", type=int, default=1000, help="with --k-shot 0")
    p.add_argument("--n-dev", type=int, default=500, help="with --k-shot 0")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--perturb", default="layerwise",
                   help="layerwise (exact, default) | inplace (MeZO's +eps/-2eps/+eps) | lowrank (rank-R "
                        "directions as LoRA adapters, all of a step's in one batch; needs --rank)")
    p.add_argument("--rank", type=int, default=None, help="with --perturb lowrank: rank of each direction")
    p.add_argument("--keep", default="best", help="best (dev) step or last step as DIR/model")
    p.add_argument("--eval-batch-size", type=int, default=64, help="examples per engine batch in evaluation")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation tasks: tokens per generation (default: the task's)")
    p.add_argument("--temperature", type=float, default=0.0, help="generation tasks: 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="generation tasks: nucleus sampling")
    p.add_argument("--no-watch", dest="watch", action="store_false",
                   help="generation tasks: measure only the optimised objective (not reward and LM loss)")
    p.add_argument("--replicas", default=None, metavar="URL[,URL...]",
                   help="data parallel: drive these `sglang-mezo serve` replicas (each computes its shard "
                        "of the batch; admin key from $SGLANG_MEZO_ADMIN_API_KEY)")
    p.add_argument("--checksum-every", type=int, default=10,
                   help="with --replicas: compare the replicas' weight checksums every K steps")
    p.add_argument("--replica-timeout", type=float, default=600,
                   help="with --replicas: seconds a replica may take to answer before the run stops")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--progress-off", dest="progress", action="store_false", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # every other flag is sglang.launch_server's own
        from .serve.server import main as serve

        return serve(argv[1:])
    ap = argparse.ArgumentParser(prog="sglang-mezo", description="MeZO fine-tuning inside SGLang")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="SGLang server (sglang.launch_server flags) with /mezo/* training routes; "
                   "operator flags --mezo-objective NAME=module:function, --mezo-task-dir, --mezo-save-dir "
                   "(README: Security)")
    _train_args(sub.add_parser("train", help="fine-tune with MeZO"))
    e = sub.add_parser("eval", help="accuracy of a model on a task split (one JSON line)")
    e.add_argument("--model", default=None)
    e.add_argument("--num-labels", type=int, default=None, help="encoder without a head (as train)")
    e.add_argument("--task", default="sst2")
    e.add_argument("--split", default="test")
    e.add_argument("--backend", default="sglang")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--limit", type=int, default=None,
                   help="N examples drawn with --seed (the same test subset `train --n-test N --seed S` uses)")
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--chat-template", action="store_true",
                   help="wrap each prompt as a user turn with the tokenizer's chat template")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-new-tokens", type=int, default=None, help="generation tasks (default: the task's)")
    r = sub.add_parser("replay", help="rebuild trained weights from base model + trajectory")
    r.add_argument("--base", default=None, help="base model folder (default: the one in the trajectory)")
    r.add_argument("--trajectory", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--upto", type=int, default=None, help="stop after this step")
    args = ap.parse_args(argv)
    cpu_shims.install()
    try:
        if args.cmd == "train":
            from .train import TrainConfig, train

            kw = {k: v for k, v in vars(args).items() if k != "cmd"}
            kw["k_shot"] = kw["k_shot"] or None
            urls, every, timeout = kw.pop("replicas"), kw.pop("checksum_every"), kw.pop("replica_timeout")
            if urls is not None:  # data parallel across serving replicas
                import os

                from .replicas import train_replicas

                print(json.dumps(train_replicas(TrainConfig(**kw), urls.split(","), every, timeout,
                                                os.environ.get("SGLANG_MEZO_ADMIN_API_KEY"))))
            else:
                print(json.dumps(train(TrainConfig(**kw))))
        elif args.cmd == "eval":
            print(json.dumps(evaluate_cmd(args)))
        elif args.cmd == "replay":
            print(json.dumps(replay_cmd(args)))
    except (ValueError, ArithmeticError, FileNotFoundError) as err:
        print(f"sglang-mezo {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    return 0


def evaluate_cmd(args) -> dict:
    from . import objectives, tasks
    from .backends import make_backend
    from .models import is_encoder_model, resolve_model

    if is_encoder_model(args.model):  # class logits of a BERT / XLM-R classifier
        from .train_encoder import evaluate_encoder

        return evaluate_encoder(args.model, args.task, args.split, args.backend, args.dtype, args.limit,
                                args.seed, args.data_dir, args.batch_size, args.num_labels)
    spec = tasks.get_task(args.task)
    examples = tasks.subsample(tasks.load_split(spec, args.split, args.data_dir), args.limit, args.seed)
    backend = make_backend(args.backend, resolve_model(args.model), args.dtype)
    if tasks.is_generation(spec):  # em, f1, the task's metric and the LM loss of the reference answers
        from . import reward_objectives

        if args.chat_template:
            examples = tasks.apply_chat_template(examples, backend.tokenizer)
        gen = {"max_new_tokens": args.max_new_tokens or spec.max_new_tokens, "stop": list(spec.stop)}
        res = reward_objectives.evaluate(backend, examples, spec.metric, gen, args.batch_size, args.seed)
        return {"task": spec.name, "split": args.split, "backend": args.backend, **res}
    if args.chat_template:
        examples = tasks.apply_chat_template(examples, backend.tokenizer)
    res = objectives.evaluate(backend, examples, spec.single_token_labels, args.batch_size)
    return {"task": spec.name, "split": args.split, "backend": args.backend,
            "chat_template": args.chat_template, **res}


def replay_cmd(args) -> dict:
    from pathlib import Path

    from .backends.base import hf_dtype
    from .export import save_model
    from .models import resolve_model
    from .train import check_out
    from .trajectory import read, replay

    header, records = read(args.trajectory)
    base = resolve_model(args.base or header["base_model"])
    check_out(Path(args.out), overwrite=None)
    weights = replay(base, args.trajectory, args.upto)
    save_model(base, weights, hf_dtype(header["dtype"]), args.out)
    return {"out": args.out, "steps": len(records) if args.upto is None else args.upto}


if __name__ == "__main__":
    sys.exit(main())

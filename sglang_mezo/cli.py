"""sglang-mezo train | eval | replay | serve — argument parsing only; the work lives in run.py, trajectory.py
and serve/."""
from __future__ import annotations

import argparse
import json
import sys

from . import cpu_shims
from .settings import add_flags, from_flags


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # every other flag is sglang.launch_server's own
        from .serve.http import main as serve

        return serve(argv[1:])
    ap = argparse.ArgumentParser(prog="sglang-mezo", description="MeZO fine-tuning inside SGLang")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="SGLang server (sglang.launch_server flags) with /mezo/* training routes; "
                   "operator flags --mezo-objective NAME=module:function, --mezo-task-dir, --mezo-save-dir "
                   "(docs/serving-and-security.md)")
    add_flags(sub.add_parser("train", help="fine-tune with MeZO (flags: settings.py, as /mezo/step's fields)"))
    e = sub.add_parser("eval", help="accuracy of a model on a task split (one JSON line)")
    add_flags(e, ("model", "num_labels", "task", "backend", "dtype", "seed", "data_dir", "chat_template",
                  "max_new_tokens"))  # the settings eval shares with train
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None,
                   help="N examples drawn with --seed (the same test subset `train --n-test N --seed S` uses)")
    e.add_argument("--batch-size", dest="eval_batch_size", help="examples per engine batch (default: 64)")
    r = sub.add_parser("replay", help="rebuild trained weights from base model + trajectory")
    r.add_argument("--base", default=None, help="base model folder (default: the one in the trajectory)")
    r.add_argument("--trajectory", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--upto", type=int, default=None, help="stop after this step")
    args = ap.parse_args(argv)
    cpu_shims.install()
    try:
        if args.cmd == "train":
            from .run import train

            cfg = from_flags(args)
            if cfg.replicas is not None:  # data parallel across serving replicas
                import os

                from .replicas import train_replicas

                print(json.dumps(train_replicas(cfg, cfg.replicas.split(","), cfg.checksum_every,
                                                cfg.replica_timeout, os.environ.get("SGLANG_MEZO_ADMIN_API_KEY"))))
            else:
                print(json.dumps(train(cfg)))
        elif args.cmd == "eval":
            from .run import evaluate

            print(json.dumps(evaluate(from_flags(args), args.split, args.limit)))
        elif args.cmd == "replay":
            print(json.dumps(replay_cmd(args)))
    except (ValueError, ArithmeticError, FileNotFoundError) as err:
        print(f"sglang-mezo {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    return 0


def replay_cmd(args) -> dict:
    from pathlib import Path

    from .backends.base import hf_dtype
    from .export import save_model
    from .models import resolve_model
    from .run import check_out
    from .trajectory import read, replay

    header, records = read(args.trajectory)
    base = resolve_model(args.base or header["base_model"])
    check_out(Path(args.out), overwrite=None)
    state = replay(base, args.trajectory, args.upto)
    save_model(base, state, hf_dtype(header["dtype"]), args.out)
    return {"out": args.out, "steps": len(records) if args.upto is None else args.upto}


if __name__ == "__main__":
    sys.exit(main())

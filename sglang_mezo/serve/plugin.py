"""SGLang general plugin (entry point group `sglang.srt.plugins`): adds `Scheduler.mezo_call`.

SGLang runs `register()` in every one of its processes, the spawned schedulers included, so the method
is there when the HTTP server (or `Engine.collective_rpc`) asks for it. An RPC returns only success, so
the result travels as a small JSON file that TP rank 0 (alone) writes atomically.
"""
from __future__ import annotations

import json
import logging
import os

_trainer = None
log = logging.getLogger("sglang_mezo.serve")


def register() -> None:
    from sglang.srt.managers.scheduler import Scheduler

    from ..backends import register_models

    Scheduler.mezo_call = mezo_call
    register_models()  # before the scheduler builds its model: the mean-pooled classifier is ours


def _get_trainer(sched):
    global _trainer
    if _trainer is None:
        from sglang.srt.managers.io_struct import ContinueGenerationReqInput, PauseGenerationReqInput

        from ..backends import attach_backend
        from .policy import Policy
        from .trainer import ServedTrainer

        runner = sched.tp_worker.model_runner
        backend = attach_backend(runner, sched.tokenizer, sched.server_args.model_path,
                                 group=sched.tp_group)  # TP ranks gather through SGLang's own group

        def flush():
            if not sched.flush_cache(empty_cache=False):
                raise RuntimeError("could not flush SGLang's cache while paused")

        _trainer = ServedTrainer(
            backend,
            pause=lambda: sched.pause_generation(PauseGenerationReqInput(mode="retract")),
            resume=lambda: sched.continue_generation(ContinueGenerationReqInput()),
            flush=flush,
            perturb=os.environ.get("SGLANG_MEZO_PERTURB", "layerwise"),
            policy=Policy.from_env())  # set by `sglang-mezo serve`: requests come over HTTP
    return _trainer


def mezo_call(self, op: str, args_json: str, result_path: str) -> None:
    from .protocol import RequestError

    try:
        from . import replica_ops

        trainer, args = _get_trainer(self), json.loads(args_json)
        res = replica_ops.handle(trainer, op, args) if op in replica_ops.OPS else trainer.handle(op, args)
        out = {"status": 200, "result": res}
    except RequestError as e:
        out = {"status": e.status, "result": {"error": str(e)}}
    except ArithmeticError as e:  # NaN objective: weights were restored, the request was at fault
        out = {"status": 422, "result": {"error": str(e)}}
    except Exception as e:  # noqa: BLE001 - report, never take the scheduler down
        # the client gets the message; the traceback (internals, paths) stays in the server's log
        log.exception("MeZO %s failed", op)
        out = {"status": 500, "result": {"error": f"{op} failed: {type(e).__name__}: {e}"}}
    # every TP rank runs the call; only rank 0 answers (the Scheduler keeps its rank in tp_group)
    if self.tp_group.rank_in_group == 0:
        tmp = result_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(out, f)
        os.replace(tmp, result_path)

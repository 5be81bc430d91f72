"""The one seam to SGLang's processes: an SGLang general plugin (entry point group `sglang.srt.plugins`).

SGLang's `load_plugins()` runs `register()` in each of its processes (the spawned schedulers too, at the
start of `run_scheduler_process`) and then applies HookRegistry's hooks, before any Scheduler exists.
`register()` adds one AROUND hook on `Scheduler.handle_rpc_request`: an RPC naming METHOD runs a MeZO
operation there, on the scheduler's thread between batches, and its JSON result travels back in the
RpcReqOutput's `message` over SGLang's own RPC socket (rank 0's reply is the one the caller reads).
Every other RPC goes to SGLang unchanged. `call()` is the caller's half (HTTP process or sglang.Engine).
"""
from __future__ import annotations

import json
import logging

METHOD = "mezo"
TARGET = "sglang.srt.managers.scheduler.Scheduler.handle_rpc_request"
MODELS_TARGET = "sglang.srt.managers.scheduler.Scheduler.__init__"
PREFILL_TARGET = "sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill"
log = logging.getLogger("sglang_mezo.serve")


def register() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from ..backends.sglang_patches import apply_all

    apply_all()  # patches/*.diff, in memory, in every SGLang process (multi-LoRA on CPU needs 0001)
    HookRegistry.register(TARGET, SchedulerSide().handle_rpc_request, HookType.AROUND)
    # training in spare capacity (load.py): low-rank training requests wait while users are served,
    # and the scheduler's user load is observed for the idle schedule and /mezo/status
    from .load import PROBE

    HookRegistry.register(PREFILL_TARGET, PROBE.around_prefill, HookType.AROUND)
    # our model classes (the mean-pooled BERT classifier), added to SGLang's registry where a model is
    # built: just before a Scheduler starts. Not here: the registry imports every SGLang model (seconds),
    # which the HTTP and detokenizer processes never need.
    HookRegistry.register(MODELS_TARGET, _register_models, HookType.BEFORE)


def _register_models(*args, **kwargs) -> None:
    from ..backends import register_models

    register_models()


class SchedulerSide:
    """One per process (held by the hook): the scheduler's ServedTrainer, built on the first MeZO call."""

    def __init__(self):
        self.trainer = None

    def handle_rpc_request(self, original, sched, recv_req):
        if recv_req.method != METHOD:
            return original(sched, recv_req)
        import torch.distributed as dist
        from sglang.srt.managers.io_struct import RpcReqOutput

        out = self.run(sched, **(recv_req.parameters or {}))
        # as SGLang's own handler does: the TP ranks leave the call together
        dist.barrier(group=sched.tp_group.cpu_group)
        return RpcReqOutput(success=True, message=json.dumps(out))

    def run(self, sched, op: str = "", args_json: str = "{}") -> dict:
        from .protocol import RequestError

        try:
            return {"status": 200, "result": self._trainer(sched).handle(op, json.loads(args_json))}
        except RequestError as e:
            return {"status": e.status, "result": {"error": str(e)}}
        except ArithmeticError as e:  # NaN objective: weights were restored, the request was at fault
            return {"status": 422, "result": {"error": str(e)}}
        except Exception as e:  # noqa: BLE001 - report, never take the scheduler down
            # the client gets the message; the traceback (internals, paths) stays in the server's log
            log.exception("MeZO %s failed", op)
            return {"status": 500, "result": {"error": f"{op} failed: {type(e).__name__}: {e}"}}

    def _trainer(self, sched):
        if self.trainer is None:
            import os

            from sglang.srt.managers.io_struct import ContinueGenerationReqInput, PauseGenerationReqInput

            from ..backends import attach_backend
            from ..backends.sglang_runner import check_version
            from .load import PROBE
            from .ops import ServedTrainer
            from .policy import Policy

            check_version()  # as the CLI: the pinned SGLang, and (below) the engine layout checked
            backend = attach_backend(sched.tp_worker.model_runner, sched.tokenizer,  # encoder or decoder
                                     sched.server_args.model_path, verify_layout=True,
                                     group=sched.tp_group)  # TP ranks gather through SGLang's group

            def flush():
                if not sched.flush_cache(empty_cache=False):
                    raise RuntimeError("could not flush SGLang's cache while paused")

            PROBE.attach(sched)
            self.trainer = ServedTrainer(
                backend,
                pause=lambda: sched.pause_generation(PauseGenerationReqInput(mode="retract")),
                resume=lambda: sched.continue_generation(ContinueGenerationReqInput()),
                flush=flush,
                perturb_mode=os.environ.get("SGLANG_MEZO_PERTURB", "layerwise"),
                rank=int(os.environ["SGLANG_MEZO_RANK"]) if os.environ.get("SGLANG_MEZO_RANK") else None,
                policy=Policy.from_env(),  # set by `sglang-mezo serve`: requests come over HTTP
                probe=PROBE)
        return self.trainer


def call(sock, op: str, args: dict) -> tuple[int, dict]:
    """Blocking, on a DEALER socket to the schedulers' RPC address: (HTTP-like status, result)."""
    from sglang.srt.managers.io_struct import RpcReqInput, RpcReqOutput, sock_recv, sock_send

    sock_send(sock, RpcReqInput(method=METHOD, parameters={"op": op, "args_json": json.dumps(args)}))
    reply = sock_recv(sock)
    if not isinstance(reply, RpcReqOutput) or not reply.success:
        return 500, {"error": f"scheduler RPC failed: {getattr(reply, 'message', reply)}"}
    out = json.loads(reply.message)
    return out["status"], out["result"]

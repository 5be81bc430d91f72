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
import time

METHOD = "mezo"
TARGET = "sglang.srt.managers.scheduler.Scheduler.handle_rpc_request"
MODELS_TARGET = "sglang.srt.managers.scheduler.Scheduler.__init__"
# under --dp-size N, SGLang's data-parallel controller gives each DP rank's scheduler fresh PortArgs, so
# the RPC address the HTTP process binds reaches none of them: name each rank's address after it
DP_TARGET = ("sglang.srt.managers.data_parallel_controller.DataParallelController."
             "launch_tensor_parallel_group_thread")
PREFILL_TARGET = "sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill"
log = logging.getLogger("sglang_mezo.serve")


def register() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from ..backends.sglang_patches import apply_all

    apply_all()  # patches/*.diff, in memory, in every SGLang process (multi-LoRA on CPU needs 0001)
    side = SchedulerSide()
    HookRegistry.register(TARGET, side.handle_rpc_request, HookType.AROUND)
    # `serve --mezo-run-dir`: the journal is replayed when a Scheduler has finished building, before it
    # reports ready — SGLang opens the HTTP port (and /health) only after every scheduler is ready
    HookRegistry.register(MODELS_TARGET, side.restore_journal, HookType.AFTER)
    # training in spare capacity (load.py): low-rank training requests wait while users are served,
    # and the scheduler's user load is observed for the idle schedule and /mezo/status
    from .load import PROBE

    HookRegistry.register(PREFILL_TARGET, PROBE.around_prefill, HookType.AROUND)
    # our model classes (the mean-pooled BERT classifier), added to SGLang's registry where a model is
    # built: just before a Scheduler starts. Not here: the registry imports every SGLang model (seconds),
    # which the HTTP and detokenizer processes never need.
    HookRegistry.register(MODELS_TARGET, _register_models, HookType.BEFORE)
    HookRegistry.register(DP_TARGET, _name_dp_rpc, HookType.BEFORE)


def dp_rpc_name(rpc_ipc_name: str, dp_rank: int) -> str:
    """The RPC address of DP rank `dp_rank`'s scheduler, derived from the server's own (ipc:// only)."""
    return f"{rpc_ipc_name}.dp{dp_rank}"


def _name_dp_rpc(controller, server_args, rank_port_args, base_gpu_id, dp_rank, *args, **kwargs) -> None:
    if controller.port_args.rpc_ipc_name.startswith("ipc://"):
        rank_port_args.rpc_ipc_name = dp_rpc_name(controller.port_args.rpc_ipc_name, dp_rank)


def _register_models(*args, **kwargs) -> None:
    from ..backends import register_models

    register_models()


class SchedulerSide:
    """One per process (held by the hook): the scheduler's ServedTrainer, built on the first MeZO call."""

    def __init__(self):
        self.trainer = None

    def restore_journal(self, result, sched, *args, **kwargs) -> None:
        import os

        from .journal import RUN_DIR_ENV

        if os.environ.get(RUN_DIR_ENV):  # a journal that cannot be used raises: the server does not start
            self._trainer(sched)

    def handle_rpc_request(self, original, sched, recv_req):
        if recv_req.method != METHOD:
            return original(sched, recv_req)
        import torch.distributed as dist
        from sglang.srt.managers.io_struct import RpcReqOutput

        params = dict(recv_req.parameters or {})
        call_id = params.pop("call_id", None)
        out = self.run(sched, **params)
        # as SGLang's own handler does: the TP ranks leave the call together
        dist.barrier(group=sched.tp_group.cpu_group)
        return RpcReqOutput(success=True, message=json.dumps({**out, "call_id": call_id}))

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
            from sglang.srt.runtime_context import get_parallel

            from ..backends import attach_backend
            from ..backends.lora import engine_lora_targets
            from ..backends.sglang_runner import check_version
            from .journal import BASE_SHA256_ENV, RUN_DIR_ENV
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
            trainer = ServedTrainer(
                backend,
                pause=lambda: sched.pause_generation(PauseGenerationReqInput(mode="retract")),
                resume=lambda: sched.continue_generation(ContinueGenerationReqInput()),
                flush=flush,
                perturb_mode=os.environ.get("SGLANG_MEZO_PERTURB", "layerwise"),
                rank=int(os.environ["SGLANG_MEZO_RANK"]) if os.environ.get("SGLANG_MEZO_RANK") else None,
                sparsity=float(os.environ.get("SGLANG_MEZO_SPARSITY") or 0.0),
                lowrank_targets=os.environ.get("SGLANG_MEZO_LOWRANK_TARGETS") or engine_lora_targets(sched.server_args),
                policy=Policy.from_env(),  # set by `sglang-mezo serve`: requests come over HTTP
                base_sha256=os.environ.get(BASE_SHA256_ENV),
                dp_rank=get_parallel().dp_rank or 0,  # --dp-size N: rank 0 writes the journal
                probe=PROBE)
            if os.environ.get(RUN_DIR_ENV):
                trainer.open_journal(os.environ[RUN_DIR_ENV])
            self.trainer = trainer
        return self.trainer


class NoReply(TimeoutError):
    """A scheduler did not answer an RPC in time."""


def call(sock, op: str, args: dict, timeout: float | None = None) -> tuple[int, dict]:
    """Blocking, on a DEALER socket to the schedulers' RPC address: (HTTP-like status, result).

    Each call carries an id its reply echoes, so a late reply to an abandoned call (NoReply after
    `timeout` seconds) is skipped, never taken for the answer to a later call."""
    import uuid

    import zmq
    from sglang.srt.managers.io_struct import RpcReqInput, RpcReqOutput, sock_recv, sock_send

    call_id = uuid.uuid4().hex
    deadline = None if timeout is None else time.monotonic() + timeout
    # a DEALER with no scheduler connected would block in send: wait for one, as long as the deadline
    if deadline is not None and not sock.poll(int(timeout * 1000), zmq.POLLOUT):
        raise NoReply(f"no scheduler took {op} within {timeout:g} s")
    sock_send(sock, RpcReqInput(method=METHOD, parameters={"op": op, "args_json": json.dumps(args),
                                                           "call_id": call_id}))
    while True:
        if deadline is not None and not sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            raise NoReply(f"no reply to {op} within {timeout:g} s")
        reply = sock_recv(sock)
        if not isinstance(reply, RpcReqOutput) or not reply.success:
            return 500, {"error": f"scheduler RPC failed: {getattr(reply, 'message', reply)}"}
        out = json.loads(reply.message)
        if out.get("call_id") == call_id:
            return out["status"], out["result"]

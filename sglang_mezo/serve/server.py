"""`sglang-mezo serve <sglang.launch_server flags>`: a normal SGLang server plus /mezo/* routes.

The routes run in the HTTP process and reach the schedulers through SGLang's RPC channel (the same one
`Engine.collective_rpc` uses), one call at a time; ordinary requests keep flowing between calls.
(No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.)
"""
import asyncio
import json
import os
import sys
import tempfile
import uuid

from .. import cpu_shims
from .protocol import RequestError, parse_rollback, parse_save, parse_step, parse_train

_rpc = None          # DEALER socket to the schedulers, opened on first use
_port_args = None    # SGLang's IPC names, captured when it launches its processes


class _State:
    def __init__(self):
        self.lock = asyncio.Lock()
        self.train_task = None
        self.progress = {"running": False, "done": 0, "total": 0, "last": None, "error": None}


_state: _State | None = None


def _rpc_call(op: str, args: dict) -> tuple[int, dict]:
    """Blocking: send mezo_call to every scheduler and read rank 0's result file."""
    import zmq
    from sglang.srt.managers.io_struct import RpcReqInput, RpcReqOutput
    from sglang.srt.utils.network import get_zmq_socket

    global _rpc
    if _rpc is None:
        _rpc = get_zmq_socket(zmq.Context(), zmq.DEALER, _port_args.rpc_ipc_name, True)
    path = os.path.join(tempfile.gettempdir(), f"sglang_mezo_{os.getpid()}_{uuid.uuid4().hex}.json")
    try:
        _send(_rpc, RpcReqInput(method="mezo_call",
                                parameters={"op": op, "args_json": json.dumps(args), "result_path": path}))
        reply = _recv(_rpc)
        if not isinstance(reply, RpcReqOutput) or not reply.success:
            return 500, {"error": f"scheduler RPC failed: {getattr(reply, 'message', reply)}"}
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        return out["status"], out["result"]
    finally:
        if os.path.exists(path):
            os.remove(path)


def _send(sock, obj):
    from sglang.srt.managers.io_struct import sock_send

    sock_send(sock, obj)


def _recv(sock):
    from sglang.srt.managers.io_struct import sock_recv

    return sock_recv(sock)


async def call(op: str, args: dict) -> tuple[int, dict]:
    return await asyncio.to_thread(_rpc_call, op, args)


def _add_routes(app) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    def reply(status: int, body: dict) -> JSONResponse:
        return JSONResponse(body, status_code=status)

    async def body(request: Request):
        try:
            return json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as e:
            raise RequestError(f"body is not valid JSON: {e.msg}") from None

    def state() -> _State:
        global _state
        if _state is None:
            _state = _State()
        return _state

    async def exclusive(op: str, args: dict):
        st = state()
        if st.lock.locked() or (st.train_task and not st.train_task.done()):
            raise RequestError("a MeZO step or training run is in progress", 409)
        async with st.lock:
            return await call(op, args)

    def route(path, method="post"):
        def deco(fn):
            async def handler(request: Request):
                try:
                    return reply(*(await fn(request)))
                except RequestError as e:
                    return reply(e.status, {"error": str(e)})
            getattr(app, method)(path)(handler)
            return fn
        return deco

    @route("/mezo/step")
    async def step(request):
        args = await body(request)
        parse_step(args)
        return await exclusive("step", args)

    @route("/mezo/rollback")
    async def rollback(request):
        args = await body(request)
        parse_rollback(args)
        return await exclusive("rollback", args)

    @route("/mezo/save")
    async def save(request):
        args = await body(request)
        parse_save(args)
        return await exclusive("save", args)

    @route("/mezo/status", "get")
    async def status(request):
        st = state()
        if st.lock.locked():
            return 200, {**st.progress}
        async with st.lock:
            code, res = await call("status", {})
        return code, {**st.progress, **res}

    @route("/mezo/train")
    async def train(request):
        args = await body(request)
        steps, interval, _ = parse_train(args)
        st = state()
        if st.lock.locked() or (st.train_task and not st.train_task.done()):
            raise RequestError("a MeZO step or training run is in progress", 409)
        step_args = {k: v for k, v in args.items() if k not in ("steps", "interval_s")}
        st.progress = {"running": True, "done": 0, "total": steps, "last": None, "error": None}

        async def run():
            try:
                for i in range(steps):
                    async with st.lock:  # released between steps: other routes answer 409 meanwhile
                        code, res = await call("step", step_args)
                    if code != 200:
                        st.progress["error"] = res.get("error", res)
                        break
                    st.progress.update(done=i + 1, last=res)
                    await asyncio.sleep(interval)  # ordinary requests run freely between steps
            finally:
                st.progress["running"] = False

        st.train_task = asyncio.create_task(run())
        return 202, {"started": True, "steps": steps}


def _capture_port_args() -> None:
    """SGLang creates its IPC names inside Engine._launch_subprocesses; keep them for our RPC socket."""
    from sglang.srt.entrypoints.engine import Engine

    original = Engine._launch_subprocesses  # a classmethod, bound to Engine

    def launch(cls, *a, **kw):
        global _port_args
        out = original(*a, **kw)
        for item in out if isinstance(out, tuple) else (out,):
            if hasattr(item, "rpc_ipc_name"):
                _port_args = item
        return out

    Engine._launch_subprocesses = classmethod(launch)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if cpu_shims.install():  # CPU: SGLang's CPU backends and one OpenMP thread per process
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        defaults = {"--device": "cpu", "--attention-backend": "torch_native", "--sleep-on-idle": None,
                    "--disable-cuda-graph": None, "--max-total-tokens": "8192"}
        for flag, val in defaults.items():
            if flag not in argv:
                argv += [flag] + ([val] if val else [])
    from sglang.srt.entrypoints.http_server import app, launch_server
    from sglang.srt.server_args import prepare_server_args

    server_args = prepare_server_args(argv)
    _capture_port_args()
    _add_routes(app)
    launch_server(server_args)
    return 0

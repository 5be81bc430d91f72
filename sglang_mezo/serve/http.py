"""`sglang-mezo serve <sglang.launch_server flags>`: a normal SGLang server plus /mezo/* routes.

The routes run in the HTTP process and reach the schedulers through SGLang's RPC channel (the same one
`Engine.collective_rpc` uses; plugin.py answers there), one call at a time; ordinary requests keep
flowing between calls. The socket is opened through launch_server's public init_tokenizer_manager_func.
The routes that change the served model carry SGLang's own admin auth level, like its weight-update
routes; what a request may name (objectives, tasks, save folders) is limited by policy.py.
(No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.)
"""
import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys

from .. import cpu_shims
from ..settings import FIELDS, SettingError, Settings
from . import plugin, schedule
from .load import PIECE_TOKENS_DEFAULT, PIECE_TOKENS_ENV
from .policy import ENV as POLICY_ENV
from .policy import Policy, builtin_objectives
from .protocol import PARSERS, RequestError, parse_step, parse_train

log = logging.getLogger("sglang_mezo.serve")
MAX_BODY = 1 << 20   # bytes; a step's examples fit easily, a flood does not reach json.loads


class Service:
    """The /mezo/* side of one server: what requests may name, the keys, the RPC socket, one run's state."""

    def __init__(self, policy: Policy, keys: tuple = (None, None)):
        self.policy, self.keys = policy, keys   # keys: (api_key, admin_api_key) the server started with
        self.schedulers = None                  # dp.Schedulers: the RPC sockets (init_tokenizer_manager)
        self.rpc_timeout = None                 # seconds a scheduler may take to answer (--mezo-rpc-timeout)
        self.tokenizer_manager = None           # SGLang's, for low-rank steps' adapter requests
        self.lowrank = None  # (rank, tp_size, max_lora_rank, max_loras_per_batch) with --mezo-perturb lowrank
        self.train_priority = None  # low-rank steps' requests: the lowest priority (schedule.py)
        self.lock = asyncio.Lock()
        self.train_task = None
        self.progress = {"running": False, "done": 0, "total": 0, "last": None, "error": None}
        self.stop = asyncio.Event()     # /mezo/train stops at the next step boundary (/mezo/stop, a signal)
        self.shutting_down = False      # after SIGTERM/SIGINT: no new steps, then SGLang's own shutdown
        self.down = False               # SGLang's shutdown has begun: no more calls to the schedulers
        self.last_step = None           # the last step a client was told of (the log names it on exit)
        self._tasks: set = set()

    def init_tokenizer_manager(self, server_args, port_args, *a, **kw):
        """launch_server's public `init_tokenizer_manager_func`: SGLang's own, plus our RPC socket."""
        import zmq
        from sglang.srt.entrypoints.engine import init_tokenizer_manager
        from sglang.srt.utils.network import get_zmq_socket

        from .dp import Schedulers

        ctx, dp = zmq.Context(), server_args.dp_size
        names = [port_args.rpc_ipc_name] if dp == 1 else \
            [plugin.dp_rpc_name(port_args.rpc_ipc_name, r) for r in range(dp)]  # plugin names them so
        self.schedulers = Schedulers([get_zmq_socket(ctx, zmq.DEALER, n, True) for n in names], self.rpc_timeout)
        out = init_tokenizer_manager(server_args, port_args, *a, **kw)
        self.tokenizer_manager = out[0]  # (TokenizerManager, TemplateManager)
        # SGLang installs this class's handlers (its public hook for them) on its first request
        self.tokenizer_manager.signal_handler_class = _stop_training_first(
            self, self.tokenizer_manager.signal_handler_class)
        return out

    async def stopped(self) -> None:
        """Until /mezo/train has left its loop and no /mezo step is in flight (its record journaled)."""
        if self.train_task is not None:
            await asyncio.wait([self.train_task])
        async with self.lock:
            pass

    def shutdown(self, then, signame: str) -> None:
        """A signal: /mezo/train stops at the next step boundary (no new ±ε forwards), then `then()` —
        SGLang's own handling — runs. A second signal runs it at once."""
        if self.shutting_down:
            then()
            return
        self.shutting_down = True
        self.stop.set()
        log.warning("MeZO: %s: training stops at the next step boundary, then the server shuts down", signame)

        async def after():
            await self.stopped()
            log.warning("MeZO: %s: training stopped; the last step is %s (journal complete); SGLang shuts "
                        "down now", signame, self.last_step)
            self.down = True   # the schedulers go now: a request still asking them would hold the drain
            then()

        task = asyncio.get_running_loop().create_task(after())
        self._tasks.add(task)  # held: the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def call(self, op: str, args: dict) -> tuple[int, dict]:
        if self.down:  # answered here: a scheduler that exits mid-call would never reply (--mezo-rpc-timeout)
            return 503, {"error": "the server is shutting down"}
        return await self.schedulers.call(op, args)

    async def step(self, args: dict, quiet_s: float | None = None) -> tuple[int, dict]:
        """A step: full-rank in the scheduler (serving paused for it), or low-rank beside user traffic.
        With `quiet_s` (the idle schedule) only if users left the engine idle that long, else {"busy": load}."""
        if self.lowrank is None:
            if quiet_s is None:
                return await self.call("step", args)
            return await self.call("if_idle", {"quiet_s": quiet_s, "op": "step", "args": args})
        from ..objectives.label_words import get_objective
        from . import lowrank

        objective = get_objective(self.policy.objective(parse_step(args).settings.objective or "ce"))
        return await lowrank.step(self.call, args, self.tokenizer_manager, objective, *self.lowrank,
                                  priority=self.train_priority, quiet_s=quiet_s)


def _stop_training_first(svc: Service, base):
    """SGLang's SignalHandler, with SIGTERM (and SIGINT, which uvicorn would otherwise take) first stopping
    /mezo/train at a step boundary: otherwise SGLang's drain waits for requests the training loop keeps
    issuing (low-rank steps are ordinary requests), and a supervisor's SIGKILL comes first."""
    import signal
    import threading

    class StopTrainingFirst(base):
        def __init__(self, tokenizer_manager):
            super().__init__(tokenizer_manager)
            if threading.current_thread() is threading.main_thread():  # where SGLang installs its own
                try:
                    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.sigint_handler)
                except RuntimeError:  # no running loop: leave SIGINT to uvicorn
                    pass

        def sigterm_handler(self, signum=None, frame=None):
            svc.shutdown(lambda: base.sigterm_handler(self, signum, frame), "SIGTERM")

        def sigint_handler(self):
            svc.shutdown(lambda: base.sigterm_handler(self, signal.SIGINT, None), "SIGINT")

    return StopTrainingFirst


def _add_routes(app, svc: Service) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from sglang.srt.utils.auth import AuthLevel, auth_level

    def reply(status: int, body: dict) -> JSONResponse:
        return JSONResponse(body, status_code=status)

    async def body(request: Request):
        """The JSON body, bounded in size and nesting: a bad body is a 4xx, never a 500."""
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            raise RequestError(f"request body is larger than {MAX_BODY} bytes", 413)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise RequestError(f"request body is larger than {MAX_BODY} bytes", 413)
        try:
            return json.loads(bytes(raw) or b"{}")
        except json.JSONDecodeError as e:
            raise RequestError(f"body is not valid JSON: {e.msg}") from None
        except (RecursionError, UnicodeDecodeError):
            raise RequestError("body is not valid JSON: nested too deeply or not UTF-8") from None

    def busy() -> None:
        if svc.shutting_down:
            raise RequestError("the server is shutting down: no new MeZO steps", 503)
        if svc.lock.locked() or (svc.train_task and not svc.train_task.done()):
            raise RequestError("a MeZO step or training run is in progress", 409)

    async def exclusive(op: str, args: dict):
        busy()
        async with svc.lock:
            code, res = await (svc.step(args) if op == "step" else svc.call(op, args))
        if code == 200 and op in ("step", "apply"):
            svc.last_step = res["step"]
        return code, res

    def route(path, method="post", admin=True):
        def deco(fn):
            async def handler(request: Request):
                try:
                    if admin:
                        _require_admin_key_configured(svc.keys)
                    return reply(*(await fn(request)))
                except RequestError as e:
                    return reply(e.status, {"error": str(e)})
                except Exception:  # noqa: BLE001 - the client gets no internals; the log gets them
                    log.exception("MeZO route %s failed", path)
                    return reply(500, {"error": f"{path} failed: internal error (details in the server log)"})
            # SGLang's API-key middleware reads this: with --admin-api-key set, only the admin key
            # passes (the ordinary --api-key does not), as on SGLang's own weight-update routes
            if admin:
                auth_level(AuthLevel.ADMIN_OPTIONAL)(handler)
            getattr(app, method)(path)(handler)
            return fn
        return deco

    def operation(path: str, op: str):
        """POST path → one scheduler operation, its body parsed (and the policy applied) here first."""
        @route(path)
        async def run(request):
            args = await body(request)
            a = PARSERS[op](args)
            if op == "save":
                svc.policy.save_path(a.path, a.overwrite)  # refuse early; the scheduler checks again
            elif op in ("step", "losses"):
                _check_policy(svc.policy, a.step if op == "losses" else a)
            return await exclusive(op, args)

    for path, op in (("/mezo/step", "step"), ("/mezo/rollback", "rollback"), ("/mezo/save", "save"),
                     ("/mezo/losses", "losses"), ("/mezo/apply", "apply")):  # losses/apply: replicas.py
        operation(path, op)

    @route("/mezo/status", "get", admin=False)  # readable with the ordinary --api-key
    async def status(request):
        if svc.lock.locked():
            return 200, {**svc.progress}
        async with svc.lock:
            code, res = await svc.call("status", {})
        return code, {**svc.progress, **res}

    @route("/mezo/checksum", "get")  # admin: hashing every weight holds the scheduler for a while
    async def checksum(request):
        return await exclusive("status", {"checksum": True})

    @route("/mezo/info", "get")  # admin: hashes every weight, like /mezo/checksum (replicas' pre-flight)
    async def info(request):
        return await exclusive("info", {})

    @route("/mezo/train")
    async def train(request):
        t = parse_train(await body(request))
        _check_policy(svc.policy, parse_step(t.step))
        busy()
        svc.stop.clear()
        svc.progress = {"running": True, "done": 0, "total": t.steps, "last": None, "error": None,
                        "stopped": False, "schedule": t.schedule}

        async def run():
            try:
                async with svc.lock:  # the run's cost to users is measured from here (schedule.Meter)
                    _, load = await svc.call("load", {"reset": True})
                meter, i = schedule.Meter(load), 0
                while i < t.steps:
                    if svc.stop.is_set():  # /mezo/stop or a signal: at a step boundary, journal complete
                        svc.progress["stopped"] = True
                        break
                    async with svc.lock:  # released between steps: other routes answer 409 meanwhile
                        code, res = await svc.step(t.step, t.idle_quiet_s)
                        if code == 200:
                            _, load = await svc.call("load", {})
                    if code == 200 and "busy" in res:  # idle schedule: users were served too recently
                        svc.progress.update(meter.fields(i, res["busy"]))
                        await asyncio.sleep(schedule.retry_delay(res["busy"], t.quiet_s))
                        continue
                    if code != 200:
                        svc.progress["error"] = res.get("error", res)
                        break
                    i += 1
                    svc.last_step = res["step"]
                    # the scheduler's view as the step began (idle schedule); /mezo/status's "last" is
                    # the scheduler's own record once the run has ended
                    svc.progress.update(done=i, last=res, load_at_start=res.get("load_at_start"),
                                        **meter.fields(i, load))
                    for k in ("update_s", "forward_s"):  # low-rank steps: the pause, and the ±ε batch
                        if k in res:
                            svc.progress[f"max_{k}"] = max(svc.progress.get(f"max_{k}", 0.0), res[k])
                    try:  # ordinary requests run freely between steps; a stop ends the wait early
                        await asyncio.wait_for(svc.stop.wait(), t.interval_s)
                    except asyncio.TimeoutError:
                        pass
            except Exception as e:  # noqa: BLE001 - recorded for /mezo/status; details in the log
                log.exception("MeZO training run failed")
                svc.progress["error"] = f"training run failed: {type(e).__name__}"
            finally:
                svc.progress["running"] = False

        svc.train_task = asyncio.create_task(run())
        return 202, {"started": True, "steps": t.steps}

    @route("/mezo/stop")
    async def stop(request):
        """/mezo/train stops at the next step boundary; the reply comes once it has (the server stays up)."""
        if await body(request):
            raise RequestError("/mezo/stop takes no fields")
        running = svc.train_task is not None and not svc.train_task.done()
        if running:
            svc.stop.set()
            await svc.stopped()
        return 200, {**svc.progress, "stopped": running}


def _require_admin_key_configured(keys) -> None:
    """With only --api-key, every user holds the key: changing the served model needs an admin key."""
    api_key, admin_key = keys
    if api_key and not admin_key:
        raise RequestError("this route changes the model every user is served and needs the admin API "
                           "key; the server was started with --api-key only: restart it with "
                           "--admin-api-key", 403)


def _check_policy(policy: Policy, a) -> None:
    """Names only, in the HTTP process (nothing is imported or read here); the scheduler checks again."""
    if a.settings.objective is not None:
        policy.objective(a.settings.objective)
    if a.examples is None:
        policy.task(a.settings.task)


def _mezo_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our --mezo-* flags out of argv; everything else is sglang.launch_server's."""
    p = argparse.ArgumentParser(prog="sglang-mezo serve", add_help=False, allow_abbrev=False,
                                description="/mezo/* options (all other flags: sglang.launch_server)")
    p.add_argument("--mezo-objective", action="append", default=[], metavar="NAME=module:function",
                   help="register an objective requests may name (repeatable); imported at launch")
    p.add_argument("--mezo-task-dir", metavar="DIR",
                   help="requests may name task files DIR/NAME.yaml (their data must stay inside DIR)")
    p.add_argument("--mezo-save-dir", metavar="DIR", help="/mezo/save writes only under DIR")
    p.add_argument("--mezo-rpc-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="a /mezo/* call whose scheduler (a DP rank's, under --dp-size) does not answer in this "
                   "time fails with 504 naming it (default: 900)")
    p.add_argument("--mezo-run-dir", metavar="DIR",
                   help="write-ahead journal DIR/trajectory.jsonl: every step and rollback is on disk before "
                        "it is acknowledged; a restart with the same DIR replays it before serving")
    p.add_argument("--mezo-piece-tokens", metavar="N", default=None,
                   help=f"with --mezo-perturb lowrank: prompt tokens of a step's requests the scheduler admits "
                        f"per batch, and only while no user request waits or runs (default "
                        f"{PIECE_TOKENS_DEFAULT}): a user request that arrives waits for one such piece at most")
    # the train flags --perturb / --rank / --sparsity / --lowrank-targets, defined once in settings.py; lowrank
    # runs a step's ±ε forwards as ordinary adapter requests beside user traffic, and serving pauses only for
    # each in-place update
    for name in ("perturb", "rank", "sparsity", "lowrank_targets"):
        f = FIELDS[name]
        name = name.replace("_", "-")
        p.add_argument(f"--mezo-{name}", default=f.default, metavar=name.upper(), help=f.metadata["help"])
    if "-h" in argv or "--help" in argv:
        p.print_help()
        print()
    return p.parse_known_args(argv)


def _policy_from_flags(ns: argparse.Namespace) -> Policy:
    """Checked at launch, so a typo stops the server instead of failing its first request."""
    from ..objectives.label_words import get_objective

    objectives = {}
    for item in ns.mezo_objective:
        name, sep, target = item.partition("=")
        if not sep or not name.isidentifier() or ":" not in target:
            raise SystemExit(f"sglang-mezo serve: --mezo-objective {item!r}: expected NAME=module:function")
        if name in builtin_objectives():
            raise SystemExit(f"sglang-mezo serve: --mezo-objective {name!r} is a built-in objective's name")
        try:
            get_objective(target)  # the operator's own code, imported now
        except ValueError as e:
            raise SystemExit(f"sglang-mezo serve: --mezo-objective {item!r}: {e}") from None
        objectives[name] = target
    dirs = {}
    for flag, value in (("--mezo-task-dir", ns.mezo_task_dir), ("--mezo-save-dir", ns.mezo_save_dir)):
        if value is not None:
            if not os.path.isdir(value):
                raise SystemExit(f"sglang-mezo serve: {flag} {value!r} is not a directory")
            value = os.path.realpath(value)
        dirs[flag] = value
    return Policy(restricted=True, objectives=objectives, task_dir=dirs["--mezo-task-dir"],
                  save_dir=dirs["--mezo-save-dir"])


def _lowrank_flags(ns: argparse.Namespace, argv: list[str]) -> list[str]:
    """--mezo-perturb lowrank: SGLang's multi-LoRA on (its flags, where not given), and the schedulers told."""
    try:  # checked by Settings, as `train --perturb/--rank` are (its messages name the train flags)
        rank = int(ns.mezo_rank) if ns.mezo_rank is not None and ns.mezo_rank.lstrip("-").isdigit() else \
            ns.mezo_rank  # a non-number is left as typed: Settings refuses it as it refuses JSON
        sparsity = _number(ns.mezo_sparsity)
        Settings(perturb=ns.mezo_perturb, rank=rank, sparsity=sparsity, lowrank_targets=ns.mezo_lowrank_targets)
    except SettingError as e:
        raise SystemExit(f"sglang-mezo serve: --mezo-perturb {ns.mezo_perturb} --mezo-rank {ns.mezo_rank}"
                         + (f" --mezo-lowrank-targets {ns.mezo_lowrank_targets}" if ns.mezo_lowrank_targets
                            else "") + f" --mezo-sparsity {ns.mezo_sparsity}: {e}") from None
    ns.mezo_rank, ns.mezo_sparsity = rank, sparsity
    os.environ["SGLANG_MEZO_PERTURB"] = ns.mezo_perturb
    os.environ["SGLANG_MEZO_SPARSITY"] = repr(float(sparsity))
    try:
        chunk = schedule.flag_value(argv, "--chunked-prefill-size")
        if chunk is not None and chunk != "-1":  # -1: SGLang's "off"; the context is checked at launch
            schedule.check_size("--chunked-prefill-size", chunk, None)
        if ns.mezo_perturb != "lowrank":
            if ns.mezo_piece_tokens is not None:
                raise ValueError("--mezo-piece-tokens applies to --mezo-perturb lowrank only")
            return argv
        ns.mezo_piece_tokens = schedule.check_size("--mezo-piece-tokens",
                                                   ns.mezo_piece_tokens or PIECE_TOKENS_DEFAULT, None)
        argv += schedule.priority_flags(argv)
    except ValueError as e:
        raise SystemExit(f"sglang-mezo serve: {e}") from None
    os.environ[PIECE_TOKENS_ENV] = str(ns.mezo_piece_tokens)
    os.environ["SGLANG_MEZO_RANK"] = str(ns.mezo_rank)
    from ..backends.layout import checkpoint_shapes, tied_embeddings
    from ..backends.lora import engine_targets, resolve_targets
    from ..perturb.lowrank import adaptable, check_rank
    from .lowrank import Matrix

    targets = resolve_targets(ns.mezo_lowrank_targets)
    os.environ["SGLANG_MEZO_LOWRANK_TARGETS"] = ",".join(targets)
    model = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--model-path", "--model")), None)
    try:
        tied = model is not None and tied_embeddings(model)
        shapes = checkpoint_shapes(model) if model is not None else {}
    except (OSError, ValueError):  # not a local model folder: SGLang names the problem at launch
        tied, shapes = False, {}
    try:  # a rank above a target's smaller dimension stops here, before SGLang starts
        check_rank(ns.mezo_rank, adaptable([Matrix(n, sh) for n, sh in shapes.items()],
                                           engine_targets(targets, tied))[0])
    except ValueError as e:
        raise SystemExit(f"sglang-mezo serve: --mezo-rank {ns.mezo_rank}: {e}".replace("--rank", "--mezo-rank")
                         .replace("--lowrank-targets", "--mezo-lowrank-targets")) from None
    defaults = {"--enable-lora": None, "--max-lora-rank": str(ns.mezo_rank), "--max-loras-per-batch": "8",
                "--lora-target-modules": engine_targets(targets, tied)}
    if not cpu_shims.cuda_available():
        defaults["--lora-backend"] = "torch_native"
    for flag, val in defaults.items():
        if flag not in argv:
            argv += [flag] + ([] if val is None else val if isinstance(val, list) else [val])
    return argv


def _context_len(server_args) -> int | None:
    if server_args.context_length:
        return server_args.context_length
    try:
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(server_args.model_path), "max_position_embeddings", None)
    except (OSError, ValueError):  # SGLang reports an unreadable model itself
        return None


def _check_sizes(ns, server_args) -> None:
    """Chunk and piece sizes within the model's context; priorities that let users go first."""
    context = _context_len(server_args)
    try:
        if server_args.chunked_prefill_size not in (None, -1):
            schedule.check_size("--chunked-prefill-size", server_args.chunked_prefill_size, context)
        if ns.mezo_perturb == "lowrank":
            schedule.check_size("--mezo-piece-tokens", ns.mezo_piece_tokens, context)
            schedule.check_priority(server_args)
    except ValueError as e:
        raise SystemExit(f"sglang-mezo serve: {e}") from None


def _number(v):
    """A flag's text as a float where it reads as one; else left as typed (Settings refuses it as JSON)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _lowrank_limits(ns, server_args):
    """(rank, tp_size, max_lora_rank, max_loras_per_batch), checked at launch; None when full-rank."""
    _check_sizes(ns, server_args)
    if ns.mezo_perturb != "lowrank":
        return None
    if ns.mezo_rank > server_args.max_lora_rank:
        raise SystemExit(f"sglang-mezo serve: --mezo-rank {ns.mezo_rank} exceeds --max-lora-rank "
                         f"{server_args.max_lora_rank}: raise --max-lora-rank")
    if server_args.max_loras_per_batch < 2:
        raise SystemExit("sglang-mezo serve: --mezo-perturb lowrank needs --max-loras-per-batch >= 2 "
                         "(one adapter per direction and sign)")
    print(f"sglang-mezo serve: --mezo-perturb lowrank --mezo-rank {ns.mezo_rank}: steps train "
          f"{os.environ['SGLANG_MEZO_LOWRANK_TARGETS']} (--mezo-lowrank-targets); norms stay frozen (a LoRA "
          f"adapter holds matrices only); up to {server_args.max_loras_per_batch} adapters per step "
          f"(--max-loras-per-batch); a step's requests run at the lowest priority, {ns.mezo_piece_tokens} "
          "prompt tokens at a time, only while no user request waits or runs (--mezo-piece-tokens)",
          file=sys.stderr)
    return ns.mezo_rank, server_args.tp_size, server_args.max_lora_rank, server_args.max_loras_per_batch


def _check_dp(ns, server_args) -> None:
    """--dp-size N: every DP rank gets each update (dp.py); what SGLang's DP mode cannot combine with
    ours is refused here, by name."""
    if not ns.mezo_rpc_timeout > 0:
        raise SystemExit(f"sglang-mezo serve: --mezo-rpc-timeout must be > 0 seconds, got {ns.mezo_rpc_timeout}")
    if ns.mezo_sparsity and server_args.tp_size > 1:
        raise SystemExit(f"sglang-mezo serve: --mezo-sparsity cannot run with --tp-size {server_args.tp_size}: "
                         "a rank's shard is not the whole matrix, so its quantile would depend on the layout")
    if server_args.dp_size == 1:
        return
    if ns.mezo_perturb == "lowrank":
        raise SystemExit("sglang-mezo serve: --mezo-perturb lowrank cannot run with --dp-size "
                         f"{server_args.dp_size}: SGLang 0.5.23 loads LoRA adapters at run time only with "
                         "--dp-size 1 (its tokenizer manager asserts it); use full-rank, or one server per GPU "
                         "behind sglang-router (docs/scale-out.md)")
    if server_args.enable_dp_attention or (getattr(server_args, "attn_dp_size", 1) or 1) > 1:
        raise SystemExit("sglang-mezo serve: attention data parallelism (--attn-dp-size, --enable-dp-attention) "
                         "is not supported with the /mezo/* routes (its DP ranks share one tensor-parallel "
                         "group); use plain --dp-size")
    if server_args.nnodes > 1:
        raise SystemExit("sglang-mezo serve: --dp-size across --nnodes > 1 is not supported by the /mezo/* "
                         "routes (their RPC addresses are local); run one server per node behind sglang-router")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns, argv = _mezo_flags(argv)
    policy = _policy_from_flags(ns)
    if cpu_shims.install():  # CPU: SGLang's CPU backends and one OpenMP thread per process
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        defaults = {"--device": "cpu", "--attention-backend": "torch_native", "--sleep-on-idle": None,
                    "--disable-cuda-graph": None, "--max-total-tokens": "8192"}
        for flag, val in defaults.items():
            if flag not in argv:
                argv += [flag] + ([val] if val else [])
    from ..backends.sglang_runner import check_version

    try:
        check_version()  # the pin the CLI checks; the schedulers check it again, with the layout
    except ValueError as e:
        raise SystemExit(f"sglang-mezo serve: {e}") from None
    argv = _lowrank_flags(ns, argv)
    from sglang.srt.entrypoints.http_server import app, launch_server
    from sglang.srt.server_args import prepare_server_args

    from ..backends.encoder import serve_argv

    argv = serve_argv(argv)  # an encoder classifier: what SGLang needs to serve it right
    server_args = prepare_server_args(argv)
    if server_args.tokenizer_worker_num != 1 or os.environ.get("SGLANG_RUST_SERVER", "").lower() in (
            "1", "true"):
        raise SystemExit("sglang-mezo serve: the /mezo/* routes need SGLang's single-process Python HTTP "
                         "server (no --tokenizer-worker-num > 1, no SGLANG_RUST_SERVER)")
    _check_dp(ns, server_args)
    if ns.mezo_run_dir:  # before SGLang starts: a journal this server cannot replay stops it here
        from ..noise import VERSION
        from .journal import JournalError, prepare_launch

        expected = {"noise": VERSION, "perturb": ns.mezo_perturb, "sparsity": ns.mezo_sparsity}
        if ns.mezo_perturb == "lowrank":
            expected["rank"] = ns.mezo_rank
        if server_args.dtype in ("float32", "bfloat16", "float16"):  # "auto": the schedulers check it
            expected["dtype"] = server_args.dtype
        try:
            os.environ.update(prepare_launch(ns.mezo_run_dir, server_args.model_path, expected))
        except (JournalError, OSError, ValueError) as e:
            raise SystemExit(f"sglang-mezo serve: {e}") from None
    svc = Service(policy, (server_args.api_key, server_args.admin_api_key))
    svc.rpc_timeout = ns.mezo_rpc_timeout
    svc.lowrank = _lowrank_limits(ns, server_args)
    svc.train_priority = schedule.training_priority(server_args) if svc.lowrank else None
    os.environ[POLICY_ENV] = policy.to_env()  # the schedulers, spawned below, enforce the same policy
    if not server_args.admin_api_key:
        if server_args.api_key:
            print("sglang-mezo serve: WARNING: no --admin-api-key: /mezo/step|train|rollback|save are off "
                  "(403); the ordinary --api-key never changes the served model", file=sys.stderr)
        elif not _is_loopback(server_args.host):
            print(f"sglang-mezo serve: WARNING: listening on {server_args.host} without --admin-api-key: "
                  "anyone who reaches this port can change the model every user is served "
                  "(/mezo/step|train|rollback|save)", file=sys.stderr)
    _add_routes(app, svc)
    launch_server(server_args, init_tokenizer_manager_func=svc.init_tokenizer_manager)
    return 0

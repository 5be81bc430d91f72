"""Python clients for the /mezo/* operations: over HTTP, or on an in-process `sglang.Engine`.

    c = MezoClient("http://127.0.0.1:30000")
    c.step(task="sst2", lr=1e-5, eps=1e-3, batch_size=16)     # → L+, L−, projected gradient
    c.train(steps=100, task="sst2", lr=1e-5); c.wait()
    c.train(steps=100, task="sst2", schedule="idle", quiet_s=2.0)   # only while users leave it idle
    c.rollback(steps=10); c.save("ckpt")     # a folder under the server's --mezo-save-dir

    engine = sglang.Engine(model_path=...)   # on CPU: sglang_mezo.cpu_shims.install() first
    t = EngineTrainer(engine); t.step(examples=[...], lr=1e-5)
"""
from __future__ import annotations

import time


class MezoError(RuntimeError):
    def __init__(self, status: int, body: dict):
        super().__init__(f"{status}: {body.get('error', body)}")
        self.status, self.body = status, body


class MezoClient:
    """`admin_api_key`: for the routes that change the model (a server with --admin-api-key requires it);
    `api_key`: for /mezo/status, SGLang's ordinary level (a server with --api-key requires it)."""

    def __init__(self, base_url: str, timeout: float = 600, api_key: str | None = None,
                 admin_api_key: str | None = None):
        self.base, self.timeout = base_url.rstrip("/"), timeout
        self.api_key, self.admin_api_key = api_key, admin_api_key
        self.bytes_sent = self.bytes_received = 0   # request/response bodies (data-parallel accounting)

    @staticmethod
    def _auth(key):
        return {"Authorization": f"Bearer {key}"} if key else {}

    @staticmethod
    def _json(r) -> dict:
        try:
            body = r.json()
        except ValueError:
            body = {"error": r.text}
        if r.status_code >= 300:
            raise MezoError(r.status_code, body)
        return body

    def _post(self, path, body):
        import requests

        r = requests.post(self.base + path, json=body, timeout=self.timeout,
                          headers=self._auth(self.admin_api_key or self.api_key))
        self.bytes_sent += len(r.request.body or b"")
        self.bytes_received += len(r.content)
        return self._json(r)

    def step(self, **body) -> dict:
        return self._post("/mezo/step", body)

    def train(self, steps: int, *, schedule: str = "interval", **body) -> dict:
        """`schedule`: "interval" (a step every `interval_s`) or "idle" (a step only after `quiet_s`
        seconds without a waiting or running user request); the server's /mezo/train fields."""
        return self._post("/mezo/train", {"steps": steps, "schedule": schedule, **body})

    def rollback(self, steps: int = 1) -> dict:
        return self._post("/mezo/rollback", {"steps": steps})

    def save(self, path: str, overwrite: bool = False, model: bool = True) -> dict:
        """`path`: a folder name under the server's --mezo-save-dir; model=False: the trajectory only."""
        return self._post("/mezo/save", {"path": path, "overwrite": overwrite, "model": model})

    def stop(self) -> dict:
        """Stop a running /mezo/train at the next step boundary (returns once it has); the server stays up."""
        return self._post("/mezo/stop", {})

    # data-parallel replica ops (serve/ops.py; driven by sglang_mezo.replicas)
    def losses(self, seed: int, scales: list[float], **body) -> dict:
        return self._post("/mezo/losses", {"seed": seed, "scales": scales, **body})

    def apply(self, record: dict, checksum: bool = False) -> dict:
        return self._post("/mezo/apply", {"record": record, "checksum": checksum})

    def info(self) -> dict:
        import requests

        r = requests.get(self.base + "/mezo/info", timeout=self.timeout,
                         headers=self._auth(self.admin_api_key or self.api_key))
        self.bytes_received += len(r.content)
        return self._json(r)

    def status(self) -> dict:
        import requests

        return self._json(requests.get(self.base + "/mezo/status", timeout=self.timeout,
                                       headers=self._auth(self.api_key)))

    def checksum(self) -> str:
        """sha256 of every served weight (admin; holds the scheduler for one pass over the weights)."""
        import requests

        return self._json(requests.get(self.base + "/mezo/checksum", timeout=self.timeout,
                                       headers=self._auth(self.admin_api_key or self.api_key)))["weights_sha256"]

    def wait(self, poll: float = 0.5, timeout: float = 3600) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            s = self.status()
            if not s.get("running"):
                if s.get("error"):
                    raise MezoError(500, {"error": s["error"]})
                return s
            time.sleep(poll)
        raise TimeoutError("training did not finish in time")


class EngineTrainer:
    """The same operations on an `sglang.Engine` (offline engine, same process as the caller). With
    SGLANG_MEZO_PERTURB=lowrank (and the engine's LoRA on), a step runs through serve/lowrank.py, the
    path the HTTP server's low-rank steps take."""

    def __init__(self, engine):
        if engine.server_args.dp_size > 1:
            raise MezoError(400, {"error": f"EngineTrainer drives one DP rank; this engine has --dp-size "
                                           f"{engine.server_args.dp_size}: use `sglang-mezo serve --dp-size N`, "
                                           "whose /mezo/* routes reach every rank"})
        self.engine = engine

    def _call(self, op: str, body: dict) -> dict:
        from .plugin import call
        from .protocol import PARSERS, RequestError

        try:
            PARSERS[op](body)
        except RequestError as e:
            raise MezoError(e.status, {"error": str(e)}) from None
        status, result = call(self.engine.send_to_rpc, op, body)  # the socket Engine.collective_rpc uses
        if status >= 300:
            raise MezoError(status, result)
        return result

    def step(self, **body) -> dict:
        return self._step(body, None)

    def _step(self, body: dict, quiet_s: float | None) -> dict:
        """A step; with `quiet_s` (idle schedule) possibly {"busy": load} instead."""
        import os

        if os.environ.get("SGLANG_MEZO_PERTURB") != "lowrank":
            if quiet_s is None:
                return self._call("step", body)
            return self._call("if_idle", {"quiet_s": quiet_s, "op": "step", "args": body})
        from ..objectives.label_words import get_objective
        from . import lowrank

        async def call(op, args):
            try:
                return 200, self._call(op, args)
            except MezoError as e:
                return e.status, e.body

        from .schedule import training_priority

        sa = self.engine.server_args
        try:
            objective = get_objective(body.get("objective") or "ce")
        except ValueError as e:
            raise MezoError(400, {"error": str(e)}) from None
        status, result = self.engine.loop.run_until_complete(lowrank.step(
            call, body, self.engine.tokenizer_manager, objective, int(os.environ["SGLANG_MEZO_RANK"]),
            sa.tp_size, sa.max_lora_rank, sa.max_loras_per_batch, priority=training_priority(sa),
            quiet_s=quiet_s))
        if status >= 300:
            raise MezoError(status, result)
        return result

    def train(self, steps: int, *, schedule: str = "interval", **body) -> list[dict]:
        """As /mezo/train, in this process: `schedule` "interval" (`interval_s` between steps) or "idle"
        (a step only after `quiet_s` seconds without a waiting or running request)."""
        from .protocol import RequestError, parse_train
        from .schedule import retry_delay

        try:
            t = parse_train({"steps": steps, "schedule": schedule, **body})
        except RequestError as e:
            raise MezoError(e.status, {"error": str(e)}) from None
        out: list[dict] = []
        while len(out) < t.steps:
            res = self._step(t.step, t.idle_quiet_s)
            if "busy" in res:
                time.sleep(retry_delay(res["busy"], t.quiet_s))
                continue
            out.append(res)
            if len(out) < t.steps:
                time.sleep(t.interval_s)
        return out

    def rollback(self, steps: int = 1) -> dict:
        return self._call("rollback", {"steps": steps})

    def save(self, path: str, overwrite: bool = False, model: bool = True) -> dict:
        return self._call("save", {"path": path, "overwrite": overwrite, "model": model})

    def status(self) -> dict:
        return self._call("status", {})

    def checksum(self) -> str:
        return self._call("status", {"checksum": True})["weights_sha256"]

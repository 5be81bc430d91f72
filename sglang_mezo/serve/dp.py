"""The schedulers a /mezo/* call reaches: one under --dp-size 1, every DP rank's under --dp-size N.

Each DP rank holds its own copy of the weights, so every operation must leave them identical. A step
runs on rank 0 (its forwards, its losses: exactly a --dp-size 1 step) and its record is then applied on
every other rank with `apply` — replay's arithmetic, bit for bit the update rank 0 made; rollback and
apply run on every rank; save, losses and info read rank 0. Before any operation the ranks' trajectory
heads are compared: a rank that was restarted or missed an update is named and nothing is applied to
some ranks only. Every call has a deadline; a rank that does not answer is named.
"""
from __future__ import annotations

import asyncio

from . import plugin

ALL = ("rollback", "apply", "lowrank_apply")     # change the weights: every rank
FIRST = ("save", "losses", "info", "lowrank_plan", "status")   # read rank 0 (identical ranks)


class Schedulers:
    def __init__(self, sockets: list, timeout: float | None = None):
        self.sockets, self.timeout = sockets, timeout

    @property
    def dp_size(self) -> int:
        return len(self.sockets)

    async def one(self, rank: int, op: str, args: dict) -> tuple[int, dict]:
        try:
            return await asyncio.to_thread(plugin.call, self.sockets[rank], op, args, self.timeout)
        except plugin.NoReply as e:
            return 504, {"error": f"DP rank {rank} did not answer: {e}" if self.dp_size > 1 else str(e)}

    async def each(self, op: str, args: dict, ranks=None) -> list[tuple[int, dict]]:
        ranks = range(self.dp_size) if ranks is None else ranks
        return list(await asyncio.gather(*(self.one(r, op, args) for r in ranks)))

    async def call(self, op: str, args: dict) -> tuple[int, dict]:
        if self.dp_size == 1:
            return await self.one(0, op, args)
        bad = await self.check()
        if bad:
            return bad
        if op in ("step", "if_idle"):   # if_idle: a step only if rank 0's users left it idle
            code, res = await self.one(0, op, args)
            if code != 200 or "record" not in res:   # refused, or the idle schedule said "busy"
                return code, res
            return await self._everywhere("apply", {"record": res["record"]}, res, ranks=range(1, self.dp_size))
        if op in ALL:
            return await self._everywhere(op, args, None)
        if op == "status" and args.get("checksum"):
            replies = await self.each(op, args)
            sums = [r.get("weights_sha256") for _, r in replies]
            for rank, (code, res) in enumerate(replies):
                if code != 200:
                    return code, {"error": f"DP rank {rank}: {res.get('error', res)}"}
                if sums[rank] != sums[0]:
                    return 409, {"error": f"DP rank {rank} serves different weights from rank 0 (sha256 "
                                          f"{sums[rank][:12]} vs {sums[0][:12]})"}
            return replies[0]
        code, res = await self.one(0, op, args)
        return code, ({**res, "dp_size": self.dp_size} if op == "status" and code == 200 else res)

    async def check(self):
        """None when every rank answers with the same trajectory head; else the reply naming the rank."""
        replies = await self.each("status", {})
        for rank, (code, res) in enumerate(replies):
            if code != 200:
                return code, {"error": f"DP rank {rank}: {res.get('error', res)}"}
        head0 = replies[0][1]["head"]
        for rank, (_, res) in enumerate(replies[1:], 1):
            if res["head"] != head0:
                return 409, {"error": f"DP rank {rank} holds {res['steps']} steps (head {res['head'][:12]}), rank 0 "
                                      f"{replies[0][1]['steps']} (head {head0[:12]}): the ranks' weights differ "
                                      "(a restarted or failed rank); restart the server"}
        return None

    async def _everywhere(self, op: str, args: dict, answer, ranks=None):
        """`op` on `ranks` (all by default); `answer` (or rank 0's reply) when every rank succeeded."""
        ranks = list(range(self.dp_size) if ranks is None else ranks)
        replies = await self.each(op, args, ranks)
        for rank, (code, res) in zip(ranks, replies):
            if code != 200:
                return (500 if code < 500 else code), {"error": f"{op} failed on DP rank {rank} after the other "
                                                        f"ranks applied it: {res.get('error', res)}"}
        return (200, answer) if answer is not None else replies[0]

"""Fine-tune the model SGLang is serving. By side:
  http.py      `sglang-mezo serve`: SGLang's server plus the /mezo/* routes (one busy guard, one error map)
  lowrank.py   a low-rank step's ±ε forwards as adapter requests beside user traffic (HTTP, EngineTrainer)
  plugin.py    the seam: SGLang's plugin hook that hands /mezo RPCs to the scheduler side
  ops.py       the scheduler side: one operation table, one dispatcher (ServedTrainer)
  protocol.py  every request, typed and parsed in one place;  policy.py  what a request may name
  client.py    MezoClient (HTTP) and EngineTrainer (an in-process sglang.Engine)
  journal.py   the write-ahead journal of `serve --mezo-run-dir` (every step on disk before it counts)
"""
from .client import EngineTrainer, MezoClient, MezoError

__all__ = ["EngineTrainer", "MezoClient", "MezoError"]

"""Fine-tune the model SGLang is serving: a scheduler plugin (plugin.py), /mezo/* HTTP routes
(server.py) and Python clients (client.py)."""
from .client import EngineTrainer, MezoClient, MezoError

__all__ = ["EngineTrainer", "MezoClient", "MezoError"]

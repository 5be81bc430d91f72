"""`module:function` strings: the user's own callable (objectives, rewards), imported on request.
Only the CLI and Python API call this with a user's string; over HTTP serve/policy.py admits only
what the operator registered at launch."""
from __future__ import annotations

import importlib
from typing import Callable


def load_callable(name: str, what: str, error: type[Exception] = ValueError) -> Callable:
    """The callable `module:function` names; `error` (naming `what`) if it cannot be loaded."""
    mod, _, fn = name.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise error(f"{what} {name!r} cannot be loaded: {e}") from None
    if not callable(obj):
        raise error(f"{what} {name!r} is not callable")
    return obj

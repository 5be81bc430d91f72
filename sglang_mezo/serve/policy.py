"""What a request over HTTP may name: built-in objectives and tasks, and only what the operator allowed
at launch — never code to import, never a path of its own.

`sglang-mezo serve` builds a Policy from its `--mezo-*` flags and hands it to the scheduler processes
through an environment variable (they are spawned after it is set), so the HTTP process (fast 4xx) and
each scheduler (defence in depth) apply the same rules. Without that variable — an offline
`sglang.Engine` driven by `EngineTrainer` in the caller's own process — nothing is restricted: the
caller runs their own code and paths there, as with the CLI.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..objectives import builtin_objectives
from .protocol import RequestError

ENV = "SGLANG_MEZO_SERVE_POLICY"
# A name, not a path: no separators, no leading dot (so never "." or ".."), bounded length.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
# what save() writes inside its folder; none of them may be a symlink we would write through
_SAVE_ENTRIES = ("model", "model.tmp", "model.old", "trajectory.jsonl", "trajectory.jsonl.tmp")


def builtin_tasks() -> list[str]:
    from ..tasks import TASKS

    return sorted(TASKS)


@dataclass(frozen=True)
class Policy:
    restricted: bool = False                          # True: requests come over HTTP
    objectives: dict = field(default_factory=dict)    # NAME -> "module:function" registered at launch
    task_dir: str | None = None                       # where NAME.yaml task files may come from
    save_dir: str | None = None                       # where /mezo/save may write

    @classmethod
    def from_env(cls) -> "Policy":
        raw = os.environ.get(ENV)
        return cls(restricted=True, **json.loads(raw)) if raw else cls()

    def to_env(self) -> str:
        return json.dumps({"objectives": self.objectives, "task_dir": self.task_dir, "save_dir": self.save_dir})

    # -- objectives ------------------------------------------------------------------------------
    def objective(self, name: str) -> str:
        """What a family loads (objectives/): a built-in name or the operator's module:function."""
        if not self.restricted or name in builtin_objectives():
            return name
        if name in self.objectives:
            return self.objectives[name]
        choices = builtin_objectives() + sorted(self.objectives)
        if ":" in name:
            raise RequestError(f"objective {name!r} refused: a request cannot name code to import. Choose "
                               f"one of {choices}; the operator registers more at launch with "
                               "--mezo-objective NAME=module:function")
        raise RequestError(f"unknown objective {name!r}: choose one of {choices}")

    # -- tasks -----------------------------------------------------------------------------------
    def task(self, name: str) -> str:
        """What to hand `tasks.get_task`: a built-in name, or the task file NAME.yaml|.yml in task_dir."""
        if not self.restricted or name.lower() in builtin_tasks():
            return name
        if self.task_dir is None:
            raise RequestError(f"unknown task {name!r}: choose one of {builtin_tasks()}. Task files over "
                               "HTTP are off; start the server with --mezo-task-dir DIR to serve DIR/NAME.yaml")
        if not _NAME.fullmatch(name) or ".." in name:
            raise RequestError(f"task {name!r} refused: give a built-in task or the plain name of a task file "
                               "in the server's task directory (no path, no extension)")
        root = Path(self.task_dir).resolve()
        for ext in (".yaml", ".yml"):
            p = root / (name + ext)
            if p.is_file():
                if not p.resolve().is_relative_to(root):  # a symlink out of the folder
                    raise RequestError(f"task {name!r} refused: its file leaves the task directory")
                return str(p)
        raise RequestError(f"unknown task {name!r}: choose one of {builtin_tasks()} or a task file "
                           f"NAME.yaml in the task directory ({sorted(self.task_names())})")

    def task_names(self) -> list[str]:
        root = Path(self.task_dir)
        return [p.stem for p in root.iterdir() if p.suffix in (".yaml", ".yml") and _NAME.fullmatch(p.stem)]

    def check_task_data(self, name: str, spec) -> None:
        """A task file's data files must stay inside the task directory too (checked before reading)."""
        if not self.restricted or name.lower() in builtin_tasks():
            return
        root = Path(self.task_dir).resolve()
        for split, f in spec.files.items():
            if not Path(f).resolve().is_relative_to(root):
                raise RequestError(f"task {name!r} refused: its {split} data path leaves the task directory")

    # -- saving ----------------------------------------------------------------------------------
    def save_path(self, path: str, overwrite: bool) -> Path:
        """The folder /mezo/save writes: anywhere for the caller's own Engine; over HTTP a relative name
        that stays inside save_dir, and an existing one only with overwrite."""
        if not self.restricted:
            return Path(path)
        if self.save_dir is None:
            raise RequestError("saving over HTTP is off: start the server with --mezo-save-dir DIR to let "
                               "/mezo/save write under DIR", 403)
        rel = PurePosixPath(path)
        if rel.is_absolute() or ".." in rel.parts or "\x00" in path or len(path) > 255:
            raise RequestError(f"'path' {path!r} refused: give a relative name inside the server's save "
                               "directory (no absolute path, no '..')")
        root = Path(self.save_dir).resolve()
        out = (root / rel).resolve()
        if out == root or not out.is_relative_to(root):  # e.g. through a symlink out of the folder
            raise RequestError(f"'path' {path!r} refused: it leaves the server's save directory")
        if out.exists():
            if not out.is_dir():
                raise RequestError(f"'path' {path!r} exists and is not a directory")
            if not overwrite:
                raise RequestError(f"'path' {path!r} already exists in the save directory; send "
                                   "\"overwrite\": true to replace it", 409)
            if any((out / e).is_symlink() for e in _SAVE_ENTRIES):
                raise RequestError(f"'path' {path!r} refused: it holds symlinks where the save would write")
        return out

"""Apply patches/*.diff (unified diffs against the pinned sglang) to the loaded SGLang modules, in memory.

The installed package is never edited. The diffs form a series, in file-name order: a diff to a file an
earlier diff also changes is made against that file with the earlier diffs applied (as `quilt`/`git am`
would apply them), so a function two diffs touch runs both changes. For each file of a diff: the source
(installed, plus the earlier diffs of the series) must match every hunk's context and removed lines exactly (else PatchMismatch: the pin moved and the patch must be
redone); the patched source is compiled under the installed file's name; each function whose body a hunk
touches gets the patched code object (`func.__code__ = ...`), so every reference to the function — class
attributes, bound methods, other modules' `from x import f` — runs the patched code; import lines a
hunk adds run in the module's namespace. Any other kind of module-level change is refused, so a patch
can never half-apply. Why code swapping rather than replacing modules: modules SGLang imported earlier
keep pointing at the same function objects, and the order of imports does not matter.

Applied by the in-process runner (backends/sglang_runner.py) and, through our plugin's `register()`,
in every SGLang process (scheduler, detokenizer, HTTP server).
"""
from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

# the project's top-level patches/, reached through the package (sglang_mezo/patches is a link to it in
# a checkout and a copy in the wheel), so an installed sglang_mezo carries its patches too
PATCH_DIR = Path(__file__).resolve().parents[1] / "patches"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchMismatch(RuntimeError):
    """A patch's target no longer matches the installed sglang (version drift)."""


@dataclass
class FilePatch:
    path: str                                  # "sglang/srt/lora/layers.py"
    hunks: list = field(default_factory=list)  # (old_start, [(tag, text)])

    @property
    def module(self) -> str:
        return self.path[:-3].replace("/", ".")


def patch_files() -> list[Path]:
    files = sorted(PATCH_DIR.glob("*.diff"))
    if not files:  # a broken install: running unpatched would fail later, far from the cause
        raise PatchMismatch(f"no SGLang patches found in {PATCH_DIR}: reinstall sglang_mezo (the wheel ships "
                            "them as sglang_mezo/patches/*.diff)")
    return files


def parse(diff_text: str) -> list[FilePatch]:
    files: list[FilePatch] = []
    cur = None
    for line in diff_text.splitlines():
        if line.startswith("--- "):
            continue
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].strip()
            cur = FilePatch(path[2:] if path.startswith("b/") else path)
            files.append(cur)
        elif (m := _HUNK.match(line)):
            cur.hunks.append((int(m.group(1)), []))
        elif cur is not None and cur.hunks and line[:1] in (" ", "-", "+", ""):
            cur.hunks[-1][1].append((line[:1] or " ", line[1:]))
    return files


def patched_source(fp: FilePatch, original: str, where: str) -> tuple[str, set[int]]:
    """(patched text, 1-based numbers of the patched file's added lines); PatchMismatch on drift."""
    old = original.splitlines()
    out: list[str] = []
    added: set[int] = set()
    pos = 0  # next unconsumed line of `old` (0-based)
    for start, lines in fp.hunks:
        s = start - 1
        if s < pos:
            raise PatchMismatch(f"{where}: hunks of {fp.path} overlap")
        out.extend(old[pos:s])
        pos = s
        for tag, text in lines:
            if tag in (" ", "-"):
                if pos >= len(old) or old[pos] != text:
                    got = old[pos] if pos < len(old) else "<end of file>"
                    raise PatchMismatch(
                        f"{where}: hunk @@ -{start} of {fp.path} no longer matches the installed file at line "
                        f"{pos + 1}: expected {text!r}, found {got!r}. The installed sglang is not the version "
                        "the patch was made for: remake the patch (patches/README.md)")
                pos += 1
                if tag == " ":
                    out.append(text)
            else:
                out.append(text)
                added.add(len(out))
    out.extend(old[pos:])
    return "\n".join(out) + "\n", added


def _functions(tree: ast.Module):
    """(qualname, node, depth-0 class path) for every function, as the compiler names them."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = prefix + child.name
                yield q, child
                yield from walk(child, q + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
    yield from walk(tree, "")


def _code_objects(code, acc=None) -> dict:
    acc = {} if acc is None else acc
    for c in code.co_consts:
        if hasattr(c, "co_qualname"):
            acc[c.co_qualname] = c
            _code_objects(c, acc)
    return acc


def _live(module, qualname: str):
    obj = module
    for part in qualname.split("."):
        obj = obj.__dict__[part] if isinstance(obj, type) else getattr(obj, part)
    while hasattr(obj, "__wrapped__"):  # decorated: the function that holds the code
        obj = obj.__wrapped__
    return getattr(obj, "__func__", obj)


def plan(fp: FilePatch, where: str, source: str | None = None):
    """(module, [(function, code)], [import statements]) without changing anything. `source`: the text the
    diff applies to (default: the installed file; `series` passes the earlier diffs' result)."""
    module = importlib.import_module(fp.module)
    installed = Path(module.__file__)
    original = installed.read_text(encoding="utf-8") if source is None else source
    text, added = patched_source(fp, original, f"{where} ({installed})")
    tree = ast.parse(text)
    spans = [(q, n.lineno, n.end_lineno) for q, n in _functions(tree)]
    changed, imports = set(), []
    for line in sorted(added):
        inner = [q for q, a, b in spans if a <= line <= b]
        if inner:
            changed.add(max(inner, key=len))  # the innermost function holding the line
            continue
        stmt = next((s for s in tree.body if s.lineno <= line <= s.end_lineno), None)
        if stmt is None:  # a blank line
            continue
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
            raise PatchMismatch(f"{where}: {fp.path} line {line} changes module-level code other than an "
                                "import; only function bodies and imports can be patched in memory")
        imports.append(ast.get_source_segment(text, stmt))
    if any("<locals>" in q for q in changed):
        changed = {q.split(".<locals>.")[0] for q in changed}  # swap the enclosing function instead
    codes = _code_objects(compile(text, str(installed), "exec"))
    swaps = []
    for q in sorted(changed):
        fn = _live(module, q)
        new = codes[q]
        if fn.__code__.co_freevars != new.co_freevars:
            raise PatchMismatch(f"{where}: {q} in {fp.path} changes its closure; cannot patch in memory")
        swaps.append((fn, new))
    return module, swaps, imports, text


def series():
    """(diff name, FilePatch, module, swaps, imports) for every file of every diff, in series order: each
    planned against its file with the earlier diffs applied. PatchMismatch on drift; changes nothing."""
    texts: dict[str, str] = {}   # path -> the source after the diffs so far
    for diff in patch_files():
        for fp in parse(diff.read_text(encoding="utf-8")):
            module, swaps, imports, texts[fp.path] = plan(fp, diff.name, texts.get(fp.path))
            yield diff.name, fp, module, swaps, imports


def apply_all() -> list[str]:
    """Apply every patch in patches/ to the loaded sglang (idempotent). Returns the patch names applied."""
    done = []
    for name, fp, module, swaps, imports in series():
        applied = module.__dict__.setdefault("__sglang_mezo_patches__", set())
        if name not in applied:
            for stmt in imports:
                exec(compile(stmt, module.__file__, "exec"), module.__dict__)  # noqa: S102 - from our diff
            for fn, code in swaps:
                fn.__code__ = code
            applied.add(name)
        if name not in done:
            done.append(name)
    return done

"""Every `--flag` written in README.md and docs/*.md exists in the sglang-mezo CLI or in sglang.launch_server,
so the documentation cannot drift from the code.

What is read (chosen so that other tools' flags — pip, pytest, curl, make, git — need no allowlist):
1. Command lines in fenced code blocks: a line (joined with its `\\` continuations) that starts, after
   optional `VAR=value` assignments, with `sglang-mezo SUB`, `python -m sglang_mezo SUB` or
   `python -m sglang.launch_server`. Its flags must belong to that very command: `train`, `eval` and
   `replay` each have their own; `serve` takes its `--mezo-*` flags and SGLang's; `launch_server` SGLang's;
   an unknown or missing SUB takes any command's.
   Other code lines (curl, YAML, shell assignments, make, pip) are not read, except their comments (3).
2. Inline code spans in prose: a span that starts like a command in (1), or with a bare subcommand
   followed by a flag (`train --n-test N`), is checked like (1); a span that starts with `--` names flags in
   prose and is checked against every flag of every command. Any other span (`pip install --no-deps`,
   `make demo DEMO_ARGS="--steps 20"`, JSON) belongs to another tool and is not read.
3. Prose outside code spans, and `# comments` in code blocks: every `--flag` token is checked against every
   flag of every command.

Where the flags come from: `python -m sglang_mezo {train,eval,replay,serve} --help` (the option lines of the
help: two-space indent, invocation before the description), and SGLang's parser built as `sglang serve`
builds it (argparse.ArgumentParser + ServerArgs.add_cli_args, after cpu_shims.install() as the CLI does on
CPU). Five subprocesses, started together once per module, so nothing is imported into the test process;
`serve --help` prints its --mezo-* options and then loads SGLang to print SGLang's own help, so it is
stopped once its --mezo-* part is out (SGLang's flags come from ServerArgs). The time is SGLang's import
(about 4 s alone on the 2-core machine; the whole module took 8-12 s there at load 4).

Names must match exactly, except ABBREVIATIONS: a prefix argparse resolves to one flag (SGLang's parser
allows abbreviations), accepted only while it still resolves to that one flag.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("train", "eval", "replay", "serve")
ABBREVIATIONS = {"--tp": "--tp-size"}   # `serve --tp N`, as the docs and tests/test_tp.py write it

FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][\w-]*")
ENV_PREFIX = re.compile(r"""^(?:[A-Za-z_]\w*=(?:"[^"]*"|'[^']*'|\S*)\s+)*""")
MEZO_CMD = re.compile(r"^(?:\S*/)?(?:sglang-mezo|python3?\s+-m\s+sglang_mezo)(?!\S)(?:\s+([\w-]+))?")
LAUNCH_CMD = re.compile(r"^(?:\S*/)?python3?\s+-m\s+sglang\.launch_server(?!\S)")
BARE_SUB = re.compile(r"^(train|eval|replay|serve)\s+--")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)

SGLANG_FLAGS = """
import argparse, json
try:
    from sglang_mezo import cpu_shims
except ImportError:
    pass
else:
    cpu_shims.install()
from sglang.srt.server_args import ServerArgs
parser = argparse.ArgumentParser(prog="sglang serve")
ServerArgs.add_cli_args(parser)
print(json.dumps(sorted(s for a in parser._actions for s in a.option_strings if s.startswith("--"))))
"""


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def help_flags(text: str) -> set[str]:
    """The long options of an argparse help: its option lines (two-space indent), before the description."""
    found = set()
    for line in text.splitlines():
        if line.startswith("  -"):
            found.update(FLAG.findall(line.strip().split("  ")[0]))
    return found


def read_serve_help(proc: subprocess.Popen) -> str:
    """`serve --help` prints its --mezo-* options first, then imports SGLang's server (seconds) to print
    SGLang's help; SGLang's flags come from ServerArgs directly, so stop at the blank line that ends the
    --mezo-* options."""
    lines = []
    for line in proc.stdout:
        if not line.strip() and any(seen.startswith("  --mezo-") for seen in lines):
            proc.kill()
            break
        lines.append(line)
    proc.communicate(timeout=600)
    return "".join(lines)


@pytest.fixture(scope="module")
def flags() -> dict[str, set[str]]:
    """{train, eval, replay, serve, launch_server, any}: the flags each command accepts."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}   # serve's lines arrive as printed
    names = (*SUBCOMMANDS, "launch_server")
    errs = {name: tempfile.TemporaryFile("w+") for name in names}
    procs = {name: subprocess.Popen([sys.executable, "-c", SGLANG_FLAGS] if name == "launch_server" else
                                    [sys.executable, "-m", "sglang_mezo", name, "--help"],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errs[name], text=True)
             for name in names}
    out = {}
    for name, p in procs.items():
        stdout = read_serve_help(p) if name == "serve" else p.communicate(timeout=600)[0]
        errs[name].seek(0)
        err = errs[name].read()[-3000:]
        errs[name].close()
        what = "SGLang's parser" if name == "launch_server" else f"sglang-mezo {name} --help"
        assert name == "serve" or p.returncode == 0, f"{what}: exit status {p.returncode}\n{err}"
        out[name] = set(json.loads(stdout.splitlines()[-1])) if name == "launch_server" else help_flags(stdout)
        assert out[name], f"{what}: no flags found\n{stdout[-3000:]}\n{err}"
    for name in ("train", "eval", "replay"):
        assert {"--help", "--out" if name != "eval" else "--model"} <= out[name], (name, sorted(out[name]))
    assert "--mezo-task-dir" in out["serve"] and "--model-path" in out["launch_server"]
    out["serve"] |= out["launch_server"]
    out["any"] = set().union(*out.values())
    return out


def command_kind(text: str) -> str | None:
    """Which flag set a command line or code span is checked against; None: another tool's, not read."""
    text = ENV_PREFIX.sub("", " ".join(text.split()))
    if m := MEZO_CMD.match(text):
        return m.group(1) if m.group(1) in SUBCOMMANDS else "any"
    if LAUNCH_CMD.match(text):
        return "launch_server"
    if m := BARE_SUB.match(text):
        return m.group(1)
    return "any" if text.startswith("--") else None


def split_comment(line: str) -> tuple[str, str]:
    """A shell line as (code, comment): the comment starts at a `#` outside quotes, after a space or at 0."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def scan(text: str) -> list[tuple[int, str, str, str]]:
    """(line, flag, kind, context) for every flag the rules in the module docstring read in `text`."""
    found = []
    lines = text.split("\n")
    prose = list(lines)   # the text with fenced blocks blanked out (same line numbers)
    in_fence, pending, start = None, "", 0
    for n, line in enumerate(lines, 1):
        if m := FENCE.match(line):
            prose[n - 1] = ""
            in_fence = None if in_fence == m.group(1) else in_fence or m.group(1)
            continue
        if not in_fence:
            continue
        prose[n - 1] = ""
        if not pending:
            start = n
        if line.rstrip().endswith("\\") and not split_comment(line)[1]:
            pending += line.rstrip()[:-1] + " "
            continue
        code, comment = split_comment(pending + line)
        pending = ""
        kind = command_kind(code.strip())
        if kind:
            found += [(start, f, kind, code.strip()) for f in FLAG.findall(code)]
        found += [(start, f, "any", comment.strip()) for f in FLAG.findall(comment)]
    body = "\n".join(prose)

    def line_of(pos: int) -> int:
        return body.count("\n", 0, pos) + 1

    for m in SPAN.finditer(body):
        kind = command_kind(m.group(2))
        if kind:
            found += [(line_of(m.start()), f, kind, " ".join(m.group(2).split()))
                      for f in FLAG.findall(m.group(2))]
    outside = SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), body)
    found += [(line_of(m.start()), m.group(0), "any", "prose") for m in FLAG.finditer(outside)]
    return sorted(found, key=lambda item: item[0])   # stable: a line's spans before its prose


def unknown(found, flags) -> list[str]:
    bad = []
    for line, flag, kind, context in found:
        allowed = flags[kind]
        if flag in allowed or (flag in ABBREVIATIONS and
                               [f for f in allowed if f.startswith(flag)] == [ABBREVIATIONS[flag]]):
            continue
        where = "any sglang-mezo command or sglang.launch_server" if kind == "any" else \
            "sglang.launch_server" if kind == "launch_server" else f"sglang-mezo {kind}"
        bad.append(f"line {line}: {flag} is not a flag of {where}  [{context[:100]}]")
    return bad


def test_every_documented_flag_exists(flags):
    problems, checked = [], 0
    for path in doc_files():
        found = scan(path.read_text(encoding="utf-8"))
        checked += len(found)
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in unknown(found, flags)]
    assert not problems, "flags in the docs that no command accepts:\n" + "\n".join(problems)
    assert checked >= 100, f"only {checked} flags found in the docs: is the scanner still reading them?"


def test_scanner_reports_what_it_should(flags):
    """The rules above, on a made-up page: unknown or misplaced flags are reported; other tools' are not."""
    page = "\n".join([
        "Use `--no-such-flag-1` with `sglang-mezo eval --steps 3` and `train --n-test 5`, or --no-such-flag-2.",
        "Install with `pip install --no-deps x`; `make demo DEMO_ARGS=\"--bogus\"`; `serve --tp 2`.",
        "```bash",
        "sglang-mezo train --task sst2 \\",
        "    --no-such-flag-3 --out runs/x   # comment: --no-such-flag-4",
        "X=\"0|1\" python -m sglang_mezo serve --mezo-rank 4 --tp 2 --api-key K --mezo-bogus",
        "python -m sglang.launch_server --model-path m --mezo-rank 4",
        "curl -s localhost:30000/mezo/step --data-binary @x.json",
        "pytest --lf",
        "```",
    ])
    bad = unknown(scan(page), flags)
    want = ["line 1: --no-such-flag-1 ", "line 1: --steps is not a flag of sglang-mezo eval",
            "line 1: --no-such-flag-2 ", "line 4: --no-such-flag-3 is not a flag of sglang-mezo train",
            "line 4: --no-such-flag-4 ", "line 6: --mezo-bogus is not a flag of sglang-mezo serve",
            "line 7: --mezo-rank is not a flag of sglang.launch_server"]
    assert len(bad) == len(want) and all(b.startswith(w) for b, w in zip(bad, want)), "\n".join(bad)

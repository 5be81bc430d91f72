"""A fresh clone stands alone: the wheel carries the task data and the C source and works from any
directory; the CLI runs a built-in task with no $SGLANG_MEZO_DATA outside the checkout; `make demo`
stops with the CLI's own error, not a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT, last_json

from sglang_mezo import tasks


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SGLANG_MEZO_DATA", "PYTHONPATH")}
    return {**env, **extra}


def test_wheel_carries_data_and_c_source_and_works_anywhere(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("sglang_mezo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sglang_mezo/noise_native.c" in names
    diffs = sorted(f.name for f in (ROOT / "patches").glob("*.diff"))
    assert diffs and all(f"sglang_mezo/patches/{d}" in names for d in diffs)  # patches/ ships too
    for spec in tasks.TASKS.values():
        for rel in spec.files.values():
            assert f"sglang_mezo/data/{rel}.gz" in names, rel
        assert f"sglang_mezo/data/{spec.files['train'].split('/')[0]}/PROVENANCE.md" in names
    assert wheel.stat().st_size < 25e6
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-warn-conflicts",
                    "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=600)
    code = ("import json, sglang_mezo, sglang_mezo.tasks as t, sglang_mezo.noise_sweep as n\n"
            "from sglang_mezo.backends import sglang_patches as sp\n"
            "print(json.dumps({'file': sglang_mezo.__file__, 'train': len(t.load_split(t.SST2, 'train')),"
            " 'copa': len(t.load_split(t.COPA, 'test')), 'native': n.native_lib(required=True) is not None,"
            " 'patches': [str(f) for f in sp.patch_files()]}))")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=elsewhere,
                       env=clean_env(PYTHONPATH=str(site), SGLANG_MEZO_CACHE=str(tmp_path / "cache")))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["file"].startswith(str(site)) and out["native"]
    assert out["train"] == 6920 and out["copa"] == 100
    assert [Path(f).name for f in out["patches"]] == diffs and all(f.startswith(str(site)) for f in out["patches"])


def test_cli_runs_a_builtin_task_outside_the_checkout(tiny_model, tmp_path):
    exe = Path(sys.executable).with_name("sglang-mezo")
    p = subprocess.run([str(exe), "eval", "--model", tiny_model, "--task", "sst2", "--limit", "12"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path, env=clean_env())
    assert p.returncode == 0, p.stderr[-3000:]
    res = last_json(p.stdout)
    assert res["task"] == "sst2" and res["n"] == 12 and 0 <= res["accuracy"] <= 1


def test_make_demo_failure_shows_the_cli_error(tmp_path):
    p = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS=--model {tmp_path / 'no_such_model'}"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT, env=clean_env())
    assert p.returncode != 0
    assert "sglang-mezo train: error:" in p.stderr and "no_such_model" in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr + p.stdout

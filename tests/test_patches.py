"""patches/*.diff against the installed (pinned) sglang: each applies exactly, and drift fails loudly."""
import inspect

import pytest

from sglang_mezo.backends import sglang_patches as sp


def test_every_patch_matches_the_installed_sglang():
    """Every hunk's context and removed lines are found in the installed file, and each touches code."""
    diffs = sp.patch_files()
    assert diffs, "patches/ holds no diff"
    for d in diffs:
        for fp in sp.parse(d.read_text(encoding="utf-8")):
            _, swaps, imports = sp.plan(fp, d.name)  # raises PatchMismatch on drift
            assert swaps or imports, f"{d.name}: {fp.path} changes nothing"


def test_applied_patch_runs_the_patched_code():
    sp.apply_all()
    sp.apply_all()  # idempotent
    from sglang.srt.lora.backend.torch_backend import TorchNativeLoRABackend

    code = TorchNativeLoRABackend.prepare_lora_batch.__code__
    assert "is_pin_memory_available" in code.co_names, "the method still runs the unpatched code"
    # the file on disk is untouched: the installed package is never edited
    assert ".pin_memory()" in inspect.getsource(TorchNativeLoRABackend.prepare_lora_batch) or \
        "pin_memory=True" in open(inspect.getsourcefile(TorchNativeLoRABackend)).read()


def test_dp_controller_waits_for_requests_instead_of_spinning():
    sp.apply_all()
    from sglang.srt.managers.data_parallel_controller import DataParallelController

    assert "poll" in DataParallelController.event_loop.__code__.co_names  # the patched loop runs


def test_a_drifted_target_fails_loudly():
    d = sp.patch_files()[0]
    fp = sp.parse(d.read_text(encoding="utf-8"))[0]
    start, lines = fp.hunks[0]
    i = next(k for k, (tag, _) in enumerate(lines) if tag == " ")
    lines[i] = (" ", lines[i][1] + "  # drifted")
    with pytest.raises(sp.PatchMismatch, match=r"no longer matches the installed file"):
        sp.plan(fp, d.name)

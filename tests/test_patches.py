"""patches/*.diff against the installed (pinned) sglang: each applies exactly, and drift fails loudly."""
import inspect

import pytest

from sglang_mezo.backends import sglang_patches as sp


def test_every_patch_matches_the_installed_sglang():
    """Every hunk's context and removed lines are found in the installed file, and each touches code."""
    diffs = sp.patch_files()
    assert diffs, "patches/ holds no diff"
    seen = set()
    for name, fp, _, swaps, imports in sp.series():  # raises PatchMismatch on drift
        assert swaps or imports, f"{name}: {fp.path} changes nothing"
        seen.add(name)
    assert seen == {d.name for d in diffs}


def test_a_function_two_patches_change_runs_both():
    """0001 (pin memory) and 0003 (lm_head rows) both change TorchNativeLoRABackend.prepare_lora_batch: the
    series applies 0003 on top of 0001, so the swapped code holds both changes."""
    sp.apply_all()
    from sglang.srt.lora.backend.torch_backend import TorchNativeLoRABackend

    names = TorchNativeLoRABackend.prepare_lora_batch.__code__.co_names
    assert "is_pin_memory_available" in names and "get_lm_head_pruned_lens" in names
    assert "pruned_batch_info" in TorchNativeLoRABackend.run_lora_a_sgemm.__code__.co_consts


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
    # a diff made against the installed file where an earlier diff of the series changed it fails too
    later = next(d for d in sp.patch_files() if d.name.startswith("0003"))
    with pytest.raises(sp.PatchMismatch):
        sp.plan(sp.parse(later.read_text(encoding="utf-8"))[0], later.name)  # without 0001 under it

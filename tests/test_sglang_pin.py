"""The SGLang internals the adapter touches, at the pinned version. Fails loudly on drift."""
import inspect

import sglang

from sglang_mezo.backends.sglang_runner import SGLANG_VERSION


def test_pinned_version():
    assert sglang.__version__ == SGLANG_VERSION, (
        f"sglang {sglang.__version__} installed, adapter written for {SGLANG_VERSION}: re-check "
        "sglang_runner.py (Req fields, ScheduleBatch, one_batch.load_model) and layout.py, then bump the pin")


def test_internals_used_by_the_adapter_exist():
    from sglang.benchmark import one_batch
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.model_executor.model_runner_components import weight_updater

    assert {"server_args", "port_args", "gpu_id", "tp_rank"} <= set(inspect.signature(one_batch.load_model).parameters)
    assert hasattr(one_batch, "TreeCacheNamespace") and hasattr(one_batch, "_init_process_global_configs")
    assert "return_logprob" in inspect.signature(Req.__init__).parameters
    assert hasattr(ScheduleBatch, "init_new") and hasattr(ScheduleBatch, "prepare_for_extend")
    fields = LogitsProcessorOutput.__dataclass_fields__
    assert "next_token_logits" in fields and "input_token_logprobs" in fields
    assert callable(weight_updater._unsupported_derived_weight_cache_error)


def test_fusion_order_in_sglang_source_matches_layout():
    """The fused layouts SGLang's Llama and Qwen2 loaders build are the ones layout.py assumes."""
    import re

    from sglang.srt.models.llama import LlamaForCausalLM
    from sglang.srt.models.qwen2 import Qwen2ForCausalLM

    from sglang_mezo.backends.layout import DEFAULT_PACKED

    for cls in (LlamaForCausalLM, Qwen2ForCausalLM):
        src = inspect.getsource(cls)
        found: dict[str, list[str]] = {}
        for fused, part in re.findall(r'\(\s*"\.?(\w+)",\s*"\.?(\w+)",\s*(?:"[qkv]"|\d)', src):
            if part not in found.setdefault(fused, []):
                found[fused].append(part)
        assert found == DEFAULT_PACKED, (cls.__name__, found)


def test_tp_internals_used_by_layout_and_the_plugin():
    """Under TP, layout.py reads each layer's group (`tp_group`, QKV's `kv_tp_group`); the plugin reads
    the scheduler's `tp_group` (rank 0 answers) and gathers over its CPU group."""
    from sglang.srt.distributed.parallel_state import GroupCoordinator
    from sglang.srt.layers import linear
    from sglang.srt.managers.scheduler import Scheduler

    src = inspect.getsource(linear)
    assert "self.tp_group = tp_group" in src and "self.kv_tp_group = kv_tp_group" in src
    assert "self.num_kv_head_replicas" in src
    assert "self.tp_group = get_parallel().tp_group" in inspect.getsource(Scheduler)
    for name in ("rank_in_group", "world_size", "ranks", "cpu_group", "all_gather_object"):
        assert name in inspect.getsource(GroupCoordinator), name


def test_seam_used_by_the_plugin_and_the_server():
    """plugin.py: SGLang loads plugins (and applies HookRegistry's hooks) at the start of every scheduler
    process; its hook on Scheduler.handle_rpc_request answers in RpcReqOutput.message, which the scheduler
    sends back over the RPC socket. server.py opens that socket through launch_server's public
    init_tokenizer_manager_func, which receives the PortArgs."""
    from sglang.srt.entrypoints import http_server
    from sglang.srt.managers import scheduler
    from sglang.srt.managers.io_struct import RpcReqInput, RpcReqOutput

    assert "load_plugins()" in inspect.getsource(scheduler.run_scheduler_process)
    handler = inspect.getsource(scheduler.Scheduler.handle_rpc_request)
    assert "getattr(self, recv_req.method)" in handler and "barrier(group=self.tp_group.cpu_group)" in handler
    assert "sock_send(self.ipc_channels.recv_from_rpc, output)" in inspect.getsource(scheduler.Scheduler)
    assert {"success", "message"} <= set(RpcReqOutput.__struct_fields__)
    assert {"method", "parameters"} <= set(RpcReqInput.__struct_fields__)
    params = inspect.signature(http_server.launch_server).parameters
    assert "init_tokenizer_manager_func" in params
    assert list(inspect.signature(params["init_tokenizer_manager_func"].default).parameters)[:2] == [
        "server_args", "port_args"]


def test_scheduler_internals_read_by_the_load_probe():
    """serve/load.py: its hook wraps get_new_batch_prefill(running_batch) → NextBatchPlan, holds training
    requests out of `waiting_queue` for one call, and reads `running_batch.reqs`, `chunked_req`, each Req's
    rid / origin_input_ids / finished() and time_stats' wait_queue_entry_time / forward_entry_time."""
    from sglang.srt.managers import scheduler
    from sglang.srt.managers.schedule_batch import NextBatchPlan, Req
    from sglang.srt.observability.req_time_stats import SchedulerReqTimeStats

    assert list(inspect.signature(scheduler.Scheduler.get_new_batch_prefill).parameters) == ["self", "running_batch"]
    assert "self.get_new_batch_prefill(running_batch)" in inspect.getsource(scheduler.Scheduler.get_next_batch_to_run)
    assert {"batch_to_run", "running_batch"} <= set(NextBatchPlan.__struct_fields__)
    init = inspect.getsource(scheduler.Scheduler)
    for name in ("self.waiting_queue", "self.running_batch", "self.chunked_req"):
        assert name in init, name
    assert callable(Req.finished) and "self.origin_input_ids" in inspect.getsource(Req.__init__)
    assert {"wait_queue_entry_time", "forward_entry_time"} <= set(SchedulerReqTimeStats.__dataclass_fields__)


def test_encoder_internals_used_by_the_mean_pooled_classifier():
    """mean_pool_sglang.py: SGLang's BertForSequenceClassification builds `bert` (returning token states
    when use_bert_pooler) and a CrossEncodingPooler(config, classifier, pooler) that calls
    pooler(states_of_one_sequence, forward_batch); the registry resolves the first architecture from
    its `models` dict; plugin.py registers the class just before Scheduler.__init__."""
    from sglang.srt.layers.pooler import CrossEncodingPooler
    from sglang.srt.managers import scheduler
    from sglang.srt.models import bert
    from sglang.srt.models.registry import ModelRegistry

    init = inspect.getsource(bert.BertForSequenceClassification.__init__)
    assert "use_bert_pooler=True" in init and "CrossEncodingPooler(config, self.classifier, self.bert.pooler)" in init
    assert "if not self.use_bert_pooler:" in inspect.getsource(bert.BertModel.forward)
    fwd = inspect.getsource(CrossEncodingPooler.forward)
    assert "self.pooler(pooled_data_i, forward_batch)" in fwd and "self.classifier(pooled_output)" in fwd
    assert "self.models.get(first_arch)" in inspect.getsource(ModelRegistry.resolve_model_cls)
    assert callable(scheduler.Scheduler.__init__)

import json
import re
from pathlib import Path

import pytest

from presets import (
    PRESETS,
    SKUS,
    SizingError,
    format_plan,
    get_preset,
    get_sku,
    plan_inference,
    plan_local,
    plan_tuning,
    resolve_preset,
)
from presets.cpu import CpuDtype
from presets.sizing import GPU_MEMORY_UTILIZATION

# preset, instance type -> nodes, GPUs per node, tensor parallel, pipeline parallel, dtype, max_model_len
TABLE = [
    ("smollm2-135m-instruct", "Standard_NC6s_v3", 1, 1, 1, 1, "float16", 2048),
    ("phi-3-mini-4k-instruct", "Standard_NC6s_v3", 1, 1, 1, 1, "float16", 4096),
    ("phi-3-mini-4k-instruct", "Standard_NC4as_T4_v3", 1, 1, 1, 1, "float16", 4096),
    ("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", 1, 1, 1, 1, "bfloat16", 4096),
    ("phi-3-mini-128k-instruct", "Standard_NC6s_v3", 1, 1, 1, 1, "float16", 11264),
    ("phi-3-mini-128k-instruct", "Standard_NC24s_v3", 1, 4, 4, 1, "float16", 104448),
    ("phi-3-mini-128k-instruct", "Standard_NC24ads_A100_v4", 1, 1, 1, 1, "bfloat16", 131072),
    ("phi-3-mini-128k-instruct", "Standard_ND96asr_v4", 1, 2, 2, 1, "bfloat16", 131072),
    ("phi-4-mini-instruct", "Standard_NV36ads_A10_v5", 1, 1, 1, 1, "bfloat16", 83968),
    ("phi-4-mini-instruct", "Standard_NV72ads_A10_v5", 1, 2, 2, 1, "bfloat16", 131072),
    ("llama-3.1-8b-instruct", "Standard_NC6s_v3", 2, 1, 1, 2, "float16", 62464),
    ("llama-3.1-8b-instruct", "Standard_NC12s_v3", 1, 2, 2, 1, "float16", 62464),
    ("llama-3.1-8b-instruct", "Standard_NC24s_v3", 1, 4, 4, 1, "float16", 131072),
    ("llama-3.1-8b-instruct", "Standard_NV36ads_A10_v5", 1, 1, 1, 1, "bfloat16", 19456),
    ("llama-3.1-8b-instruct", "Standard_ND96isr_H100_v5", 1, 1, 1, 1, "bfloat16", 131072),
    ("mistral-7b-instruct", "Standard_NC12s_v3", 1, 2, 2, 1, "float16", 32768),
    ("mistral-7b-instruct", "Standard_NC24ads_A100_v4", 1, 1, 1, 1, "bfloat16", 32768),
    ("qwen2.5-coder-7b-instruct", "Standard_NC24s_v3", 1, 2, 2, 1, "float16", 32768),
    ("falcon-7b-instruct", "Standard_NC64as_T4_v3", 1, 2, 1, 2, "float16", 2048),
    ("falcon-7b-instruct", "Standard_NC4as_T4_v3", 2, 1, 1, 2, "float16", 2048),
    ("falcon-40b-instruct", "Standard_ND96asr_v4", 1, 4, 4, 1, "bfloat16", 2048),
    ("falcon-40b-instruct", "Standard_NC24s_v3", 2, 4, 4, 2, "float16", 2048),
    ("llama-3.1-70b-instruct", "Standard_NC24ads_A100_v4", 3, 1, 1, 3, "bfloat16", 131072),
    ("llama-3.1-70b-instruct", "Standard_NC48ads_A100_v4", 2, 2, 2, 2, "bfloat16", 131072),
    ("llama-3.1-70b-instruct", "Standard_ND96asr_v4", 1, 8, 8, 1, "bfloat16", 131072),
    ("llama-3.1-70b-instruct", "Standard_ND96amsr_A100_v4", 1, 4, 4, 1, "bfloat16", 131072),
    ("llama-3.1-70b-instruct", "Standard_NC80adis_H100_v5", 1, 2, 2, 1, "bfloat16", 32768),
    ("llama-3.1-70b-instruct", "Standard_ND96isr_H200_v5", 1, 2, 2, 1, "bfloat16", 131072),
]


@pytest.mark.parametrize(
    ("preset", "sku", "nodes", "gpus_per_node", "tp", "pp", "dtype", "max_model_len"),
    TABLE,
    ids=[f"{row[0]}@{row[1]}" for row in TABLE],
)
def test_inference_plan_table(preset, sku, nodes, gpus_per_node, tp, pp, dtype, max_model_len):
    plan = plan_inference(get_preset(preset), get_sku(sku))
    actual = (
        plan.nodes,
        plan.gpus_per_node,
        plan.tensor_parallel,
        plan.pipeline_parallel,
        plan.dtype,
        plan.max_model_len,
    )
    assert actual == (nodes, gpus_per_node, tp, pp, dtype, max_model_len)


def _all_plans():
    for preset in PRESETS.values():
        for sku in SKUS.values():
            yield plan_inference(preset, sku)


def test_every_plan_is_a_valid_vllm_layout_that_fits():
    for plan in _all_plans():
        assert plan.sku is not None and plan.need_gb is not None and plan.available_gb is not None
        tp = plan.tensor_parallel
        assert tp & (tp - 1) == 0, plan
        assert plan.sku.gpu_count % tp == 0, plan
        assert plan.preset.num_kv_heads is not None and plan.preset.num_kv_heads % tp == 0, plan
        assert plan.gpus_per_node <= plan.sku.gpu_count
        assert plan.gpus_per_node * plan.nodes == tp * plan.pipeline_parallel
        assert plan.need_gb <= plan.available_gb, plan
        expected_available = plan.total_gpus * plan.sku.gpu_memory_gb * GPU_MEMORY_UTILIZATION
        assert plan.available_gb == pytest.approx(expected_available)
        assert plan.need_gb == pytest.approx(plan.weights_gb + plan.kv_cache_gb + plan.overhead_gb)
        assert plan.max_model_len is not None
        assert plan.max_model_len <= (plan.preset.context_length or 0)


def test_phi3_mini_on_v100_runs_in_float16():
    plan = plan_inference(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3"))
    assert plan.dtype == "float16"
    assert (plan.nodes, plan.gpus_per_node, plan.tensor_parallel, plan.pipeline_parallel) == (1, 1, 1, 1)
    assert any("has no bfloat16" in note for note in plan.notes)
    assert plan.weights_gb == pytest.approx(7.64)
    # 2 x 32 layers x 32 KV heads x 96 x 2 bytes x 4096 tokens
    assert plan.kv_cache_gb == pytest.approx(2 * 32 * 32 * 96 * 2 * 4096 / 1e9)
    assert plan.overhead_gb == pytest.approx(1 + 0.1 * (7.64 + 2 * 32 * 32 * 96 * 2 * 4096 / 1e9))
    assert plan.available_gb == pytest.approx(14.4)


@pytest.mark.parametrize("sku", ["Standard_NC6s_v3", "Standard_NC4as_T4_v3", "Standard_NC64as_T4_v3"])
def test_bfloat16_presets_fall_back_to_float16_without_bf16(sku: str):
    plan = plan_inference(get_preset("mistral-7b-instruct"), get_sku(sku))
    assert plan.dtype == "float16"
    assert plan.engine_args()["dtype"] == "float16"


def test_bfloat16_kept_on_ampere_and_later():
    for sku in ("Standard_NV36ads_A10_v5", "Standard_NC24ads_A100_v4", "Standard_ND96isr_H100_v5"):
        plan = plan_inference(get_preset("phi-3-mini-4k-instruct"), get_sku(sku))
        assert plan.dtype == "bfloat16"
        assert not any("bfloat16" in note for note in plan.notes)


def test_70b_needs_pipeline_parallel_nodes_on_single_gpu_a100s():
    plan = plan_inference(get_preset("llama-3.1-70b-instruct"), get_sku("Standard_NC24ads_A100_v4"))
    assert (plan.nodes, plan.gpus_per_node, plan.tensor_parallel, plan.pipeline_parallel) == (3, 1, 1, 3)
    assert plan.max_model_len == 131072
    assert plan.engine_args()["pipeline_parallel_size"] == 3
    assert any("pipeline stages" in note for note in plan.notes)
    assert any("too little for the weights" in step for step in plan.steps)
    same = plan_inference(
        get_preset("llama-3.1-70b-instruct"), get_sku("Standard_NC24ads_A100_v4"), node_count=3
    )
    assert same == plan


def test_node_count_caps_the_nodes_and_the_error_gives_both_numbers():
    with pytest.raises(SizingError) as caught:
        plan_inference(
            get_preset("llama-3.1-70b-instruct"), get_sku("Standard_NC24ads_A100_v4"), node_count=2
        )
    error = caught.value
    assert error.available_gb == pytest.approx(144.0)
    assert error.need_gb > error.available_gb
    message = str(error)
    assert f"need {error.need_gb:.1f} GB" in message
    assert "have 144.0 GB on 2 x Standard_NC24ads_A100_v4" in message
    assert "raise resource.count to 3" in message


def test_70b_fits_nowhere_on_one_t4():
    with pytest.raises(SizingError) as caught:
        plan_inference(get_preset("llama-3.1-70b-instruct"), get_sku("Standard_NC4as_T4_v3"), node_count=1)
    error = caught.value
    message = str(error)
    need = float(re.search(r"need ([\d.]+) GB", message).group(1))  # type: ignore[union-attr]
    have = float(re.search(r"have ([\d.]+) GB", message).group(1))  # type: ignore[union-attr]
    assert need == pytest.approx(error.need_gb, abs=0.05)
    assert have == pytest.approx(14.4)
    assert need > 141  # the bf16 weights alone are 141 GB
    assert "1 x Standard_NC4as_T4_v3" in message
    assert "weights 141.1 GB" in message


def test_max_model_len_shrinks_to_what_fits_and_says_so():
    preset, sku = get_preset("phi-3-mini-128k-instruct"), get_sku("Standard_NC6s_v3")
    plan = plan_inference(preset, sku)
    assert plan.max_model_len is not None
    assert 2048 <= plan.max_model_len < 131072
    assert plan.max_model_len % 1024 == 0
    assert plan.nodes == 1
    assert any("reduced from 131072 to 11264" in note for note in plan.notes)
    assert any("max_model_len 131072 needs" in step for step in plan.steps)
    # The next step of 1024 tokens no longer fits on one node, so asking for it adds a node.
    longer = plan_inference(preset, sku, max_model_len=plan.max_model_len + 1024)
    assert longer.nodes == 2
    assert longer.max_model_len == plan.max_model_len + 1024


def test_explicit_max_model_len_is_honoured():
    plan = plan_inference(
        get_preset("llama-3.1-8b-instruct"), get_sku("Standard_NV36ads_A10_v5"), max_model_len=4096
    )
    assert plan.max_model_len == 4096
    assert plan.engine_args()["max_model_len"] == 4096
    with pytest.raises(ValueError, match="exceeds the context length"):
        plan_inference(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3"), max_model_len=8192)


def test_explicit_max_model_len_that_cannot_fit_is_a_sizing_error():
    with pytest.raises(SizingError, match="for 131072 tokens"):
        plan_inference(
            get_preset("phi-3-mini-128k-instruct"),
            get_sku("Standard_NC6s_v3"),
            node_count=1,
            max_model_len=131072,
        )


def test_invalid_arguments():
    with pytest.raises(ValueError, match="node_count"):
        plan_inference(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3"), node_count=0)
    with pytest.raises(ValueError, match="max_model_len"):
        plan_inference(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3"), max_model_len=0)


def test_tensor_parallel_stops_at_the_kv_heads():
    # Qwen2.5-Coder-7B has 4 KV heads: tp 4 at most, a second pipeline stage for more GPUs.
    plan = plan_inference(
        get_preset("qwen2.5-coder-7b-instruct"), get_sku("Standard_ND96asr_v4"), max_model_len=32768
    )
    assert plan.tensor_parallel <= 4
    falcon = plan_inference(get_preset("falcon-7b-instruct"), get_sku("Standard_NC64as_T4_v3"))
    assert (falcon.tensor_parallel, falcon.pipeline_parallel, falcon.gpus_per_node) == (1, 2, 2)
    assert any("tensor parallelism stops at 1" in note for note in falcon.notes)


def test_engine_args_carry_preset_defaults_and_the_plan():
    plan = plan_inference(get_preset("phi-3-mini-128k-instruct"), get_sku("Standard_NC24s_v3"))
    assert plan.engine_args() == {
        "trust_remote_code": False,
        "max_model_len": 104448,
        "tensor_parallel_size": 4,
        "pipeline_parallel_size": 1,
        "dtype": "float16",
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
    }
    # A copy each time: callers layer ConfigMap overrides on it.
    plan.engine_args()["dtype"] = "float32"
    assert plan.engine_args()["dtype"] == "float16"
    assert plan.preset.engine_args["max_model_len"] == 131072


def test_unknown_size_uses_all_gpus_of_one_node():
    plan = plan_inference(resolve_preset("acme/mystery-13b"), get_sku("Standard_NC24s_v3"), node_count=3)
    assert (plan.nodes, plan.gpus_per_node, plan.tensor_parallel, plan.pipeline_parallel) == (1, 4, 4, 1)
    assert plan.dtype == "float16"
    assert plan.max_model_len is None
    assert plan.weights_gb is None and plan.need_gb is None
    assert plan.available_gb == pytest.approx(57.6)
    assert any("model size unknown" in step and "all 4 GPU(s) of one" in step for step in plan.steps)
    args = plan.engine_args()
    assert "max_model_len" not in args
    assert args["tensor_parallel_size"] == 4
    on_ampere = plan_inference(resolve_preset("acme/mystery-13b"), get_sku("Standard_NC24ads_A100_v4"))
    assert on_ampere.dtype == "auto"
    assert "unknown" in format_plan(plan)


def test_local_directory_preset_is_sized_from_its_files(tmp_path: Path):
    config = {
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_size": 4096,
        "max_position_embeddings": 8192,
        "torch_dtype": "float32",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with (tmp_path / "model.safetensors").open("wb") as handle:
        handle.truncate(40_000_000_000)  # sparse: 40 GB of float32 weights, 10 B params
    preset = resolve_preset(str(tmp_path))
    assert preset.params_billion == pytest.approx(10.0)
    plan = plan_inference(preset, get_sku("Standard_NC24ads_A100_v4"))
    # float32 weights are served in half precision, as vLLM's dtype=auto does.
    assert plan.dtype == "bfloat16"
    assert plan.weights_gb == pytest.approx(20.0)
    assert plan.max_model_len == 8192
    assert (plan.nodes, plan.gpus_per_node) == (1, 1)


BF16_CPU = CpuDtype("bfloat16", "chosen")


def test_plan_local_runs_the_preset_on_cpu():
    plan = plan_local(get_preset("smollm2-135m-instruct"), BF16_CPU)
    assert plan.sku is None and plan.device == "cpu"
    assert (plan.gpus_per_node, plan.nodes, plan.tensor_parallel, plan.pipeline_parallel) == (0, 1, 1, 1)
    assert plan.dtype == "bfloat16"
    assert plan.max_model_len == 2048
    assert plan.kv_cache_gb == pytest.approx(2 * 30 * 3 * 64 * 2 * 2048 / 1e9)
    assert plan.engine_args() == {
        "max_model_len": 2048,
        "enforce_eager": True,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "dtype": "bfloat16",
    }
    assert "this machine (CPU)" in format_plan(plan)
    assert plan.notes == ()


def test_plan_local_serves_float32_by_default():
    plan = plan_local(get_preset("smollm2-135m-instruct"))
    assert plan.dtype == "float32" and plan.engine_args()["dtype"] == "float32"
    # float32 doubles the weights and the KV cache.
    assert plan.weights_gb == pytest.approx(0.135 * 4)
    assert plan.kv_cache_gb == pytest.approx(2 * 30 * 3 * 64 * 4 * 2048 / 1e9)
    assert plan.notes == ("bfloat16 weights served in float32",)
    assert re.search(r"^dtype\s+float32 \(greedy answers match on every processor", format_plan(plan), re.M)


def test_plan_local_caps_at_the_context_and_handles_unknown_sizes():
    assert plan_local(get_preset("phi-3-mini-4k-instruct"), BF16_CPU).max_model_len == 4096
    unknown = plan_local(resolve_preset("acme/mystery-13b"))
    assert unknown.max_model_len is None and unknown.need_gb is None
    assert unknown.engine_args()["enforce_eager"] is True


def test_format_plan_has_a_table_and_the_arithmetic():
    plan = plan_inference(get_preset("llama-3.1-70b-instruct"), get_sku("Standard_NC24ads_A100_v4"))
    text = format_plan(plan)
    assert re.search(r"^nodes\s+3$", text, re.MULTILINE)
    assert re.search(r"^pipeline parallel\s+3$", text, re.MULTILINE)
    assert re.search(r"^weights\s+141.10 GB$", text, re.MULTILINE)
    assert "arithmetic:" in text
    assert "weights: 70.55 B params x 2 bytes (bfloat16) = 141.10 GB" in text
    assert "x 80 layers x 8 KV heads x 128 head_dim x 2 bytes x 131072 tokens = 42.95 GB" in text
    assert "available: 3 GPU(s) x 80 GB x 0.9 gpu_memory_utilization = 216.00 GB" in text
    assert all(step in text for step in plan.steps)


def test_qlora_phi3_fits_one_v100():
    plan = plan_tuning(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3"), "qlora")
    assert plan.method == "qlora"
    assert plan.dtype == "float16"
    assert plan.workers == 1 and not plan.sharded
    assert plan.weights_gb == pytest.approx(3.82 * 0.5 * 1.2)
    assert plan.need_gb is not None and plan.need_gb <= plan.available_gb == pytest.approx(14.4)
    assert any("4-bit" in step for step in plan.steps)
    assert "workers (GPUs)" in format_plan(plan)


def test_lora_phi3_on_a_v100_needs_gradient_checkpointing():
    plan = plan_tuning(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3"), "lora")
    assert plan.gradient_checkpointing and not plan.sharded
    assert plan.weights_gb == pytest.approx(7.64)
    assert any("gradient checkpointing on" in note for note in plan.notes)
    roomy = plan_tuning(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC24ads_A100_v4"), "lora")
    assert not roomy.gradient_checkpointing


def test_lora_7b_on_one_v100_fails_with_both_numbers():
    with pytest.raises(SizingError) as caught:
        plan_tuning(get_preset("mistral-7b-instruct"), get_sku("Standard_NC6s_v3"), "lora")
    error = caught.value
    assert error.need_gb > error.available_gb == pytest.approx(14.4)
    assert f"need {error.need_gb:.1f} GB" in str(error)
    assert "have 14.4 GB" in str(error)
    assert "try qlora" in str(error)


def test_lora_7b_shards_over_a_multi_gpu_node():
    plan = plan_tuning(get_preset("mistral-7b-instruct"), get_sku("Standard_NC24s_v3"), "lora")
    assert plan.sharded and plan.gradient_checkpointing
    assert plan.workers == 4
    assert plan.need_gb is not None and plan.need_gb <= plan.available_gb


def test_tuning_rejects_unsupported_methods():
    with pytest.raises(ValueError, match="does not support lora tuning"):
        plan_tuning(get_preset("llama-3.1-70b-instruct"), get_sku("Standard_ND96amsr_A100_v4"), "lora")
    with pytest.raises(ValueError, match="tuning method must be one of"):
        plan_tuning(get_preset("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3"), "full")


def test_tuning_of_unknown_size_uses_one_node():
    plan = plan_tuning(resolve_preset("acme/mystery-13b"), get_sku("Standard_NC24s_v3"), "qlora")
    assert plan.workers == 4 and plan.gradient_checkpointing
    assert plan.need_gb is None
    assert "model size unknown" in plan.steps[0]


def test_tuning_sequence_length_follows_the_context():
    plan = plan_tuning(get_preset("smollm2-135m-instruct"), get_sku("Standard_NC4as_T4_v3"), "lora")
    assert plan.seq_len == 2048
    longer = plan_tuning(
        get_preset("smollm2-135m-instruct"), get_sku("Standard_NC4as_T4_v3"), "lora", seq_len=4096
    )
    assert longer.activations_gb is not None and plan.activations_gb is not None
    assert longer.activations_gb == pytest.approx(2 * plan.activations_gb)

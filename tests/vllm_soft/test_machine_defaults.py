"""What vllm-soft picks for the machine at hand when the user does not: the dtype rule and
``vllm-soft serve``'s defaults (pure functions; no engine)."""

import pytest

from rollout.config import from_dict
from trainer.settings import LearnerConfig
from vllm_soft.models import MODELS
from vllm_soft.runtime import choose_dtype, resolve_dtype
from vllm_soft.serve import CPU_KV_CACHE_MAX_BYTES, cpu_kv_cache_bytes, serve_argv

GIB = 1 << 30


@pytest.mark.parametrize("has_cuda, has_bf16_units, expected", [
    (True, False, "bfloat16"), (True, True, "bfloat16"), (False, True, "bfloat16"), (False, False, "float32"),
])
def test_auto_dtype_is_bf16_only_on_cuda_or_cpus_with_bf16_units(has_cuda, has_bf16_units, expected):
    assert choose_dtype(has_cuda, has_bf16_units) == expected


def test_explicit_dtypes_are_kept_and_auto_is_one_of_the_two():
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("auto") in ("float32", "bfloat16")


def test_learner_precision_takes_auto_from_a_config():
    auto = from_dict(LearnerConfig, {"mixed_precision": "auto"})
    assert auto.computes_in_bf16() == (resolve_dtype("auto") == "bfloat16")
    assert from_dict(LearnerConfig, {"mixed_precision": True}).computes_in_bf16() is True
    with pytest.raises(ValueError, match="mixed_precision"):
        from_dict(LearnerConfig, {"mixed_precision": "yes"})


def test_cpu_kv_cache_is_a_quarter_of_available_memory_capped():
    assert cpu_kv_cache_bytes(8 * GIB) == 2 * GIB
    assert cpu_kv_cache_bytes(64 * GIB) == CPU_KV_CACHE_MAX_BYTES
    assert cpu_kv_cache_bytes(GIB // 2) == 256 << 20  # never below one 256 MiB unit
    assert cpu_kv_cache_bytes(7 * GIB) % (256 << 20) == 0


def test_serve_names_a_named_model_as_typed_and_fills_cpu_defaults(tiny_model_path):
    assert "tiny" in MODELS
    argv, said = serve_argv(["tiny", "--soft-thinking"], on_cpu=True, cpu_dtype="float32", available_bytes=16 * GIB)
    folder = argv[0]
    assert folder == str(tiny_model_path)
    assert argv[argv.index("--served-model-name") + 1 : argv.index("--served-model-name") + 3] == ["tiny", folder]
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(4 * GIB)
    assert argv[argv.index("--dtype") + 1] == "float32"
    assert len(said) == 3 and "--soft-thinking" in argv


def test_serve_never_changes_what_the_user_set(tiny_model_path):
    given = [str(tiny_model_path), "--dtype=bfloat16", "--gpu_memory_utilization", "0.5", "--served-model-name", "m"]
    argv, said = serve_argv(given, on_cpu=True, cpu_dtype="float32", available_bytes=16 * GIB)
    assert argv == given and said == []
    # On CUDA, vLLM's own defaults stand; a named model still gets its name.
    argv, said = serve_argv(["tiny"], on_cpu=False, cpu_dtype="float32", available_bytes=0)
    assert "--dtype" not in argv and "--kv-cache-memory-bytes" not in argv and "--served-model-name" in argv

"""Which runner and scheduling a soft-thinking engine gets, on a vLLM made to believe
Triton works (as on any CUDA machine, where vLLM would build Model Runner V2)."""


import pytest
from in_process import engine_in_this_process

from vllm_soft import plugin

plugin.register()


@pytest.fixture
def triton_works(monkeypatch):
    import vllm.config.vllm as vllm_config_module

    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True)


def _engine_args(path, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(path), enforce_eager=True, max_model_len=512, **kwargs)


def test_soft_engine_selects_the_v1_runner_and_synchronous_scheduling(tiny_model_path, triton_works):
    plain_args = _engine_args(tiny_model_path)
    plain = plain_args.create_engine_config()
    assert plain.use_v2_model_runner, "with Triton, vLLM itself picks Model Runner V2"
    assert plain_args.async_scheduling is None, "plain engines leave scheduling to vLLM"

    soft_args = _engine_args(tiny_model_path, additional_config={"soft_thinking": {"top_k": 4}})
    soft = soft_args.create_engine_config()
    assert not soft.use_v2_model_runner
    assert soft_args.async_scheduling is False and soft.scheduler_config.async_scheduling is False
    # The property answers the same in every process the config is sent to.
    import pickle

    assert not pickle.loads(pickle.dumps(soft)).use_v2_model_runner


def test_asking_for_model_runner_v2_with_soft_thinking_is_refused(tiny_model_path, triton_works, monkeypatch):
    import vllm.envs as envs

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    monkeypatch.setattr(envs, "VLLM_USE_V2_MODEL_RUNNER", True)  # vLLM may cache its environment
    with pytest.raises(ValueError, match="VLLM_USE_V2_MODEL_RUNNER=1"):
        _engine_args(tiny_model_path, additional_config={"soft_thinking": {}}).create_engine_config()
    assert _engine_args(tiny_model_path).create_engine_config().use_v2_model_runner  # plain: as asked


def test_async_scheduling_with_soft_thinking_is_refused(tiny_model_path):
    with pytest.raises(ValueError, match="async_scheduling=True.*--async-scheduling"):
        _engine_args(tiny_model_path, async_scheduling=True, additional_config={"soft_thinking": {}}).create_engine_config()


def test_bad_engine_knobs_fail_at_start(tiny_model_path):
    with pytest.raises(ValueError, match="soft_thinking.top_k"):
        _engine_args(tiny_model_path, additional_config={"soft_thinking": {"top_k": 0}}).create_engine_config()
    with pytest.raises(ValueError, match="soft_thinking_requests.*opt_in, all"):
        config = {"soft_thinking": {}, "soft_thinking_requests": "some"}
        _engine_args(tiny_model_path, additional_config=config).create_engine_config()


@pytest.mark.slow
def test_a_soft_engine_whose_runner_lacks_the_soft_step_does_not_start(tiny_model_path, monkeypatch):
    """Defence in depth: if a runner without the soft step is ever built (a vLLM change
    routes around the V1 runner's patch), start-up fails naming the runner."""
    from vllm import LLM

    from vllm_soft.patches import model_runner

    monkeypatch.setattr(model_runner, "_soft_runner", lambda runner, defaults: None)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, with the stand-in
    with pytest.raises(RuntimeError, match="CPUModelRunner, which has no soft step"):
        LLM(model=str(tiny_model_path), enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=1 << 26,
            additional_config={"soft_thinking": {}})


@pytest.mark.slow
def test_soft_request_to_an_engine_without_a_soft_step_is_rejected(tiny_model_path):
    """A plain engine's workers have no soft step: a soft request is an error, not a plain decode."""
    from vllm import LLM, SamplingParams, TokensPrompt

    with engine_in_this_process():  # the check is the front end's: no engine processes needed
        llm = LLM(model=str(tiny_model_path), enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=1 << 26)
    try:
        soft = SamplingParams(max_tokens=4, extra_args={"soft_thinking": {}})
        with pytest.raises(ValueError, match="started without it"):
            llm.generate([TokensPrompt(prompt_token_ids=[1, 2, 3])], soft, use_tqdm=False)
        plain = llm.generate([TokensPrompt(prompt_token_ids=[1, 2, 3])], SamplingParams(max_tokens=4), use_tqdm=False)
        assert len(plain[0].outputs[0].token_ids) == 4
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_a_sampler_that_can_bypass_the_soft_step_is_refused():
    from types import SimpleNamespace

    from vllm.v1.sample import sampler

    from vllm_soft.patches.model_runner import sampler_bypass

    assert sampler_bypass(sampler) is None, "this vLLM build always samples through Sampler.sample"
    # vLLM 0.33 on ROCm gfx1250 with aiter on (scripts/check_vllm_builds.py notes the path).
    rocm_033 = SimpleNamespace(mixed_sample_eligible=lambda *args: True,
                               rocm_aiter_ops=SimpleNamespace(is_enabled=lambda: True))
    assert "VLLM_ROCM_USE_AITER=0" in sampler_bypass(rocm_033, on_gfx1250=lambda: True)
    assert sampler_bypass(rocm_033, on_gfx1250=lambda: False) is None

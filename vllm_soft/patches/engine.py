"""Engine patches: a soft-thinking engine builds the runner that holds the soft step and
schedules synchronously; start-up fails if a worker ends up without the soft step.

Why: on CUDA, vLLM 0.32/0.33 build Model Runner V2 whenever Triton works and schedule
asynchronously by default. The soft step lives in the V1 runner (the one the CPU runner
subclasses) and needs each step's output before the next step is scheduled (its next
input is that output's mixture). Left alone, a GPU engine started with soft thinking
would decode soft requests as plain tokens.

What:
- ``EngineArgs.create_engine_config``: with ``additional_config["soft_thinking"]``, an
  explicit ``async_scheduling=True`` is an error naming it; otherwise it is set False
  before ``VllmConfig`` would turn it on. One log line says what was chosen and why.
- ``VllmConfig.use_v2_model_runner`` (a property every process evaluates): False for
  soft-thinking configs; ``VLLM_USE_V2_MODEL_RUNNER=1`` or a feature that needs V2 is an
  error naming it. Plain engines keep vLLM's own answer.
- ``WorkerWrapperBase.init_device`` (defence in depth): after the worker built its model
  runner, a soft-thinking engine whose runner has no soft step fails to start, naming the
  runner class.

When it can go: once the soft step runs in Model Runner V2 and under async scheduling.
"""

import functools

from vllm_soft.log import logger
from vllm_soft.params import engine_defaults, soft_by_default, soft_thinking_on


V2_ENV = "VLLM_USE_V2_MODEL_RUNNER"


def _refuse_v2_requests(config) -> None:
    """Errors for settings that ask for Model Runner V2, which has no soft step."""
    import vllm.envs as envs

    if envs.VLLM_USE_V2_MODEL_RUNNER:
        raise ValueError(
            f"soft thinking runs in vLLM's V1 model runner, but {V2_ENV}=1 asks for Model Runner V2, "
            f"which has no soft step: unset {V2_ENV} (or set it to 0) for soft-thinking engines"
        )
    attention = getattr(config, "attention_config", None)
    for name, value in (
        ("attention_config.hisparse_config", getattr(attention, "hisparse_config", None)),
        ("watermark_config", getattr(config, "watermark_config", None)),
    ):
        if value is not None:
            raise ValueError(f"{name} needs vLLM's Model Runner V2, which has no soft step: drop it or soft thinking")


def apply_runner_selection() -> None:
    from vllm.config.vllm import VllmConfig
    from vllm.engine.arg_utils import EngineArgs

    create_engine_config = EngineArgs.create_engine_config
    use_v2_model_runner = VllmConfig.use_v2_model_runner

    @functools.wraps(create_engine_config)
    def create_engine_config_(self, *args, **kwargs):
        if engine_defaults(self.additional_config) is None:  # validates the engine's knobs too
            return create_engine_config(self, *args, **kwargs)
        soft_by_default(self.additional_config)  # validates which requests are soft
        if self.async_scheduling:
            raise ValueError(
                "soft thinking needs synchronous scheduling (each soft step's output is the next "
                "step's input), but async_scheduling=True was asked for: drop --async-scheduling"
            )
        self.async_scheduling = False
        config = create_engine_config(self, *args, **kwargs)
        assert not config.use_v2_model_runner and not config.scheduler_config.async_scheduling
        logger.info(
            "vllm-soft: soft thinking on: using vLLM's V1 model runner (it holds the soft step) with "
            "synchronous scheduling (each soft step's output is the next step's input)"
        )
        return config

    @functools.wraps(use_v2_model_runner.fget)
    def use_v2_model_runner_(self) -> bool:
        if soft_thinking_on(self.additional_config):
            _refuse_v2_requests(self)
            return False
        return use_v2_model_runner.fget(self)

    EngineArgs.create_engine_config = create_engine_config_
    VllmConfig.use_v2_model_runner = property(use_v2_model_runner_)


def apply_soft_step_guard() -> None:
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    init_device = WorkerWrapperBase.init_device

    @functools.wraps(init_device)
    def init_device_(self, *args, **kwargs):
        result = init_device(self, *args, **kwargs)
        if soft_thinking_on(self.vllm_config.additional_config):
            runner = getattr(self.worker, "model_runner", None)
            if getattr(runner, "vllm_soft", None) is None:
                kind = type(runner)
                raise RuntimeError(
                    f"soft thinking is on, but this worker built {kind.__module__}.{kind.__qualname__}, "
                    "which has no soft step (vllm-soft patches vllm.v1.worker.gpu_model_runner.GPUModelRunner); "
                    "refusing to start rather than decode soft requests as plain tokens"
                )
        return result

    WorkerWrapperBase.init_device = init_device_

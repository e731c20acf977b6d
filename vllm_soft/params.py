"""Soft-thinking knobs: one typed, validated dataclass for engine defaults and requests.

Where knobs come from, later ones overriding earlier ones:

    built-in defaults ◄─ engine defaults ◄─ request knobs
    (this file)          additional_config["soft_thinking"]   SamplingParams.extra_args["soft_thinking"]
                         or `vllm serve --soft-thinking-*`     or flat `soft_thinking_<knob>` keys
                                                               (OpenAI `vllm_xargs` accepts only flat values)

A request is soft when its extra_args hold ``soft_thinking`` (a dict, possibly empty,
or a truthy flag) or any ``soft_thinking_<knob>`` key, or, on an engine whose
``additional_config["soft_thinking_requests"]`` is ``"all"`` (what ``vllm serve
--soft-thinking`` sets, so that any OpenAI client gets soft thinking), when it says nothing
about soft thinking; ``"soft_thinking": 0`` opts a request out. Offline engines default to
``"opt_in"``: only requests that ask are soft. Defaults follow the Soft Thinking
paper's recommended settings (top-k 15, top-p 0.95, min-p 0.001, temperature 0.6,
cold-stop entropy 0.01 with patience 256).
"""

import ast
import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Literal

EXTRA_ARGS_KEY = "soft_thinking"
REQUESTS_KEY = "soft_thinking_requests"
"""``additional_config`` key: which requests of a soft-thinking engine are soft (``REQUEST_POLICIES``)."""
REQUEST_POLICIES = ("opt_in", "all")
FLAT_PREFIX = "soft_thinking_"
NOISES = ("auto", "none", "dirichlet", "gumbel", "gaussian")
AUTO = "auto"
"""The value of ``noise`` and ``think_end`` that the front end resolves per request."""


@dataclass(frozen=True)
class SoftThinkingParams:
    """The knobs of one request's soft span (see ``soft_math`` for the step itself)."""

    mode: Literal["replace", "add", "gate", "hidden"] = "replace"
    """replace: next input = concept embedding; add: E[emitted] + scale * concept (SCM);
    gate: HRPO's learned gate between E[emitted] and the concept (the model folder's
    ``soft_gate/gate.safetensors``, ``vllm_soft.gate``; HRPO samples at temperature 0.5, top-k 50);
    hidden: Coconut's continuous thought, the previous position's last hidden state, for
    ``max_soft_steps`` latent steps (needs max_soft_steps; emit argmax; no noise or multiplex)."""
    scale: float = 1.0
    """Weight of the concept vector in mode 'add'."""
    top_k: int = 15
    """At most this many tokens in the mixture."""
    top_p: float = 0.95
    """Keep the shortest prefix of the top-k whose cumulative probability reaches this."""
    min_p: float = 0.001
    """Drop tokens whose probability is below min_p times the largest one."""
    temperature: float = 0.6
    """Temperature of the soft distribution (the request's own temperature applies after thinking)."""
    emit: Literal["argmax", "sample"] = "argmax"
    """Emitted token: argmax of the weights (readable trace) or a sample from them (the RL action)."""
    noise: Literal["auto", "none", "dirichlet", "gumbel", "gaussian"] = "auto"
    """Exploration noise: on the weights (dirichlet, gumbel) or on the concept embedding
    (gaussian). auto: gumbel when the request samples (temperature > 0: Stochastic Soft
    Thinking's Gumbel-Softmax, so samples differ and the emitted token is a sample of the
    soft distribution), none when it is greedy (temperature 0), in mode hidden or with multiplex."""
    alpha: float = 1.0
    """Dirichlet concentration scale: weights ~ Dirichlet(alpha * weights)."""
    tau: float = 1.0
    """Gumbel-Softmax temperature."""
    sigma: float = 0.5
    """Gaussian noise's standard deviation, in units of the embedding table's RMS entry
    sqrt(mean E_ij^2) (at 1 the noise vector has about a token embedding's norm)."""
    multiplex: int = 0
    """Multiplex Thinking: 0 off; m >= 1 feeds back the mixture of m tokens drawn from the
    soft distribution (an emitted sample is the first draw). Excludes ``noise``."""
    multiplex_replacement: bool = True
    """Multiplex draws with replacement (False: m distinct tokens, m <= top_k)."""
    multiplex_weights: Literal["probability", "uniform"] = "probability"
    """Mixture of the drawn tokens: each weighted by its probability, or all equally."""
    action: Literal["sampled", "token"] = "sampled"
    """What a step's rollout log-probability scores (the RL action): 'sampled', everything
    the step drew (the noise's density, the multiplex draws, a sampled token); 'token', the
    emitted token alone, log w_y on the kept support (noise then explores off the action)."""
    think_end: str | int | None = "auto"
    """Token (string or id) that ends thinking. auto: the model's thinking-span end, if its
    tokenizer has one as a single token (what ``--reasoning-parser`` ends reasoning with,
    else ``</think>``); null (or "null"): thinking ends only by cold stop or budget."""
    entropy_threshold: float = 0.01
    """Cold stop: entropy (nats) below this ..."""
    patience: int = 256
    """... for this many consecutive soft steps forces the think-end token."""
    max_soft_steps: int | None = None
    """Budget of soft steps; None: no budget beyond max_tokens. Mode 'hidden': the number
    of latent steps K (0: plain decoding), after which thinking ends (``think_end`` forced
    as one more step if set)."""
    latent_token: str | int | None = None
    """Mode 'hidden': the token a latent step emits (text only: its input is the hidden
    state); None: the step's argmax, a readable hint of the latent."""
    rescale_latent: bool = False
    """Mode 'hidden': rescale each fed-back hidden state to the embedding table's RMS row
    norm (on SmolLM2 a last hidden state is ~17x a token embedding's norm); False feeds it
    as is, as Coconut does."""
    think_end_id: int | None = field(default=None, repr=False)
    """``think_end`` resolved against the tokenizer (set by the engine front end)."""
    latent_token_id: int | None = field(default=None, repr=False)
    """``latent_token`` resolved against the tokenizer (set by the engine front end)."""

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, ("replace", "add", "gate", "hidden"))
        _check_choice("emit", self.emit, ("argmax", "sample"))
        _check_choice("noise", self.noise, NOISES)
        _check_choice("multiplex_weights", self.multiplex_weights, ("probability", "uniform"))
        _check_choice("action", self.action, ("sampled", "token"))
        _check_int("multiplex", self.multiplex, low=0)
        # OpenAI's vllm_xargs carries no booleans (they arrive as 0/1) and flags carry strings.
        object.__setattr__(self, "multiplex_replacement", _as_bool("multiplex_replacement", self.multiplex_replacement))
        object.__setattr__(self, "rescale_latent", _as_bool("rescale_latent", self.rescale_latent))
        _check_int("top_k", self.top_k, low=1)
        _check_int("patience", self.patience, low=1)
        if self.max_soft_steps is not None:
            _check_int("max_soft_steps", self.max_soft_steps, low=0 if self.mode == "hidden" else 1)
        if self.mode == "hidden":
            self._check_hidden()
        _check_float("top_p", self.top_p, "in (0, 1]", lambda v: 0.0 < v <= 1.0)
        _check_float("min_p", self.min_p, "in [0, 1)", lambda v: 0.0 <= v < 1.0)
        _check_float("temperature", self.temperature, "> 0", lambda v: v > 0.0)
        _check_float("alpha", self.alpha, "> 0", lambda v: v > 0.0)
        _check_float("tau", self.tau, "> 0", lambda v: v > 0.0)
        _check_float("sigma", self.sigma, "> 0", lambda v: v > 0.0)
        _check_float("scale", self.scale, "finite", lambda v: True)
        _check_float("entropy_threshold", self.entropy_threshold, ">= 0", lambda v: v >= 0.0)
        if self.multiplex and self.noise not in ("none", "auto"):
            raise SoftThinkingParamError(
                "multiplex", f"soft_thinking.multiplex ({self.multiplex}) and noise ({self.noise!r}) exclude each other: "
                "the draws are the exploration; set noise to none or multiplex to 0"
            )
        if self.mode == "gate" and self.noise == "gaussian":
            raise SoftThinkingParamError(
                "noise", "soft_thinking.noise 'gaussian' perturbs the concept embedding, which mode 'gate' does not feed "
                "back as is; use noise none, dirichlet or gumbel with mode gate"
            )
        if self.multiplex > self.top_k and not self.multiplex_replacement:
            raise SoftThinkingParamError(
                "multiplex", f"soft_thinking.multiplex must be <= top_k ({self.top_k}) without replacement (got {self.multiplex})"
            )
        for name in ("think_end", "latent_token"):
            value = getattr(self, name)
            if value == "null":  # flags and OpenAI's vllm_xargs cannot carry None
                object.__setattr__(self, name, value := None)
            if isinstance(value, bool) or not isinstance(value, (str, int, type(None))):
                raise SoftThinkingParamError(
                    name, f"soft_thinking.{name} must be a token string, a token id or null (got {value!r})"
                )

    def _check_hidden(self) -> None:
        """Mode 'hidden' has a fixed number of latent steps, each fed its hidden state: no
        draws, nothing sampled, no budget left open."""
        if self.max_soft_steps is None:
            raise SoftThinkingParamError(
                "max_soft_steps", "soft_thinking.mode 'hidden' needs max_soft_steps, the number of latent steps "
                "(an integer >= 0; 0 decodes plainly)"
            )
        for name, value, allowed in (("noise", self.noise if self.noise != "auto" else "none", "none"),
                                     ("emit", self.emit, "argmax"),
                                     ("multiplex", self.multiplex, 0)):
            if value != allowed:
                raise SoftThinkingParamError(
                    name, f"soft_thinking.{name} must be {allowed!r} with mode 'hidden' (got {value!r}): latent steps "
                    "feed back the hidden state and emit a placeholder, with nothing drawn"
                )

    def with_overrides(self, overrides: dict[str, Any]) -> "SoftThinkingParams":
        """A copy with ``overrides`` applied; unknown knobs are an error naming the valid ones."""
        unknown = sorted(set(overrides) - KNOBS - RESOLVED_FIELDS)
        if unknown:
            raise SoftThinkingParamError(
                unknown[0], f"unknown soft_thinking knob(s) {unknown}; valid knobs: {', '.join(sorted(KNOBS))}"
            )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RESOLVED_FIELDS = {"think_end_id", "latent_token_id"}
"""Fields the front end sets from the tokenizer; not knobs a request gives."""
KNOBS = {f.name for f in dataclasses.fields(SoftThinkingParams)} - RESOLVED_FIELDS


@functools.cache
def knob_docs() -> dict[str, str]:
    """Each knob's one-line docstring (the string under its field), for CLI help."""
    tree = ast.parse(inspect.getsource(SoftThinkingParams))
    body = tree.body[0].body
    docs = {}
    for field_node, doc_node in zip(body, body[1:]):
        if isinstance(field_node, ast.AnnAssign) and isinstance(doc_node, ast.Expr):
            docs[field_node.target.id] = str(doc_node.value.value).strip()
    return docs


class SoftThinkingParamError(ValueError):
    """A bad soft-thinking knob; ``parameter`` names it. A ValueError, which the OpenAI
    server answers with HTTP 400."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SoftThinkingParamError(name, f"soft_thinking.{name} must be one of {', '.join(allowed)} (got {value!r})")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1, "0", "1", "true", "false"):
        return value in (1, "1", "true")
    raise SoftThinkingParamError(name, f"soft_thinking.{name} must be true or false (got {value!r})")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SoftThinkingParamError(name, f"soft_thinking.{name} must be an integer >= {low} (got {value!r})")


def _check_float(name: str, value: Any, allowed: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise SoftThinkingParamError(name, f"soft_thinking.{name} must be {allowed} (got {value!r})")


def request_overrides(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """The soft-thinking knobs a request asked for, or None for a plain request.

    Accepts the nested form ``{"soft_thinking": {...}}`` (offline) and the flat form
    ``{"soft_thinking": 1, "soft_thinking_top_k": 5}`` (OpenAI ``vllm_xargs``).
    """
    if not extra_args:
        return None
    nested = extra_args.get(EXTRA_ARGS_KEY)
    flat = {k[len(FLAT_PREFIX) :]: v for k, v in extra_args.items() if k.startswith(FLAT_PREFIX)}
    if isinstance(nested, dict):
        return {**nested, **flat}
    if nested is None:
        return flat or None
    if nested in (True, 1, "1", "true"):
        return flat
    if nested in (False, 0, "0", "false"):
        return None
    raise SoftThinkingParamError(
        EXTRA_ARGS_KEY, f"extra_args['soft_thinking'] must be a dict of knobs or a flag 0/1 (got {nested!r})"
    )


def soft_thinking_on(additional_config: dict[str, Any] | None) -> bool:
    """Whether an engine's ``additional_config`` turns soft thinking on (cheap: no validation)."""
    return isinstance(additional_config, dict) and additional_config.get(EXTRA_ARGS_KEY) is not None


def soft_by_default(additional_config: dict[str, Any] | None) -> bool:
    """Whether requests that say nothing about soft thinking are soft on this engine: soft
    thinking on and ``additional_config["soft_thinking_requests"] == "all"`` (default ``"opt_in"``)."""
    if not soft_thinking_on(additional_config):
        return False
    policy = additional_config.get(REQUESTS_KEY, "opt_in")
    if policy not in REQUEST_POLICIES:
        raise SoftThinkingParamError(
            REQUESTS_KEY, f"additional_config['{REQUESTS_KEY}'] must be one of {', '.join(REQUEST_POLICIES)} (got {policy!r})"
        )
    return policy == "all"


def engine_defaults(additional_config: dict[str, Any] | None) -> SoftThinkingParams | None:
    """Engine-wide defaults from ``additional_config['soft_thinking']``; None when soft thinking is off."""
    if not soft_thinking_on(additional_config):
        return None
    config = additional_config[EXTRA_ARGS_KEY]
    if not isinstance(config, dict):
        raise SoftThinkingParamError(
            EXTRA_ARGS_KEY, f"additional_config['soft_thinking'] must be a dict of default knobs (got {config!r})"
        )
    return SoftThinkingParams().with_overrides(config)


def resolve_tokens(params: SoftThinkingParams, vocab_size: int, token_to_id,
                   model_think_end: str | None = None) -> SoftThinkingParams:
    """Resolve ``think_end`` and ``latent_token`` to token ids with ``token_to_id(str) ->
    int | None``; error naming the knob if one is not a single token of the vocabulary.
    ``think_end`` 'auto' becomes ``model_think_end``, the model's thinking-span end token
    (None: the model has none)."""
    if params.think_end == AUTO:
        params = dataclasses.replace(params, think_end=model_think_end)
    resolved = {}
    for name in ("think_end", "latent_token"):
        value = getattr(params, name)
        token_id = value if value is None or isinstance(value, int) else token_to_id(value)
        if value is not None and (token_id is None or not 0 <= token_id < vocab_size):
            raise SoftThinkingParamError(
                name,
                f"soft_thinking.{name} {value!r} is not a single token of the vocabulary (size {vocab_size}); "
                "give a token string that the tokenizer has as one token, a token id, or null",
            )
        resolved[f"{name}_id"] = token_id
    return dataclasses.replace(params, **resolved)


def resolve_randomness(params: SoftThinkingParams, temperature: float, num_samples: int) -> SoftThinkingParams:
    """What a soft request's steps draw, given the request's sampling ``temperature`` and
    ``num_samples`` (its ``n``). A request samples when its temperature is > 0, as in vLLM:
    noise 'auto' then becomes Gumbel-Softmax (Stochastic Soft Thinking), so its samples and
    its retries differ, seeded like the rest of the request; a greedy request's soft steps
    stay deterministic. Asking for n > 1 samples with steps that draw nothing (noise none,
    emit argmax, no multiplex) would return n copies of one soft span: an error naming
    ``noise``. Mode hidden (Coconut) draws nothing by design; its answer samples."""
    samples = temperature > 0
    if params.noise == AUTO:
        random = samples and params.mode != "hidden" and params.multiplex == 0
        params = dataclasses.replace(params, noise="gumbel" if random else "none")
    draws = params.noise != "none" or params.emit == "sample" or params.multiplex > 0
    if samples and num_samples > 1 and not draws and params.mode != "hidden":
        raise SoftThinkingParamError(
            "noise", f"n={num_samples} samples at temperature {temperature} would be {num_samples} copies of one soft "
            "span: soft_thinking.noise 'none' with emit 'argmax' draws nothing; leave noise at 'auto' (Gumbel-Softmax "
            "when the request samples), choose a noise, or set emit 'sample'"
        )
    return params

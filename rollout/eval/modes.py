"""The decoding modes an evaluation compares, each a sampling setup with overridable knobs.

    sampling        token sampling (temperature 0.6, top-p 0.95: the Soft Thinking paper's)
    greedy          token argmax
    soft            vanilla Soft Thinking (replace, argmax emission, cold stop)
    soft_dirichlet  Soft Thinking with Dirichlet noise on the mixture weights
    soft_gumbel     Soft Thinking with Gumbel-Softmax noise
    scm_add         Soft Concept Mixing (the mixture added to the token embedding)
    hrpo_gate       HRPO's gated input (the model folder's gate; latent at T 0.5 after top-k 50)
    coconut         Coconut's continuous thought: 6 latent steps feeding back the hidden state

``temperature`` and ``top_p`` sample the tokens after thinking ends (the noisy soft modes
sample them like token sampling; the others decode them greedily). Knobs are overridden
per mode with dotted keys: ``temperature``, ``top_p``, or
``soft_thinking.<knob>`` for any ``vllm_soft.params.SoftThinkingParams`` field.
"""

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalMode:
    """One column of the results table."""

    name: str
    label: str
    temperature: float
    top_p: float = 1.0
    soft_thinking: dict | None = field(default=None, hash=False)
    """Soft knobs (``{}``: the defaults), None for plain token decoding."""

    @property
    def deterministic(self) -> bool:
        """Greedy tokens, and noise-free soft thinking with argmax emission, give one answer
        per prompt however often they are sampled."""
        from vllm_soft.params import SoftThinkingParams

        if self.temperature > 0:
            return False
        if self.soft_thinking is None:
            return True
        knobs = SoftThinkingParams().with_overrides(self.soft_thinking)
        return knobs.noise in ("none", "auto") and knobs.emit == "argmax"  # auto: none at temperature 0

    def with_overrides(self, overrides: dict) -> "EvalMode":
        """A copy with ``{"temperature": 0.7, "soft_thinking.tau": 0.25, ...}`` applied."""
        from vllm_soft.params import SoftThinkingParams

        changes, soft = {}, dict(self.soft_thinking) if self.soft_thinking is not None else None
        for key, value in overrides.items():
            if key in ("temperature", "top_p"):
                changes[key] = float(value)
            elif key.startswith("soft_thinking."):
                if soft is None:
                    raise ValueError(f"{self.name}: {key} given, but {self.name} decodes plain tokens (no soft knobs)")
                soft[key.removeprefix("soft_thinking.")] = value
            else:
                raise ValueError(f"{self.name}: unknown knob {key!r}; use temperature, top_p or soft_thinking.<knob>")
        if soft is not None:
            SoftThinkingParams().with_overrides(soft)  # names a bad knob or value
        return dataclasses.replace(self, soft_thinking=soft, **changes)


MODES: dict[str, EvalMode] = {
    mode.name: mode
    for mode in (
        EvalMode("sampling", "Token sampling", temperature=0.6, top_p=0.95),
        EvalMode("greedy", "Greedy", temperature=0.0),
        EvalMode("soft", "Soft Thinking", temperature=0.0, soft_thinking={}),
        EvalMode("soft_dirichlet", "Soft + Dirichlet", temperature=0.6, top_p=0.95,
                 soft_thinking={"noise": "dirichlet", "alpha": 1.0}),
        EvalMode("soft_gumbel", "Soft + Gumbel", temperature=0.6, top_p=0.95,
                 soft_thinking={"noise": "gumbel", "tau": 0.5}),
        EvalMode("scm_add", "Soft Concept Mixing", temperature=0.0, soft_thinking={"mode": "add", "scale": 1.0}),
        EvalMode("hrpo_gate", "HRPO gate", temperature=0.0,
                 soft_thinking={"mode": "gate", "top_k": 50, "top_p": 1.0, "min_p": 0.0, "temperature": 0.5}),
        # Coconut's GSM8k setting: 3 stages of 2 thoughts.
        EvalMode("coconut", "Coconut", temperature=0.0, soft_thinking={"mode": "hidden", "max_soft_steps": 6}),
    )
}


def resolve_modes(names: list[str], overrides: dict[str, dict] | None = None) -> list[EvalMode]:
    """The named modes in order, each with its overrides (``{mode: {knob: value}}``)."""
    overrides = overrides or {}
    unknown = [n for n in [*names, *overrides] if n not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; valid modes: {list(MODES)}")
    unused = [n for n in overrides if n not in names]
    if unused:
        raise ValueError(f"knobs given for mode(s) {unused}, which are not evaluated (modes: {names})")
    return [MODES[name].with_overrides(overrides.get(name, {})) for name in names]

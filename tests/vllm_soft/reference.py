"""A readable reference of the soft step in plain PyTorch + transformers: the test oracle.

It re-implements the filtering one row at a time, the obvious way, independently of the
batched kernels in ``soft_math``, and replays a completion teacher-forced: the inputs are
rebuilt from the recorded trace (mixtures at soft positions, Coconut's latents at latent
positions, token embeddings elsewhere) and one forward pass gives the distribution, and
the final-normed last hidden state, at every soft step. Embeddings come from the model's
own input embedding (Gemma's is the table row times sqrt(H)) and logits from its own
forward (soft-capped or scaled where the family does that), so one oracle serves every
family.
"""

from dataclasses import dataclass

import torch

from vllm_soft import stateless_random
from vllm_soft.params import SoftThinkingParams


@dataclass
class ReferenceStep:
    """The noiseless soft step the reference computes at one position."""

    token_ids: list[int]
    weights: list[float]
    entropy: float


def reference_filter(logits_V: torch.Tensor, knobs: SoftThinkingParams) -> ReferenceStep:
    """Steps 1-5 of the soft step for one row, written for clarity."""
    probs = torch.softmax(logits_V.double() / knobs.temperature, dim=-1)
    entropy = float(-(probs[probs > 0] * probs[probs > 0].log()).sum())
    order = torch.argsort(probs, descending=True)[: knobs.top_k].tolist()
    kept, mass = [], 0.0
    for token in order:
        if knobs.top_p < 1.0 and mass >= knobs.top_p:
            break
        kept.append(token)
        mass += float(probs[token])
    p_max = float(probs[kept[0]])
    kept = [t for t in kept if float(probs[t]) >= knobs.min_p * p_max and float(probs[t]) > 0]
    total = sum(float(probs[t]) for t in kept)
    return ReferenceStep(kept, [float(probs[t]) / total for t in kept], entropy)


def hrpo_gated_input(token: torch.Tensor, token_ids: list[int], weights: list[float], embed,
                     gate: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """HRPO's hybrid input after one step, in float64, written out: the latent is the
    weighted embeddings over the weights' L2 norm; r and i gate the emitted token's
    embedding; a = exp(-8 softplus(-lambda) r); input = a e + sqrt(1 - a^2 + 1e-8) i latent.
    Returns (input as float32, mean of a)."""
    w = torch.tensor(weights, dtype=torch.float64)
    latent = (w.unsqueeze(-1) * embed(torch.tensor(token_ids)).double()).sum(0) / torch.sqrt((w * w).sum())
    e = token.double()
    r = 1.0 / (1.0 + torch.exp(-(gate["weight_r"].double() @ e + gate["bias_r"].double())))
    i = 1.0 / (1.0 + torch.exp(-(gate["weight_i"].double() @ e + gate["bias_i"].double())))
    a = torch.exp(-8.0 * torch.log1p(torch.exp(-gate["lambda"].double())) * r)
    return (a * e + torch.sqrt(1.0 - a * a + 1e-8) * i * latent).float(), float(a.mean())


def rebuild_inputs_embeds(
    embed, prompt_ids: list[int], completion_ids: list[int], trace: list[dict], knobs: SoftThinkingParams,
    gate: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Inputs of the whole sequence but its last token, float32, with every soft step that
    thinking continued after fed back as its mixture (replace), added to E[y] (add) or
    through HRPO's gate (``gate``: its tensors by file name); a step with Gaussian noise
    adds it to the mixture (its standard normals regenerated from the recorded seed: the
    generator is the engine's, the rest is this file's). ``embed``: the model's input
    embedding (ids -> vectors)."""
    ids = torch.tensor(prompt_ids + completion_ids[:-1])
    inputs = embed(ids).float().clone()
    for entry in trace:
        position = len(prompt_ids) + entry["position"]
        if position >= len(inputs):
            continue
        if entry.get("latent") is not None:  # mode 'hidden': the recorded vector, even on the last latent step
            inputs[position] = torch.tensor(entry["latent"], dtype=torch.float64).float()
            continue
        if entry["end_reason"] is not None:
            continue
        if knobs.mode == "gate":
            inputs[position], mean_a = hrpo_gated_input(inputs[position], entry["token_ids"], entry["weights"], embed, gate)
            assert abs(mean_a - entry["gate_retention"]) <= 1e-5 * mean_a, (entry["position"], mean_a, entry["gate_retention"])
            continue
        concept = (torch.tensor(entry["weights"]).unsqueeze(-1) * embed(torch.tensor(entry["token_ids"])).float()).sum(0)
        if entry.get("noise_scale"):
            seed = torch.tensor([stateless_random.as_int64(entry["seed"])])
            normals = stateless_random.normals(seed, torch.tensor([entry["position"]]), concept.shape[0])[0]
            concept = concept + (entry["noise_scale"] * normals).float()
        inputs[position] = concept if knobs.mode == "replace" else inputs[position] + knobs.scale * concept
    return inputs


@torch.no_grad()
def teacher_forced_logits(model, prompt_ids: list[int], completion_ids: list[int], trace: list[dict], knobs,
                          gate=None) -> torch.Tensor:
    """Logits predicting each completion token, [len(completion), V], from one forward pass."""
    return teacher_forced_states(model, prompt_ids, completion_ids, trace, knobs, gate)[0]


@torch.no_grad()
def teacher_forced_states(model, prompt_ids: list[int], completion_ids: list[int], trace: list[dict], knobs,
                          gate=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, final-normed last hidden states) at the positions predicting each
    completion token, [len(completion), V] and [len(completion), H], from one forward pass:
    hidden state i is what Coconut feeds back as the input of completion position i."""
    embed = model.get_input_embeddings()
    inputs = rebuild_inputs_embeds(embed, prompt_ids, completion_ids, trace, knobs, gate).unsqueeze(0)
    inputs = inputs.to(embed.weight.dtype)
    hidden = model.model(inputs_embeds=inputs).last_hidden_state[0]  # final-normed
    logits = model(inputs_embeds=inputs).logits[0].float()  # the family's own logits (capped, scaled)
    return logits[len(prompt_ids) - 1 :], hidden.float()[len(prompt_ids) - 1 :]


def coconut_latent(hidden_H: torch.Tensor, knobs: SoftThinkingParams, embed) -> torch.Tensor:
    """Coconut's fed-back vector from a final-normed hidden state, float64: as is, or
    rescaled to the RMS row norm sqrt(mean_i ||e_i||^2) of the model's input embeddings."""
    hidden = hidden_H.double()
    if not knobs.rescale_latent:
        return hidden
    rows = embed(torch.arange(embed.weight.shape[0])).detach().double()
    return hidden * (rows.pow(2).sum(-1).mean().sqrt() / hidden.norm())


def replay_trace(model, prompt_ids: list[int], completion_ids: list[int], trace: list[dict], knobs,
                 gate=None) -> list[ReferenceStep]:
    """The reference soft step at every traced position, teacher-forced (``gate``: the
    HRPO gate's tensors, for mode 'gate'). In mode 'hidden' it also checks that every
    recorded latent is the hidden state the reference computes there (within
    ``LATENT_TOLERANCE``, relative)."""
    logits, hidden = teacher_forced_states(model, prompt_ids, completion_ids, trace, knobs, gate)
    embed = model.get_input_embeddings()
    for entry in trace:
        if entry.get("latent") is not None:
            expected = coconut_latent(hidden[entry["position"]], knobs, embed)
            error = float((torch.tensor(entry["latent"], dtype=torch.float64) - expected).norm() / expected.norm())
            assert error <= LATENT_TOLERANCE, (entry["position"], error)
    return [reference_filter(logits[entry["position"]], knobs) for entry in trace]


LATENT_TOLERANCE = 1e-5
"""Largest relative L2 error of a recorded latent against the reference's hidden state."""


def predicted_end_step(entropies: list[float], emitted: list[int], knobs: SoftThinkingParams) -> tuple[int, str] | None:
    """(index of the soft step at which thinking ends, reason), or None if it does not."""
    streak = 0
    for step, (entropy, token) in enumerate(zip(entropies, emitted)):
        streak = streak + 1 if entropy < knobs.entropy_threshold else 0
        if knobs.think_end_id is not None and token == knobs.think_end_id:
            return step, "think_end"
        if streak >= knobs.patience:
            return step, "cold_stop"
        if knobs.max_soft_steps is not None and step + 1 >= knobs.max_soft_steps:
            return step, "budget"
    return None

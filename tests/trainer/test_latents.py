"""Coconut's latents in the learner (``vllm_soft.replay.coconut_latents``: one pass over the
right-padded prompts, then one cached position per latent) against the loop that defines
them: pass k runs [prompt | latents 0..k-1] alone, without a cache, and latent k is its last
position's final-normed hidden state. Float64 on the tiny model, through the policy's own
attention (``ReplayPolicy`` switches the model to block attention). Hugging Face's RMSNorm
computes in float32 whatever the model's dtype, so the two agree to float32 rounding: the
cached graph sums the same terms in another order (measured: 2e-7 relative at most)."""

import pytest
import torch

from trainer.policy import ReplayPolicy, latent_decoder
from vllm_soft.replay import coconut_latents

TOLERANCE = 1e-5
"""Relative L2 error allowed (float32 rounding inside Hugging Face's norms)."""

PROMPTS = [[5, 9, 2], [7, 1, 8, 3, 3, 12, 4], [6, 6, 10, 2, 11]]
"""Three lengths, so that two prompts are padded in the cached pass."""


@pytest.fixture(scope="module")
def policy(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return ReplayPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64))


def _uncached(model, prompts, latent_steps: int, rescale: bool) -> torch.Tensor:
    embed = model.get_input_embeddings()
    norm = embed.weight.pow(2).sum(-1).mean().sqrt().detach()
    per_prompt = []
    for ids in prompts:
        sequence, latents = embed(torch.tensor(ids)), []
        for _ in range(latent_steps):
            hidden = model.get_decoder()(inputs_embeds=sequence[None]).last_hidden_state[0, -1]
            latent = hidden * (norm / hidden.norm()) if rescale else hidden
            latents.append(latent)
            sequence = torch.cat((sequence, latent[None]))
        per_prompt.append(torch.stack(latents))
    return torch.stack(per_prompt)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("rescale", [False, True], ids=["as is", "rescaled"])
def test_cached_latents_are_the_uncached_loops(policy, rescale):
    model = policy.model
    with torch.no_grad():
        cached = coconut_latents(latent_decoder(model), model.get_input_embeddings(), PROMPTS, 4, rescale)
        expected = _uncached(model, PROMPTS, 4, rescale)
    assert cached.shape == (3, 4, model.config.hidden_size)
    assert _relative_error(cached, expected) <= TOLERANCE
    none = coconut_latents(latent_decoder(model), model.get_input_embeddings(), PROMPTS, 0, rescale)
    assert none.shape[:2] == (3, 0)


def test_gradients_flow_through_the_cache_as_through_the_loop(policy):
    """The whole latent chain trains: the gradient of the last latent reaches the embedding
    table and the first layer exactly as through the uncached passes."""
    model = policy.model
    embedding = model.get_input_embeddings().weight
    first_layer = next(model.get_decoder().layers[0].parameters())
    direction = torch.randn(3, model.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def gradients(latents):
        model.zero_grad()
        (latents[:, -1] * direction).sum().backward()
        return embedding.grad.clone(), first_layer.grad.clone()

    cached = gradients(coconut_latents(latent_decoder(model), model.get_input_embeddings(), PROMPTS, 3, True))
    expected = gradients(_uncached(model, PROMPTS, 3, True))
    assert cached[0].abs().sum() > 0 and cached[1].abs().sum() > 0
    for got, want in zip(cached, expected):
        assert _relative_error(got, want) <= TOLERANCE

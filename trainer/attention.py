"""Block attention over packed rows: each response attends to its prompt and itself only.

A packed row ``[prompt | response_1 | ... | response_G]`` (``trainer.packing``) under a
dense 4D mask spends most of its attention on blocks the mask throws away (responses never
see each other). Here every query block gathers just the keys it may see:

    prompt block   : the row's prompt tokens        -> the prompt (causal)
    response block : one response's tokens          -> its prompt + itself (causal)

so attention costs G * R * (P + R) + P^2 per group instead of (P + G * R)^2. The blocks
ride into the model as a keyword argument of the decoder's forward, which Hugging Face
passes down to the attention function (``AttentionInterface``). Without it, the function is
plain SDPA with the usual masks, so a model switched to it still runs ordinary forwards.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BLOCK_ATTENTION = "vllm_soft_block"


@dataclass
class AttentionBlocks:
    """Query blocks of a packed batch, as flat indices into its (rows * columns) tokens."""

    query_index: torch.Tensor
    """(N, Q): the block's query tokens, padded with 0."""
    key_index: torch.Tensor
    """(N, K): the tokens they may see, padded with 0."""
    mask: torch.Tensor
    """(N, 1, Q, K) bool: which key each query sees (a padded query sees every key)."""
    query_valid: torch.Tensor
    """(N, Q) bool: real query slots."""

    def to(self, device) -> "AttentionBlocks":
        return AttentionBlocks(*(t.to(device) for t in (self.query_index, self.key_index, self.mask, self.query_valid)))


def block_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                    attention_blocks: AttentionBlocks | None = None, **kwargs):
    """Hugging Face attention function: (B, H, T, D) inputs -> (B, T, H, D) output."""
    if attention_blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, length, dim = query.shape
    blocks = attention_blocks

    def gather(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (B, h, T, D) -> (N, h, I, D)
        flat = states.transpose(1, 2).reshape(batch * length, states.shape[1], dim)
        return flat[index].transpose(1, 2)

    queries = gather(query, blocks.query_index)
    keys, values = gather(key, blocks.key_index), gather(value, blocks.key_index)
    if query.device.type == "cpu":  # CPU SDPA: float32 forward + backward is ~1.8x faster than bf16
        queries, keys, values = queries.float(), keys.float(), values.float()
    outputs = F.scaled_dot_product_attention(queries, keys, values, attn_mask=blocks.mask, scale=scaling,
                                             dropout_p=dropout, enable_gqa=keys.shape[1] != heads)
    real = outputs.transpose(1, 2)[blocks.query_valid].to(query.dtype)  # (M, H, D)
    flat = query.new_zeros(batch * length, heads, dim).index_put((blocks.query_index[blocks.query_valid],), real)
    return flat.view(batch, length, heads, dim), None


AttentionInterface.register(BLOCK_ATTENTION, block_attention)
AttentionMaskInterface.register(BLOCK_ATTENTION, sdpa_mask)

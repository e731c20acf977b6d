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
Layers with a sliding window (Mistral, Gemma) see only keys less than a window back, by
position id; Gemma 2's attention logit soft-capping is applied where the layer asks.
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
    query_positions: torch.Tensor
    """(N, Q): each query's position id (sliding-window layers see keys less than a window back)."""
    key_positions: torch.Tensor
    """(N, K): each key's position id."""

    def to(self, device) -> "AttentionBlocks":
        return AttentionBlocks(*(t.to(device) for t in (self.query_index, self.key_index, self.mask, self.query_valid,
                                                        self.query_positions, self.key_positions)))

    def visible(self, sliding_window: int | None) -> torch.Tensor:
        """The mask of a layer: with a sliding window, a query at position q sees keys at
        positions > q - window only (Hugging Face's and vLLM's convention); padded queries
        keep every key, so no softmax row is empty."""
        if sliding_window is None:
            return self.mask
        near = (self.query_positions[:, :, None] - self.key_positions[:, None, :]) < sliding_window
        return self.mask & (near | ~self.query_valid[:, :, None]).unsqueeze(1)


def attend(query, key, value, mask: torch.Tensor | None, scale: float | None, softcap: float | None = None,
           dropout: float = 0.0) -> torch.Tensor:
    """Attention of (N, h, Q, D) queries over (N, h_kv, K, D) keys under a bool ``mask``
    (True: seen; None: causal, the queries being the last Q positions). With ``softcap``
    (Gemma 2's attention logit soft-capping, cap * tanh(s / cap)), which SDPA does not
    have, the scores are computed explicitly."""
    if softcap is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, dropout_p=dropout,
                                              is_causal=mask is None, enable_gqa=key.shape[1] != query.shape[1])
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = (query @ key.transpose(-1, -2)) * (scale if scale is not None else query.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        queries, keys = scores.shape[-2:]
        mask = torch.ones(queries, keys, dtype=torch.bool, device=scores.device).tril(keys - queries)
    # A query that sees no key (left padding) gets finite weights: its output is never read,
    # but a NaN there would reach real rows through 0 * NaN in the next layer.
    scores = scores.float().masked_fill(~mask, float("-inf")).masked_fill(~mask.any(-1, keepdim=True), 0.0)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    return F.dropout(weights, dropout) @ value


def block_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                    attention_blocks: AttentionBlocks | None = None, sliding_window: int | None = None,
                    softcap: float | None = None, **kwargs):
    """Hugging Face attention function: (B, H, T, D) inputs -> (B, T, H, D) output.
    ``sliding_window`` and ``softcap`` come from the layer (Mistral, Gemma 2 and 3)."""
    if attention_blocks is None:
        if softcap is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, sliding_window=sliding_window, **kwargs)
        mask = attention_mask if attention_mask is None or attention_mask.dtype == torch.bool else attention_mask == 0
        return attend(query, key, value, mask, scaling, softcap, dropout).transpose(1, 2).contiguous(), None
    batch, heads, length, dim = query.shape
    blocks = attention_blocks

    def gather(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (B, h, T, D) -> (N, h, I, D)
        flat = states.transpose(1, 2).reshape(batch * length, states.shape[1], dim)
        return flat[index].transpose(1, 2)

    queries = gather(query, blocks.query_index)
    keys, values = gather(key, blocks.key_index), gather(value, blocks.key_index)
    if query.device.type == "cpu":  # CPU SDPA: float32 forward + backward is ~1.8x faster than bf16
        queries, keys, values = queries.float(), keys.float(), values.float()
    outputs = attend(queries, keys, values, blocks.visible(sliding_window), scaling, softcap, dropout)
    real = outputs.transpose(1, 2)[blocks.query_valid].to(query.dtype)  # (M, H, D)
    flat = query.new_zeros(batch * length, heads, dim).index_put((blocks.query_index[blocks.query_valid],), real)
    return flat.view(batch, length, heads, dim), None


AttentionInterface.register(BLOCK_ATTENTION, block_attention)
AttentionMaskInterface.register(BLOCK_ATTENTION, sdpa_mask)

"""Shared-prompt packing: the samples of one prompt share a row, and the prompt is computed once.

A GRPO batch holds G responses per prompt. Padded one per row, the learner would run the
prompt G times. Packed, a row is

    [prompt | response_1[:-1] | response_2[:-1] | ... | padding]

where a response token sees the prompt and its own earlier tokens, never another response
(``trainer.attention``: block attention that computes only what is seen). Its position ids
continue the prompt's, as in generation. So every response's log-probs are those of its own
unpacked forward, at P + sum(R_i) tokens per group instead of G * (P + R).
"""

from dataclasses import dataclass

import torch

from trainer.attention import AttentionBlocks


@dataclass
class PackedBatch:
    """Where each sequence of a batch sits once sequences sharing a prompt share a row."""

    input_ids_BT: torch.Tensor
    position_ids_BT: torch.Tensor
    rows: list[int]
    """Row of each sequence."""
    prompt_ends: list[int]
    """Column of each sequence's last prompt token (it predicts response[0])."""
    response_starts: list[int]
    """Column of each sequence's response[0] as an input (it predicts response[1])."""
    response_inputs: list[int]
    """How many of each sequence's response tokens are inputs (all but the last)."""

    def attention_blocks(self) -> AttentionBlocks:
        """Per row a prompt block (causal), per sequence a response block that sees its prompt
        and, causally, itself: the mask of a packed row without its never-seen blocks."""
        width = self.input_ids_BT.shape[1]
        prompt_lengths = {row: end + 1 for row, end in zip(self.rows, self.prompt_ends)}
        queries, keys, masks = [], [], []
        for row, length in prompt_lengths.items():
            columns = torch.arange(length) + row * width
            queries.append(columns)
            keys.append(columns)
            masks.append(torch.ones(length, length, dtype=torch.bool).tril())
        for row, start, count in zip(self.rows, self.response_starts, self.response_inputs):
            if count:
                own = torch.arange(start, start + count) + row * width
                queries.append(own)
                keys.append(torch.cat([torch.arange(prompt_lengths[row]) + row * width, own]))
                masks.append(torch.cat([torch.ones(count, prompt_lengths[row], dtype=torch.bool),
                                        torch.ones(count, count, dtype=torch.bool).tril()], dim=1))
        num_queries, num_keys = max(len(q) for q in queries), max(len(k) for k in keys)
        query_index = torch.zeros(len(queries), num_queries, dtype=torch.long)
        key_index = torch.zeros(len(queries), num_keys, dtype=torch.long)
        mask = torch.ones(len(queries), num_queries, num_keys, dtype=torch.bool)  # padded queries see all
        query_valid = torch.zeros(len(queries), num_queries, dtype=torch.bool)
        for block, (query, key, visible) in enumerate(zip(queries, keys, masks)):
            query_index[block, : len(query)] = query
            key_index[block, : len(key)] = key
            mask[block, : len(query)] = False
            mask[block, : len(query), : len(key)] = visible
            query_valid[block, : len(query)] = True
        positions = self.position_ids_BT.reshape(-1)
        return AttentionBlocks(query_index, key_index, mask.unsqueeze(1), query_valid, positions[query_index],
                               positions[key_index])

    def predicting_columns(self, sequence: int) -> list[int]:
        """Columns whose hidden states predict the sequence's response tokens, in order."""
        start = self.response_starts[sequence]
        return [self.prompt_ends[sequence], *range(start, start + self.response_inputs[sequence])]


def pack_by_prompt(prompt_ids: list[list[int]], response_ids: list[list[int]], share: bool = True) -> PackedBatch:
    """One row per distinct prompt (in order of first appearance), right-padded; with
    ``share=False``, one row per sequence (plain padding)."""
    row_of_prompt: dict[object, int] = {}
    row_tokens: list[list[int]] = []
    row_positions: list[list[int]] = []
    rows, prompt_ends, response_starts, response_inputs = [], [], [], []
    for index, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        key = tuple(prompt) if share else index
        if key not in row_of_prompt:
            row_of_prompt[key] = len(row_tokens)
            row_tokens.append(list(prompt))
            row_positions.append(list(range(len(prompt))))
        row = row_of_prompt[key]
        rows.append(row)
        prompt_ends.append(len(prompt) - 1)
        response_starts.append(len(row_tokens[row]))
        response_inputs.append(len(response) - 1)
        row_tokens[row] += response[:-1]
        row_positions[row] += range(len(prompt), len(prompt) + len(response) - 1)
    longest = max(len(tokens) for tokens in row_tokens)

    def padded(values: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([v + [fill] * (longest - len(v)) for v in values], dtype=torch.long)

    return PackedBatch(
        input_ids_BT=padded(row_tokens, 0), position_ids_BT=padded(row_positions, 0),
        rows=rows, prompt_ends=prompt_ends, response_starts=response_starts,
        response_inputs=response_inputs,
    )

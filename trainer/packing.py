"""Shared-prompt packing: the samples of one prompt share a row, and the prompt is computed once.

A GRPO batch holds G responses per prompt. Padded one per row, the learner would run the
prompt G times. Packed, a row is

    [prompt | response_1[:-1] | response_2[:-1] | ... | padding]

with a 4D attention mask: a response token sees the prompt and its own earlier tokens, never
another response. Its position ids continue the prompt's, as in generation. So every
response's log-probs are those of its own unpacked forward, at P + sum(R_i) tokens per group
instead of G * (P + R).
"""

from dataclasses import dataclass

import torch

PROMPT, PADDING = 0, -1


@dataclass
class PackedBatch:
    """Where each sequence of a batch sits once sequences sharing a prompt share a row."""

    input_ids_BT: torch.Tensor
    position_ids_BT: torch.Tensor
    segments_BT: torch.Tensor
    """PROMPT, PADDING, or k >= 1 for the k-th response packed in that row."""
    rows: list[int]
    """Row of each sequence."""
    prompt_ends: list[int]
    """Column of each sequence's last prompt token (it predicts response[0])."""
    response_starts: list[int]
    """Column of each sequence's response[0] as an input (it predicts response[1])."""

    def attention_mask(self) -> torch.Tensor:
        """(B, 1, T, T) bool: causal, within the prompt or one's own response; padding sees itself."""
        query, key = self.segments_BT[:, :, None], self.segments_BT[:, None, :]
        columns = torch.arange(self.segments_BT.shape[1], device=self.segments_BT.device)
        causal = columns[None, :, None] >= columns[None, None, :]
        visible = causal & (query != PADDING) & (key != PADDING) & ((key == PROMPT) | (key == query))
        return (visible | torch.eye(len(columns), dtype=torch.bool, device=columns.device)).unsqueeze(1)

    def predicting_columns(self, sequence: int, response_length: int) -> list[int]:
        """Columns whose hidden states predict the sequence's response tokens, in order."""
        start = self.response_starts[sequence]
        return [self.prompt_ends[sequence], *range(start, start + response_length - 1)]


def pack_by_prompt(prompt_ids: list[list[int]], response_ids: list[list[int]], share: bool = True) -> PackedBatch:
    """One row per distinct prompt (in order of first appearance), right-padded; with
    ``share=False``, one row per sequence (plain padding)."""
    row_of_prompt: dict[object, int] = {}
    row_tokens: list[list[int]] = []
    row_positions: list[list[int]] = []
    row_segments: list[list[int]] = []
    rows, prompt_ends, response_starts = [], [], []
    for index, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        key = tuple(prompt) if share else index
        if key not in row_of_prompt:
            row_of_prompt[key] = len(row_tokens)
            row_tokens.append(list(prompt))
            row_positions.append(list(range(len(prompt))))
            row_segments.append([PROMPT] * len(prompt))
        row = row_of_prompt[key]
        segment = max(row_segments[row]) + 1
        rows.append(row)
        prompt_ends.append(len(prompt) - 1)
        response_starts.append(len(row_tokens[row]))
        row_tokens[row] += response[:-1]
        row_positions[row] += range(len(prompt), len(prompt) + len(response) - 1)
        row_segments[row] += [segment] * (len(response) - 1)
    longest = max(len(tokens) for tokens in row_tokens)

    def padded(values: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([v + [fill] * (longest - len(v)) for v in values], dtype=torch.long)

    return PackedBatch(
        input_ids_BT=padded(row_tokens, 0), position_ids_BT=padded(row_positions, 0),
        segments_BT=padded(row_segments, PADDING), rows=rows, prompt_ends=prompt_ends, response_starts=response_starts,
    )

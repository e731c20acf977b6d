"""API-server patch: each OpenAI choice of a soft request carries its trace, streamed or not.

Why: vLLM's response builders copy only known fields from a ``CompletionOutput`` into
the JSON choice. What: wraps ``OpenAIServingCompletion.request_output_to_completion_response``
and ``OpenAIServingChat.chat_completion_full_generator`` (non-streaming responses) and
adds ``choices[i].soft_thinking`` (see ``vllm_soft.trace.api_field``) to the choices of
soft requests. For streams, wraps ``completion_stream_generator`` and
``chat_completion_stream_generator``: the steps of the outputs the generator reads go
into the next server-sent chunk of the same choice that carries tokens (as
``{"steps": [...]}``), and the chunk that finishes a choice also carries its summary
(``num_soft_steps``, ``end_reason``, ``cold_stop``) and the resolved knobs. When it can go: once vLLM responses
have a generic per-choice extras field.
"""

import functools
import json
from collections import defaultdict

from vllm_soft.trace import COMPLETION_ATTRIBUTE, KNOBS_ATTRIBUTE, api_field, summarize


def _attach(choice, completion_output) -> None:
    trace = getattr(completion_output, COMPLETION_ATTRIBUTE, None)
    if trace is not None:
        setattr(choice, COMPLETION_ATTRIBUTE, api_field(trace, getattr(completion_output, KNOBS_ATTRIBUTE, None)))


class StreamTrace:
    """The soft steps of one streamed response, by choice index: read from the outputs the
    stream generator consumes (``watch``), written into the chunks it yields (``annotate``)."""

    def __init__(self, choices_per_prompt: int):
        self.choices_per_prompt = choices_per_prompt
        self.pending: dict[int, list] = defaultdict(list)
        """Steps read but not yet sent, by choice index."""
        self.sent: dict[int, list] = defaultdict(list)
        self.knobs: dict[int, dict | None] = {}
        """Resolved knobs, by choice index (sent with the summary)."""

    async def watch(self, results, prompt_indexed: bool):
        """``results`` unchanged, noting each output's new steps (items are (prompt index,
        output) pairs for completions, outputs for chat)."""
        async for item in results:
            prompt_index, result = item if prompt_indexed else (0, item)
            for output in result.outputs:
                steps = getattr(output, COMPLETION_ATTRIBUTE, None)
                index = output.index + prompt_index * self.choices_per_prompt
                if steps:
                    self.pending[index] += steps
                if getattr(output, KNOBS_ATTRIBUTE, None) is not None:
                    self.knobs[index] = getattr(output, KNOBS_ATTRIBUTE)
            yield item

    async def annotate(self, chunks):
        async for chunk in chunks:
            yield self._with_steps(chunk) if (self.pending or self.sent) else chunk

    def _with_steps(self, event: str) -> str:
        if not event.startswith("data: {"):
            return event  # [DONE], or an error vLLM already wrote
        chunk = json.loads(event[len("data: "):])
        changed = False
        for choice in chunk.get("choices") or []:
            index, delta = choice.get("index"), choice.get("delta") or {}
            finished = choice.get("finish_reason") is not None
            if delta.get("role") and not delta.get("content") and not finished:
                continue  # chat's opening chunk: no tokens yet
            steps = self.pending.pop(index, [])
            if not steps and not (finished and index in self.sent):
                continue
            self.sent[index] += steps
            field = {"steps": steps}
            if finished:
                field = {**summarize(self.sent[index]), "knobs": self.knobs.get(index), **field}
            choice[COMPLETION_ATTRIBUTE] = field
            changed = True
        return f"data: {json.dumps(chunk)}\n\n" if changed else event


def apply() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    to_completion_response = OpenAIServingCompletion.request_output_to_completion_response
    chat_full_generator = OpenAIServingChat.chat_completion_full_generator
    completion_stream = OpenAIServingCompletion.completion_stream_generator
    chat_stream = OpenAIServingChat.chat_completion_stream_generator

    @functools.wraps(to_completion_response)
    def request_output_to_completion_response(self, final_res_batch, *args, **kwargs):
        response = to_completion_response(self, final_res_batch, *args, **kwargs)
        outputs = [output for final_res in final_res_batch for output in final_res.outputs]
        for choice, output in zip(response.choices, outputs):  # built in this order
            _attach(choice, output)
        return response

    @functools.wraps(chat_full_generator)
    async def chat_completion_full_generator(self, request, result_generator, *args, **kwargs):
        last = []

        async def remember_last():
            async for result in result_generator:
                last[:] = [result]
                yield result

        response = await chat_full_generator(self, request, remember_last(), *args, **kwargs)
        if isinstance(response, ChatCompletionResponse) and last:
            by_index = {output.index: output for output in last[0].outputs}
            for choice in response.choices:
                if choice.index in by_index:
                    _attach(choice, by_index[choice.index])
        return response

    @functools.wraps(completion_stream)
    def completion_stream_generator(self, request, engine_inputs, result_generator, *args, **kwargs):
        steps = StreamTrace(request.n or 1)
        inner = completion_stream(self, request, engine_inputs, steps.watch(result_generator, True), *args, **kwargs)
        return steps.annotate(inner)

    @functools.wraps(chat_stream)
    def chat_completion_stream_generator(self, request, result_generator, *args, **kwargs):
        steps = StreamTrace(request.n or 1)
        return steps.annotate(chat_stream(self, request, steps.watch(result_generator, False), *args, **kwargs))

    OpenAIServingCompletion.request_output_to_completion_response = request_output_to_completion_response
    OpenAIServingChat.chat_completion_full_generator = chat_completion_full_generator
    OpenAIServingCompletion.completion_stream_generator = completion_stream_generator
    OpenAIServingChat.chat_completion_stream_generator = chat_completion_stream_generator

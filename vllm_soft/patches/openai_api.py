"""API-server patch: each OpenAI choice of a soft request carries its trace.

Why: vLLM's response builders copy only known fields from a ``CompletionOutput`` into
the JSON choice. What: wraps ``OpenAIServingCompletion.request_output_to_completion_response``
and ``OpenAIServingChat.chat_completion_full_generator`` (non-streaming responses) and
adds ``choices[i].soft_thinking`` (see ``vllm_soft.trace.api_field``) to the choices of
soft requests. When it can go: once vLLM responses have a generic per-choice extras field.
"""

import functools

from vllm_soft.trace import COMPLETION_ATTRIBUTE, api_field


def _attach(choice, completion_output) -> None:
    trace = getattr(completion_output, COMPLETION_ATTRIBUTE, None)
    if trace is not None:
        setattr(choice, COMPLETION_ATTRIBUTE, api_field(trace))


def apply() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    to_completion_response = OpenAIServingCompletion.request_output_to_completion_response
    chat_full_generator = OpenAIServingChat.chat_completion_full_generator

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

    OpenAIServingCompletion.request_output_to_completion_response = request_output_to_completion_response
    OpenAIServingChat.chat_completion_full_generator = chat_completion_full_generator

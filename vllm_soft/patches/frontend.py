"""Front-end patches (the process that owns ``LLM`` or the API server).

Request validation. Why: bad knobs must fail at the door (ValueError offline, HTTP 400
over the API), the worker needs the think-end token as an id, and on a server started
with ``--soft-thinking`` a request that says nothing is soft. What: wraps
``InputProcessor.process_inputs``, the one place the front end parses knobs: soft by
default where the engine says so (``params.soft_by_default``), engine defaults merged in,
types and ranges checked, think-end and latent tokens resolved with the tokenizer (think_end
'auto': the model's thinking-span end, found once per engine), noise 'auto' resolved by the
request's temperature, top-k checked against the vocabulary; the request's own copy of its params then carries
the complete knob set, which every later process reads. When it can go: if vLLM adds a
validation hook for ``extra_args``.

Completion trace. Why: ``soft_trace(completion)`` and ``soft_knobs(completion)`` need
the trace and the resolved knobs on each completion (per choice when n > 1), but they
arrive per engine request in ``kv_transfer_params`` (a streamed request's in pieces, step
by step). What: wraps ``RequestState.make_request_output`` to take them out of
``kv_transfer_params`` and add them to the request's trace, and
``RequestState._new_completion_output`` to attach them: the whole trace, or in DELTA
mode (streaming) the steps not attached before.
"""

import functools

from vllm_soft.params import (
    EXTRA_ARGS_KEY,
    FLAT_PREFIX,
    SoftThinkingParamError,
    engine_defaults,
    request_overrides,
    resolve_randomness,
    resolve_tokens,
    soft_by_default,
)
from vllm_soft.log import logger
from vllm_soft.records import unpack_trace
from vllm_soft.trace import COMPLETION_ATTRIBUTE, KNOBS_ATTRIBUTE


def _request_error(error: SoftThinkingParamError) -> Exception:
    """The same error as vLLM's validation error too: AsyncLLM passes client errors through
    (HTTP 400) but reports any other exception from request admission as a 500."""
    from vllm.exceptions import VLLMValidationError

    class SoftThinkingRequestError(VLLMValidationError, SoftThinkingParamError):
        def __init__(self, message: str, parameter: str):
            Exception.__init__(self, message)
            self.parameter, self.value = parameter, None

    return SoftThinkingRequestError(str(error), error.parameter)


def _token_to_id(tokenizer):
    def lookup(token: str) -> int | None:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and (token_id != tokenizer.unk_token_id or token == tokenizer.unk_token):
            return token_id
        ids = tokenizer.encode(token, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    return lookup


THINK_END_CANDIDATES = ("</think>",)
"""Thinking-span end tokens of reasoning models without a configured reasoning parser
(DeepSeek-R1 and its distills, QwQ, Qwen3: ``<think>``...``</think>``)."""


def model_think_end(tokenizer, reasoning_parser: str | None) -> str | None:
    """The model's thinking-span end token, as a string: what vLLM's reasoning parser
    ``reasoning_parser`` ends reasoning with, else the first of ``THINK_END_CANDIDATES``,
    provided the tokenizer has it as one token; None for a model that does not think."""
    candidates = list(THINK_END_CANDIDATES)
    if reasoning_parser:
        from vllm.reasoning import ReasoningParserManager

        parser = ReasoningParserManager.get_reasoning_parser(reasoning_parser)(tokenizer)
        end = getattr(parser, "reasoning_end_str", None) or getattr(parser, "end_token", None)
        if end:
            candidates.insert(0, end)
    lookup = _token_to_id(tokenizer)
    return next((token for token in candidates if lookup(token) is not None), None)


def _engine_think_end(processor) -> str | None:
    """``model_think_end`` of the engine ``processor`` belongs to, found once and logged once."""
    if not hasattr(processor, "vllm_soft_think_end"):
        config = processor.vllm_config
        parser = getattr(getattr(config, "structured_outputs_config", None), "reasoning_parser", None) or getattr(
            getattr(config, "reasoning_config", None), "reasoning_parser", None)
        processor.vllm_soft_think_end = model_think_end(processor.tokenizer, parser)
        if processor.vllm_soft_think_end is not None:
            logger.info(
                "vllm-soft: soft requests end thinking at %r, the model's thinking-span end (think_end 'auto'); "
                "their answers after it decode as plain tokens. Set think_end to null to think until cold stop "
                "or budget.", processor.vllm_soft_think_end)
    return processor.vllm_soft_think_end


def resolve_request_knobs(extra_args: dict, additional_config: dict | None, vocab_size: int, tokenizer,
                          temperature: float = 0.0, num_samples: int = 1, think_end: str | None = None) -> None:
    """Replace a soft request's knobs in ``extra_args`` by the complete, resolved set; a
    request that says nothing is soft with the engine's defaults where ``soft_by_default``.
    ``temperature`` and ``num_samples`` (the request's ``n``) decide what its steps draw
    (``params.resolve_randomness``); ``think_end`` is the model's thinking-span end token,
    what knob think_end 'auto' resolves to."""
    overrides = request_overrides(extra_args)
    # No knobs and no 'soft_thinking' key (not even 0, the opt-out): the request says nothing.
    if overrides is None and EXTRA_ARGS_KEY not in extra_args and soft_by_default(additional_config):
        overrides = {}
    if overrides is None:
        return
    defaults = engine_defaults(additional_config)
    if defaults is None:
        raise SoftThinkingParamError(
            EXTRA_ARGS_KEY,
            "this request asks for soft thinking, but the engine was started without it: "
            "use `vllm serve MODEL --soft-thinking` or LLM(..., additional_config={'soft_thinking': {}})",
        )
    params = defaults.with_overrides(overrides)
    if params.top_k > vocab_size:
        raise SoftThinkingParamError("top_k", f"soft_thinking.top_k must be <= the vocabulary size {vocab_size} (got {params.top_k})")
    params = resolve_tokens(params, vocab_size, _token_to_id(tokenizer), think_end)
    params = resolve_randomness(params, temperature, num_samples)
    for key in [k for k in extra_args if k.startswith(FLAT_PREFIX)]:
        del extra_args[key]
    extra_args[EXTRA_ARGS_KEY] = params.to_dict()


def apply_request_validation() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    process_inputs = InputProcessor.process_inputs

    @functools.wraps(process_inputs)
    def process_inputs_(self, *args, **kwargs):
        request = process_inputs(self, *args, **kwargs)
        params = request.sampling_params
        additional_config = self.vllm_config.additional_config
        if params is not None and (params.extra_args or soft_by_default(additional_config)):
            if params.extra_args is None:  # the request's own copy of its params
                params.extra_args = {}
            try:
                resolve_request_knobs(
                    params.extra_args,
                    additional_config,
                    self.vllm_config.model_config.get_vocab_size(),
                    self.tokenizer,
                    params.temperature,
                    params.n,
                    _engine_think_end(self),
                )
            except SoftThinkingParamError as error:
                raise _request_error(error) from None
        return request

    InputProcessor.process_inputs = process_inputs_


def apply_completion_trace() -> None:
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.output_processor import RequestState

    make_request_output, new_completion_output = RequestState.make_request_output, RequestState._new_completion_output
    kv_position = 4  # make_request_output(new_token_ids, pooling_output, finish_reason, stop_reason, kv_transfer_params, ...)

    @functools.wraps(make_request_output)
    def make_request_output_(self, *args, **kwargs):
        args = list(args)
        in_args = len(args) > kv_position
        kv_transfer_params = args[kv_position] if in_args else kwargs.get("kv_transfer_params")
        if kv_transfer_params and EXTRA_ARGS_KEY in kv_transfer_params:
            kv_transfer_params = dict(kv_transfer_params)
            soft = kv_transfer_params.pop(EXTRA_ARGS_KEY)
            if getattr(self, "vllm_soft_trace", None) is None:
                self.vllm_soft_trace = []
            self.vllm_soft_trace += unpack_trace(soft["steps"], len(self.vllm_soft_trace))
            if "knobs" in soft:  # with the last piece
                self.vllm_soft_knobs = soft["knobs"]
            if in_args:
                args[kv_position] = kv_transfer_params or None
            else:
                kwargs["kv_transfer_params"] = kv_transfer_params or None
        return make_request_output(self, *args, **kwargs)

    @functools.wraps(new_completion_output)
    def _new_completion_output(self, *args, **kwargs):
        output = new_completion_output(self, *args, **kwargs)
        trace = getattr(self, "vllm_soft_trace", None)
        if trace is not None:
            # A copy either way: the request's list grows while earlier outputs are still read.
            attached = 0
            if self.output_kind == RequestOutputKind.DELTA:
                attached, self.vllm_soft_attached = getattr(self, "vllm_soft_attached", 0), len(trace)
            setattr(output, COMPLETION_ATTRIBUTE, trace[attached:])
            setattr(output, KNOBS_ATTRIBUTE, getattr(self, "vllm_soft_knobs", None))
        return output

    RequestState.make_request_output = make_request_output_
    RequestState._new_completion_output = _new_completion_output

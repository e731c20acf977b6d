"""Engine-core patches: keep soft KV out of the shared prefix cache; carry traces to clients.

Block hashes. Why: a soft position's KV depends on the mixture fed in, not on its token
id, so the prefix cache must never hand it to another request by token-id hash. What:
wraps ``kv_cache_utils.generate_block_hash_extra_keys`` so that, for soft requests, every
block reaching past the prompt gets the request id as an extra key. Prompt blocks keep
their normal hashes (the G samples of a group share them); the request itself may
re-hit its own soft blocks after a preemption, which is valid. When it can go: if vLLM
grows a per-request "do not cache outputs" switch.

Traces. Why: vLLM has no per-request side channel from worker to client in the V1
runner. What: the worker attaches the step's packed rows to ``ModelRunnerOutput`` (an
extra attribute survives the pickle hop); ``Scheduler.update_from_output`` collects them
by request. A request whose client streams (output kind other than FINAL_ONLY) gets each
step's rows on that step's output; ``Scheduler._free_request`` hands out the rest (for a
final-only request, the whole trace) with the request's resolved knobs. Rows travel as
``records.pack_trace`` blocks in the output's ``kv_transfer_params["soft_thinking"]``
(a key of our own, which the front end removes before anything else reads the dict), so
no per-step record is built in the engine process.
When it can go: once vLLM's engine-core output has a generic per-request extras field.
"""

import functools

from vllm_soft.params import EXTRA_ARGS_KEY, request_overrides
from vllm_soft.records import pack_trace

SOFT_BLOCK_KEY = "vllm_soft"


def _is_soft(request) -> bool:
    params = request.sampling_params
    return params is not None and request_overrides(params.extra_args) is not None


def apply_block_hash_keys() -> None:
    from vllm.v1.core import kv_cache_utils

    generate_extra_keys = kv_cache_utils.generate_block_hash_extra_keys

    @functools.wraps(generate_extra_keys)
    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):
        extra_keys, next_mm_idx = generate_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx)
        if end_token_idx > request.num_prompt_tokens and _is_soft(request):
            extra_keys = (*(extra_keys or ()), (SOFT_BLOCK_KEY, request.request_id))
        return extra_keys, next_mm_idx

    kv_cache_utils.generate_block_hash_extra_keys = generate_block_hash_extra_keys


def apply_trace_collection() -> None:
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.core.sched.scheduler import Scheduler

    update_from_output, free_request = Scheduler.update_from_output, Scheduler._free_request

    @functools.wraps(update_from_output)
    def update_from_output_(self, scheduler_output, model_runner_output):
        step_rows = getattr(model_runner_output, "vllm_soft_trace", None)
        if step_rows is None:
            return update_from_output(self, scheduler_output, model_runner_output)
        traces = self.__dict__.setdefault("vllm_soft_traces", {})
        streamed = set()
        for req_id, row in zip(step_rows.req_ids, step_rows.payload):
            traces.setdefault(req_id, []).append(row)
            request = self.requests.get(req_id)
            if request is not None and request.sampling_params.output_kind != RequestOutputKind.FINAL_ONLY:
                streamed.add(req_id)
        outputs = update_from_output(self, scheduler_output, model_runner_output)
        if streamed:
            for client_outputs in outputs.values():
                for output in client_outputs.outputs:
                    if output.request_id in streamed and not output.finished:  # a finished one got the rest
                        soft = {"steps": pack_trace(traces.pop(output.request_id))}
                        output.kv_transfer_params = {**(output.kv_transfer_params or {}), EXTRA_ARGS_KEY: soft}
        return outputs

    @functools.wraps(free_request)
    def _free_request(self, request, *args, **kwargs):
        kv_transfer_params, ec_transfer_params = free_request(self, request, *args, **kwargs)
        rows = self.__dict__.get("vllm_soft_traces", {}).pop(request.request_id, None)
        if rows is None and _is_soft(request):
            rows = []  # finished before its first soft step (e.g. aborted in prefill)
        if rows is not None:
            # The knobs as the front end resolved them (engine defaults merged, think-end id).
            knobs = request_overrides(request.sampling_params.extra_args)
            soft = {"knobs": knobs, "steps": pack_trace(rows)}
            kv_transfer_params = {**(kv_transfer_params or {}), EXTRA_ARGS_KEY: soft}
        return kv_transfer_params, ec_transfer_params

    Scheduler.update_from_output = update_from_output_
    Scheduler._free_request = _free_request

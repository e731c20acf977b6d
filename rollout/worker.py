"""One rollout worker: a vLLM engine (soft thinking on) that turns prompt groups into
scored ``Sample``s. The pool runs it as a Ray actor; it also works as a plain object.

Continuous batching across calls: ``generate`` may be called from several threads at
once (the actor allows two concurrent calls). Each call adds its requests to the shared
engine, then whichever call holds the lock steps the engine for everyone, so requests of
the next call join the running batch instead of waiting for this one to drain.
"""

import os
import threading
import time
from dataclasses import dataclass

from rollout.rewards import RewardSpec, Scorer
from rollout.sample import Sample
from rollout.settings import EngineConfig, SamplingConfig
from rollout.transport import TRANSPORTS
from rollout.weights import combine_rank_checksums
from vllm_soft import soft_knobs, soft_trace
from vllm_soft.runtime import DIE_WITH_PARENT_ENV, release_freed_memory


@dataclass
class GroupRequest:
    """One prompt to be sampled G times."""

    group_id: int
    prompt: str
    answer: str | None = None
    entry: dict | None = None


def engine_environment(worker_index: int, cpus_per_worker: int, engine_core_process: bool = True) -> dict[str, str]:
    """Environment for a worker's engine: on CPU, OpenMP threads bound to this worker's own
    cores; the engine core in its own process or not (``EngineConfig.engine_core_process``)."""
    env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", DIE_WITH_PARENT_ENV: "1"}  # a killed actor takes its engine
    if not engine_core_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    cores = sorted(os.sched_getaffinity(0))
    first = (worker_index * cpus_per_worker) % len(cores)
    mine = [cores[(first + i) % len(cores)] for i in range(min(cpus_per_worker, len(cores)))]
    env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(core) for core in mine)
    return env


def group_seed(base: int, group_id: int, group_size: int) -> int:
    """The seed of group ``group_id``'s request. vLLM seeds sample i of an n-sample request
    with seed + i, so groups lie ``group_size`` apart and every (group, sample) draws a
    stream of its own: base + group_id * group_size + i (``base + group_id`` would give
    sample i of group g the stream of sample i - 1 of group g + 1)."""
    return base + group_id * group_size


def logits_processor_settings(params) -> list[str]:
    """The settings of a vLLM ``SamplingParams`` that change the logits before the soft step
    and the sampler see them (penalties, biases, banned or forced tokens, structured output).
    The learner replays raw logits, so a training rollout with any of them would be scored
    by another policy than the one that made it."""
    active = [name for name, neutral in (("presence_penalty", 0.0), ("frequency_penalty", 0.0),
                                         ("repetition_penalty", 1.0), ("min_tokens", 0))
              if getattr(params, name) != neutral]
    active += [name for name in ("logit_bias", "bad_words", "allowed_token_ids", "structured_outputs")
               if getattr(params, name, None)]
    return active


def sampling_params(config: SamplingConfig, group_id: int):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    extra = None if config.soft_thinking is None else {"soft_thinking": dict(config.soft_thinking)}
    params = SamplingParams(
        n=config.group_size,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        seed=group_seed(config.seed, group_id, config.group_size),
        logprobs=0,
        extra_args=extra,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )
    if active := logits_processor_settings(params):
        raise ValueError(f"rollouts are replayed from raw logits: {', '.join(active)} cannot be used")
    return params


def rollout_logprobs(completion) -> list[float]:
    """Per response token: the soft step's log-weight where it was soft (0 where cold stop
    or the budget forced the token), else vLLM's processed log-probability."""
    logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
    for entry in soft_trace(completion):
        logprobs[entry["position"]] = entry["logprob"] if entry["logprob"] is not None else 0.0
    return logprobs


class RolloutWorker:
    """A vLLM engine plus a reward scorer; ``generate(groups) -> samples per group``."""

    def __init__(self, engine: EngineConfig, rewards: dict[str, float], reward_timeout_s: float = 5.0,
                 worker_index: int = 0, weight_transport: str = "object_store"):
        from vllm import LLM

        from vllm_soft.models import resolve_model
        from vllm_soft.runtime import resolve_dtype

        self.transport = TRANSPORTS[weight_transport]()
        self.reward_spec = RewardSpec(rewards)
        self.reward_timeout_s = reward_timeout_s
        self.worker_index = worker_index
        self.weight_version = 0
        memory = {"gpu_memory_utilization": engine.gpu_memory_utilization}
        if engine.kv_cache_gib is not None:
            memory = {"kv_cache_memory_bytes": int(engine.kv_cache_gib * (1 << 30))}
        self.llm = LLM(
            model=str(resolve_model(engine.model)),
            dtype=resolve_dtype(engine.dtype, "rollout engine"),
            max_model_len=engine.max_model_len,
            enforce_eager=engine.enforce_eager,
            max_num_seqs=engine.max_num_seqs,
            seed=engine.seed,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rollout.weights.WeightSync",
            additional_config={"soft_thinking": dict(engine.soft_thinking)},
            **memory,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._lock = threading.Lock()
        self._finished: dict[str, object] = {}
        self._scorer = Scorer()

    def ready(self) -> int:
        """Returns the worker index once the engine is up (the pool waits on it)."""
        return self.worker_index

    def generate(self, groups: list[GroupRequest], sampling: SamplingConfig,
                 rewards: dict[str, float] | None = None) -> list[list[Sample]]:
        """G scored samples for each group, in the order of ``groups``; ``rewards``: the
        reward terms for these groups (default: the worker's)."""
        start = time.perf_counter()
        request_ids = [f"group-{g.group_id}-{time.monotonic_ns()}" for g in groups]
        with self._lock:
            for request_id, group in zip(request_ids, groups):
                self.llm.llm_engine.add_request(request_id, group.prompt, sampling_params(sampling, group.group_id))
        outputs = self._wait_for(set(request_ids))
        generate_s = time.perf_counter() - start
        spec = self.reward_spec if rewards is None else RewardSpec(rewards)
        return self._to_samples(groups, [outputs[r] for r in request_ids], generate_s, sampling.group_size, spec)

    def _wait_for(self, request_ids: set[str]) -> dict[str, object]:
        engine = self.llm.llm_engine
        while True:
            with self._lock:
                if request_ids <= self._finished.keys():
                    return {r: self._finished.pop(r) for r in request_ids}
                for output in engine.step():
                    if output.finished:
                        self._finished[output.request_id] = output

    def _to_samples(self, groups, outputs, generate_s: float, group_size: int, spec: RewardSpec) -> list[list[Sample]]:
        start = time.perf_counter()
        samples = []
        for group, output in zip(groups, outputs):
            for index, completion in enumerate(output.outputs):
                samples.append(Sample(
                    group_id=group.group_id,
                    sample_index=index,
                    prompt=group.prompt,
                    prompt_token_ids=list(output.prompt_token_ids),
                    response_token_ids=list(completion.token_ids),
                    response_text=completion.text,
                    rollout_logprobs=rollout_logprobs(completion),
                    finish_reason=completion.finish_reason,
                    soft_steps=soft_trace(completion),
                    soft_knobs=soft_knobs(completion),
                    weight_version=self.weight_version,
                    answer=group.answer,
                    metadata={"worker_index": self.worker_index, **({"entry": group.entry} if group.entry else {})},
                ))
        items = [(s.response_text, s.answer, s.metadata.get("entry")) for s in samples]
        results = self._scorer.score_batch(items, spec, self.reward_timeout_s)
        reward_s = time.perf_counter() - start
        for sample, result in zip(samples, results):
            sample.reward, sample.reward_parts = result.total, result.parts
            sample.timings = {"generate_s": generate_s, "reward_s": reward_s}
            sample.metadata["reward_errors"] = result.errors + result.timeouts
        return [samples[i * group_size : (i + 1) * group_size] for i in range(len(groups))]

    def load_weights(self, handle, version: int) -> int:
        """Load a push's weights in place through the transport (``handle``: what its
        ``publish`` made), drop prefix-cache entries made with the old ones."""
        staged = self.transport.receive(handle)  # outside the lock: generate calls go on meanwhile
        del handle
        with self._lock:
            self.transport.load(self.llm, staged)
            self.llm.reset_prefix_cache()
            self.weight_version = version
        release_freed_memory(collect_cycles=False)
        return version

    def weights_checksum(self) -> tuple[int, float, float]:
        """The engine's weights checksum, combined over its tensor-parallel ranks."""
        with self._lock:
            return combine_rank_checksums(self.llm.collective_rpc("weights_checksum"))

    def shutdown(self) -> None:
        self._scorer.close()

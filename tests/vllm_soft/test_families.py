"""Every decoder family of the matrix (``vllm_soft.families``: Llama, Qwen2, Qwen3, Mistral,
Gemma 3, Gemma 2, Phi-3, Granite), on tiny random models in float32, one in-process engine
per family: soft top_k = 1 is greedy; each mode's soft steps match the independent
reference teacher-forced; every soft action replays through the learner within 1e-3; a
weight push round-trips (checksum). Prompts are longer than the sliding-window families'
window, so their windows really slide. (Serving and one training step per family:
tests/trainer/test_families_run.py.)"""

import os

import pytest
import torch
from in_process import engine_in_this_process
from soft_actions import SOFT_ACTIONS, replay_gap
from soft_checks import assert_replays, generate, soft_params
from vllm import SamplingParams, TokensPrompt

from rollout.settings import EngineConfig, SamplingConfig
from rollout.weights import parameter_checksum, write_weights_file
from rollout.worker import GroupRequest, RolloutWorker
from trainer.policy import ReplayBatch
from vllm_soft import models
from vllm_soft.families import FAMILIES
from vllm_soft.trace import soft_knobs, soft_summary, soft_trace

pytestmark = pytest.mark.slow

FAMILY_MODELS = {family: "tiny" if family == "llama" else f"tiny-{family}" for family in FAMILIES}
QUESTIONS = ("Tom has 3 apples and buys 4 more. How many apples does he have now?", "What is 2 + 6?")
MODES = {
    "replace": {"mode": "replace", "top_k": 8},
    "add": {"mode": "add", "scale": 0.7, "top_k": 8},
    "gate": {"mode": "gate", "top_k": 8},
    "hidden": {"mode": "hidden", "max_soft_steps": 5},
}


class Family:
    """One family's model: its folder, tokenizer, transformers model and a rollout worker
    (no Ray) whose engine runs in this process."""

    def __init__(self, name: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.path = name, models.fetch(FAMILY_MODELS[name])
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # The reference runs eager attention (SDPA has no attention soft-capping: Gemma 2);
        # the learner's policy switches its own copy to block attention.
        self.hf = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32, attn_implementation="eager").eval()
        self.policy_model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
        with engine_in_this_process():
            self.worker = RolloutWorker(EngineConfig(model=str(self.path), dtype="float32", kv_cache_gib=0.25),
                                        {"brevity": 1.0})
        self.prompts = [
            self.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
            for q in QUESTIONS
        ]

    def shutdown(self) -> None:
        self.worker.shutdown()
        self.worker.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module", params=list(FAMILY_MODELS))
def family(request):
    loaded = Family(request.param)
    yield loaded
    loaded.shutdown()


def test_prompts_are_longer_than_the_sliding_window(family):
    window = getattr(family.hf.config, "sliding_window", None)
    assert window is None or min(len(p) for p in family.prompts) + 16 > window


def test_soft_top_k_1_is_greedy(family):
    """Replace with top_k 1 feeds back E[argmax]: greedy decoding, token for token (and add
    with scale 0, whose concept term vanishes)."""
    llm = family.worker.llm
    greedy = generate(llm, family.prompts, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
    for knobs in ({"top_k": 1}, {"mode": "add", "scale": 0.0, "top_k": 1}):
        soft = generate(llm, family.prompts, soft_params(24, **knobs))
        for plain, completion in zip(greedy, soft):
            assert list(completion.token_ids) == list(plain.token_ids), knobs
            assert soft_summary(completion)["num_soft_steps"] == 24


def test_think_end_defaults_to_the_models_thinking_span_end(family):
    """A budget of 5 soft steps at temperature 0. A family whose tokenizer has ``</think>``
    (Qwen3's) ends thinking there by default: the 5th token is ``</think>``, forced, and the
    answer after it decodes as plain tokens; ``think_end: null`` keeps the old behaviour (the
    budget ends thinking with no token forced). A family without it reports no think-end."""
    thinking = "</think>" in family.tokenizer.get_vocab()
    think_id = family.tokenizer.convert_tokens_to_ids("</think>") if thinking else None
    default, off = (generate(family.worker.llm, family.prompts, soft_params(12, top_k=4, max_soft_steps=5, **knobs))
                    for knobs in ({}, {"think_end": "null"}))
    for completion, plain in zip(default, off):
        knobs, trace = soft_knobs(completion), soft_trace(completion)
        assert (knobs["think_end"], knobs["think_end_id"]) == (("</think>", think_id) if thinking else (None, None))
        assert len(trace) == 5 and trace[-1]["end_reason"] == "budget" and len(completion.token_ids) == 12
        assert (completion.token_ids[4] == think_id and trace[-1]["logprob"] is None) if thinking else \
            (completion.token_ids[4] == trace[-1]["emitted"])
        assert soft_knobs(plain)["think_end"] is None and plain.token_ids[4] == soft_trace(plain)[-1]["emitted"]
        assert think_id not in plain.token_ids[:5]


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_matches_the_reference(family, mode):
    """Teacher-forced, each soft step's support and weights (and, mode hidden, each latent;
    mode gate, each step's mean gate) are the reference's, built with the model's own
    embedding function and logits."""
    knobs = MODES[mode]
    completions = generate(family.worker.llm, family.prompts, soft_params(16, **knobs))
    for prompt_ids, completion in zip(family.prompts, completions):
        assert soft_knobs(completion)["mode"] == knobs["mode"]
        assert_replays(family.hf, prompt_ids, completion)


@pytest.mark.parametrize("action", list(SOFT_ACTIONS))
def test_learner_replays_every_action_within_1e_3(family, action):
    knobs = SOFT_ACTIONS[action]
    sampling = SamplingConfig(group_size=3, temperature=1.0, max_tokens=16, seed=7, soft_thinking=knobs)
    prompts = [family.tokenizer.decode(p) for p in family.prompts]
    groups = family.worker.generate([GroupRequest(i, p) for i, p in enumerate(prompts)], sampling)
    samples = [s for group in groups for s in group]
    gap, mask = replay_gap(family.policy_model, samples, ReplayBatch.from_samples(samples, temperature=1.0))
    assert int(mask.sum()) == sum(len(s.response_token_ids) for s in samples)
    assert (knobs is None) == all(not s.soft_steps for s in samples)
    assert gap <= 1e-3


def test_weight_push_round_trips(family):
    """Perturbed weights pushed by Hugging Face name, as the learner sends them (a tied output
    layer's name included), land in vLLM's fused, renamed layers: the engine's checksum is
    the learner's, and its next-token log-probabilities are transformers' with the pushed
    weights (a layer that kept a stale packed copy, which no checksum sees, shows here)."""
    own = {name: tensor.clone() for name, tensor in family.hf.state_dict().items()}
    tied = family.hf.config.tie_word_embeddings
    before = family.worker.weights_checksum()
    # The engine counts the HRPO gate too once a gated request loaded it; a push leaves it.
    gate = [engine - model for engine, model in zip(before, parameter_checksum(_engine_held(own, tied).values()))]
    noise = torch.Generator().manual_seed(1)
    pushed = {name: tensor + 2e-2 * torch.randn(tensor.shape, generator=noise) for name, tensor in own.items()}
    if tied:
        pushed["lm_head.weight"] = pushed["model.embed_tokens.weight"]
    _push(family, pushed)
    after = family.worker.weights_checksum()
    expected = [sent + kept for sent, kept in zip(parameter_checksum(_engine_held(pushed, tied).values()), gate)]
    assert after[0] == expected[0] and after != before
    assert list(after[1:]) == pytest.approx(expected[1:], rel=1e-9)
    family.hf.load_state_dict(pushed)
    try:
        assert _prompt_logprob_gap(family) <= 1e-3
    finally:
        family.hf.load_state_dict(own)
        _push(family, own)  # the family's own weights back
    assert list(family.worker.weights_checksum()) == pytest.approx(list(before), rel=1e-12)
    assert _prompt_logprob_gap(family) <= 1e-3


def _engine_held(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """The tensors an engine holds: a tied output layer is the embedding, once."""
    return {name: tensor for name, tensor in state.items() if not (tied and name == "lm_head.weight")}


def _prompt_logprob_gap(family: Family) -> float:
    """Largest |engine - transformers| log-probability of the prompts' own tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    gap = 0.0
    for prompt in family.prompts:
        (output,) = family.worker.llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
        engine = torch.tensor([entry[token].logprob for entry, token in zip(output.prompt_logprobs[1:], prompt[1:])])
        with torch.no_grad():
            logits = family.hf(torch.tensor([prompt])).logits[0, :-1].float()
        reference = torch.log_softmax(logits, -1).gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
        gap = max(gap, float((engine - reference).abs().max()))
    return gap


def _push(family: Family, state: dict[str, torch.Tensor]) -> None:
    path, layout = write_weights_file(state.items())
    try:
        family.worker.llm.collective_rpc("load_weights_file", args=(path, layout))
    finally:
        os.remove(path)

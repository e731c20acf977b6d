"""Benchmarks by name: where the problems come from and which reward term says "correct".

    reasoning-gym task names (offline, generated): basic_arithmetic, gsm_symbolic, ...
    gsm8k     openai/gsm8k (main, test)            question / answer ("... #### 42")
    math500   HuggingFaceH4/MATH-500 (test)        problem / answer
    aime2024  HuggingFaceH4/aime_2024 (train)      problem / answer
    gpqa_diamond  Idavidrein/gpqa (gpqa_diamond, train; gated: log in first)
                  Question / Correct Answer, Incorrect Answer 1-3: four options, shuffled
                  per question (seeded) and lettered A-D; scored on the letter picked

A named Hugging Face benchmark also reads a local copy in its published format:
``data=PATH`` (a .jsonl, .parquet or .csv file, e.g. GPQA's gpqa_diamond.csv, or a
``save_to_disk`` folder).
"""

from dataclasses import dataclass, field

from rollout.prompts import PromptSourceConfig


@dataclass(frozen=True)
class Benchmark:
    name: str
    source: PromptSourceConfig = field(hash=False)
    correct_term: str
    """The reward term that checks the answer (``rollout.rewards.CHECKS``)."""


HF_BENCHMARKS = {
    "gsm8k": dict(name="openai/gsm8k", config_name="main", split="test", question_field="question",
                  answer_field="answer"),
    "math500": dict(name="HuggingFaceH4/MATH-500", split="test", question_field="problem", answer_field="answer"),
    "aime2024": dict(name="HuggingFaceH4/aime_2024", split="train", question_field="problem", answer_field="answer"),
    "gpqa_diamond": dict(name="Idavidrein/gpqa", config_name="gpqa_diamond", split="train", question_field="Question",
                         choice_fields=["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                        "Incorrect Answer 3"]),
}


def resolve_benchmark(name: str, args: dict | None = None, data: str | None = None, seed: int = 0,
                      size: int = 1000) -> Benchmark:
    """``name``: a key of ``HF_BENCHMARKS`` or a reasoning-gym task (``args``: its settings)."""
    if name in HF_BENCHMARKS:
        if args:
            raise ValueError(f"args are for reasoning-gym tasks; {name} takes none (got {args})")
        spec = {**HF_BENCHMARKS[name], "seed": seed}
        if data is None:
            source = PromptSourceConfig(kind="hf", **spec)
        elif data.endswith((".jsonl", ".parquet", ".csv")):
            fields = {k: v for k, v in spec.items() if k not in ("name", "config_name", "split")}
            source = PromptSourceConfig(kind=data.rsplit(".", 1)[1], path=data, **fields)
        else:
            source = PromptSourceConfig(kind="hf", **{**spec, "name": data, "config_name": None})
        return Benchmark(name, source, "choice" if source.choice_fields else "correct")
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise ValueError(f"unknown benchmark {name!r}; use one of {sorted(HF_BENCHMARKS)} or a reasoning-gym task "
                         f"(e.g. basic_arithmetic, gsm_symbolic)")
    if data is not None:
        raise ValueError(f"data= is for the Hugging Face benchmarks; reasoning-gym task {name} is generated")
    source = PromptSourceConfig(kind="reasoning_gym", name=name, args=dict(args or {}), size=size, seed=seed)
    return Benchmark(name, source, "reasoning_gym")

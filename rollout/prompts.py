"""Prompt sources chosen by a config, and the one place where prompts are formatted.

    PromptSourceConfig(kind=...) ──load_prompts──► [PromptItem(index, question, answer, entry)]
        reasoning_gym: procedural generator, deterministic for (name, args, size, seed)
        jsonl/parquet/csv: a local file with question and answer fields
        hf:            Hugging Face datasets by name, or a folder from Dataset.save_to_disk
    multiple choice (``choice_fields``): the options are shuffled per question (seeded),
        lettered A, B, ... under the question; the answer is the correct letter
                                                     │
    PromptFormat(system_prompt, instruction) ──format_prompt──► text sent to the engine

``entry`` keeps the raw reasoning-gym entry, which that dataset's own scorer needs.
"""

import csv
import dataclasses
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from typing import Literal, get_args

SourceKind = Literal["reasoning_gym", "jsonl", "parquet", "csv", "hf"]
SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)

# Settings each kind reads; `kind` itself aside, others are ignored (with a warning).
_KEYS_BY_KIND = {
    "reasoning_gym": {"name", "args", "size", "seed"},
    "jsonl": {"path", "question_field", "answer_field", "choice_fields", "seed"},
    "parquet": {"path", "question_field", "answer_field", "choice_fields", "seed"},
    "csv": {"path", "question_field", "answer_field", "choice_fields", "seed"},
    "hf": {"name", "split", "config_name", "question_field", "answer_field", "choice_fields", "seed"},
}

DEFAULT_INSTRUCTION = (
    "Think step by step inside <think></think>, then give only the final answer "
    "inside <answer></answer>."
)


@dataclass
class PromptSourceConfig:
    """Where prompts come from."""

    kind: SourceKind = "reasoning_gym"
    """One of ``reasoning_gym``, ``jsonl``, ``parquet``, ``csv``, ``hf``."""
    name: str = "basic_arithmetic"
    """reasoning_gym: the generator; hf: the dataset name, or a ``save_to_disk`` folder."""
    args: dict = field(default_factory=dict)
    """reasoning_gym: the generator's config, e.g. ``{"min_terms": 2, "max_terms": 2}``."""
    size: int = 1000
    """reasoning_gym: how many prompts to generate."""
    seed: int = 0
    """reasoning_gym: generator seed; multiple choice: the seed of the option order. The
    same seed gives the same prompts."""
    path: str = ""
    """jsonl/parquet/csv: the file to read."""
    question_field: str = "question"
    """jsonl/parquet/csv/hf: the field that holds the question."""
    answer_field: str = "answer"
    """jsonl/parquet/csv/hf: the field that holds the reference answer (not read for
    multiple choice)."""
    choice_fields: list[str] = field(default_factory=list)
    """Multiple choice: the fields of the options, the correct one first (GPQA:
    ``Correct Answer``, ``Incorrect Answer 1``, ...)."""
    split: str = "train"
    """hf: the split to load."""
    config_name: str | None = None
    """hf: the dataset configuration (subset), if it has several."""

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind must be one of {list(SOURCE_KINDS)} (got {self.kind!r})")
        used = _KEYS_BY_KIND[self.kind]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default
            if f.name != "kind" and f.name not in used and value != default:
                warnings.warn(f"{f.name}={value!r} is ignored for kind={self.kind!r}", stacklevel=3)
        for key in sorted(used & {"name", "path", "question_field", "answer_field", "split"}):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a non-empty string for kind={self.kind!r} (got {value!r})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer (got {self.seed!r})")
        if self.choice_fields and (len(self.choice_fields) < 2 or len(self.choice_fields) > 26
                                   or not all(isinstance(f, str) and f for f in self.choice_fields)):
            raise ValueError(f"choice_fields must name 2 to 26 fields, the correct option first "
                             f"(got {self.choice_fields!r})")
        if self.kind == "reasoning_gym":
            if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
                raise ValueError(f"size must be a positive integer (got {self.size!r})")
            if not isinstance(self.args, dict):
                raise ValueError(f"args must be a mapping of generator settings (got {self.args!r})")
            for key in ("size", "seed"):
                if key in self.args:
                    raise ValueError(f"set {key} as its own key, not inside args")


@dataclass
class PromptItem:
    """One prompt with its reference answer."""

    index: int
    """Position in the source."""
    question: str
    """The question, unformatted."""
    answer: str
    """The reference answer."""
    entry: dict | None = None
    """The raw reasoning-gym entry (for its scorer); None for other sources."""


def load_prompts(config: PromptSourceConfig) -> list[PromptItem]:
    """All prompts of the source ``config`` describes, in source order."""
    return _LOADERS[config.kind](config)


def _load_reasoning_gym(config: PromptSourceConfig) -> list[PromptItem]:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if config.name not in DATASETS:
        raise ValueError(
            f"name {config.name!r} is not a reasoning-gym dataset; valid names: {sorted(DATASETS)}"
        )
    settings = {f.name for f in dataclasses.fields(DATASETS[config.name][1])} - {"size", "seed"}
    unknown = sorted(set(config.args) - settings)
    if unknown:
        raise ValueError(
            f"args {unknown} are not settings of reasoning-gym dataset {config.name!r}; "
            f"valid settings: {sorted(settings)}"
        )
    try:
        dataset = reasoning_gym.create_dataset(
            config.name, size=config.size, seed=config.seed, **config.args
        )
    except AssertionError as e:  # reasoning-gym validates its configs with asserts
        raise ValueError(f"invalid args for reasoning-gym dataset {config.name!r}: {e}") from e
    return [
        PromptItem(index, entry["question"], str(entry["answer"]), entry)
        for index, entry in enumerate(dataset)
    ]


def _load_jsonl(config: PromptSourceConfig) -> list[PromptItem]:
    rows = []
    with open(config.path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{config.path}:{number}: not valid JSON: {e}") from e
    return _items_from_rows(rows, config, config.path)


def _load_parquet(config: PromptSourceConfig) -> list[PromptItem]:
    import pyarrow.parquet  # a dependency of `datasets`

    rows = pyarrow.parquet.read_table(config.path).to_pylist()
    return _items_from_rows(rows, config, config.path)


def _load_csv(config: PromptSourceConfig) -> list[PromptItem]:
    with open(config.path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return _items_from_rows(rows, config, config.path)


def _load_hf(config: PromptSourceConfig) -> list[PromptItem]:
    import datasets

    if os.path.isdir(config.name):
        dataset = datasets.load_from_disk(config.name)
        if isinstance(dataset, datasets.DatasetDict):
            if config.split not in dataset:
                raise ValueError(
                    f"split {config.split!r} is not in {config.name}; available: {list(dataset)}"
                )
            dataset = dataset[config.split]
    else:
        dataset = datasets.load_dataset(config.name, config.config_name, split=config.split)
    return _items_from_rows(dataset, config, config.name)


def _items_from_rows(rows, config: PromptSourceConfig, source: str) -> list[PromptItem]:
    items = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{source}: row {index} is not a mapping (got {type(row).__name__})")
        needed = [("question_field", config.question_field)]
        needed += [("choice_fields", f) for f in config.choice_fields] or [("answer_field", config.answer_field)]
        for key, name in needed:
            if name not in row:
                raise ValueError(
                    f"{source}: row {index} has no field {name!r} (set {key}; fields present: {sorted(row)})"
                )
        question = row[config.question_field]
        if not isinstance(question, str):
            raise ValueError(
                f"{source}: row {index}: question field {config.question_field!r} must be a "
                f"string (got {type(question).__name__})"
            )
        if config.choice_fields:
            question, answer = multiple_choice(question, [str(row[f]).strip() for f in config.choice_fields],
                                               random.Random(f"{config.seed}:{index}"))
        else:
            answer = str(row[config.answer_field])
        items.append(PromptItem(index, question, answer))
    return items


def multiple_choice(question: str, options: list[str], rng: random.Random) -> tuple[str, str]:
    """(question with the options shuffled and lettered, letter of the correct one);
    ``options[0]`` is the correct one."""
    order = rng.sample(range(len(options)), len(options))
    letters = [chr(ord("A") + i) for i in range(len(options))]
    lines = [f"{letter}) {options[i]}" for letter, i in zip(letters, order)]
    return question.strip() + "\n\n" + "\n".join(lines), letters[order.index(0)]


_LOADERS = {
    "reasoning_gym": _load_reasoning_gym,
    "jsonl": _load_jsonl,
    "parquet": _load_parquet,
    "csv": _load_csv,
    "hf": _load_hf,
}


@dataclass
class PromptFormat:
    """How a question becomes the text sent to the engine."""

    system_prompt: str | None = None
    """System message; None keeps the chat template's own default, if it has one."""
    instruction: str = DEFAULT_INSTRUCTION
    """Appended to the question, after a blank line: how to lay out the answer."""
    use_chat_template: bool = True
    """Apply the tokenizer's chat template; False sends plain text."""
    response_prefix: str = ""
    """Text the model's turn starts with (after the chat template's generation prompt; in
    plain text after a blank line), e.g. "The final number is" to make a model answer at
    once. Part of the prompt: rewards and answer extraction see only what the model writes."""


def format_prompt(item: PromptItem, tokenizer, fmt: PromptFormat) -> str:
    """The prompt text for ``item``: question plus instruction, in the chat template if
    ``fmt.use_chat_template`` (``tokenizer`` may be None otherwise)."""
    user = f"{item.question}\n\n{fmt.instruction}" if fmt.instruction else item.question
    if not fmt.use_chat_template:
        text = f"{fmt.system_prompt}\n\n{user}" if fmt.system_prompt else user
        return f"{text}\n\n{fmt.response_prefix}" if fmt.response_prefix else text
    if tokenizer is None or tokenizer.chat_template is None:
        raise ValueError("use_chat_template=True needs a tokenizer with a chat template")
    messages = [{"role": "user", "content": user}]
    if fmt.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": fmt.system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + fmt.response_prefix

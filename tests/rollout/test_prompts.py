"""Prompt sources (reasoning-gym, JSONL, Parquet, a saved Hugging Face dataset) and formatting."""

import json

import pytest

from rollout.prompts import (
    DEFAULT_INSTRUCTION,
    PromptFormat,
    PromptItem,
    PromptSourceConfig,
    format_prompt,
    load_prompts,
)
from rollout.rewards import reasoning_gym_score

ARITHMETIC_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
ROWS = [
    {"problem": "What is 2 + 3?", "solution": 5, "source": "a"},
    {"problem": "What is 10 / 5?", "solution": 2, "source": "b"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _arithmetic(seed: int) -> list[PromptItem]:
    config = PromptSourceConfig(name="basic_arithmetic", args=ARITHMETIC_ARGS, size=8, seed=seed)
    return load_prompts(config)


def test_reasoning_gym_is_deterministic_and_scorable():
    items = _arithmetic(seed=42)
    assert [item.index for item in items] == list(range(8))
    assert items == _arithmetic(seed=42)
    assert [item.question for item in items] != [item.question for item in _arithmetic(seed=43)]
    for item in items:
        assert item.entry["question"] == item.question
        assert item.entry["metadata"]["source_dataset"] == "basic_arithmetic"
        assert item.entry["metadata"]["num_terms"] == 2
        good = f"<think>compute</think><answer>{item.answer}</answer>"
        assert reasoning_gym_score(good, item.entry) == 1.0
        assert reasoning_gym_score(f"<answer>{int(item.answer) + 1}</answer>", item.entry) < 1.0
        assert reasoning_gym_score("no idea", item.entry) == 0.0


def test_reasoning_gym_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"'min_term'.*valid settings.*'min_terms'"):
        load_prompts(PromptSourceConfig(args={"min_term": 2}))
    with pytest.raises(ValueError, match="invalid args.*min_terms"):
        load_prompts(PromptSourceConfig(args={"min_terms": 0}))
    with pytest.raises(ValueError, match=r"'basic_arithmetc'.*valid names.*'basic_arithmetic'"):
        load_prompts(PromptSourceConfig(name="basic_arithmetc"))
    with pytest.raises(ValueError, match="set seed as its own key"):
        PromptSourceConfig(args={"seed": 1})


def test_jsonl(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n\n")
    config = PromptSourceConfig(
        kind="jsonl", path=str(path), question_field="problem", answer_field="solution"
    )
    assert load_prompts(config) == [
        PromptItem(0, "What is 2 + 3?", "5"),
        PromptItem(1, "What is 10 / 5?", "2"),
    ]


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in ROWS))
    with pytest.raises(ValueError, match=r"row 0 has no field 'question' \(set question_field"):
        load_prompts(PromptSourceConfig(kind="jsonl", path=str(path), answer_field="solution"))


def test_parquet(tmp_path):
    import datasets

    path = tmp_path / "prompts.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    config = PromptSourceConfig(
        kind="parquet", path=str(path), question_field="problem", answer_field="solution"
    )
    assert [(item.question, item.answer) for item in load_prompts(config)] == [
        ("What is 2 + 3?", "5"),
        ("What is 10 / 5?", "2"),
    ]


MC_FIELDS = ["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]


def _write_mc_csv(path, count: int) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["Question", *MC_FIELDS, "Subdomain"])
        writer.writeheader()
        for i in range(count):
            writer.writerow({"Question": f"Which is item {i}?", "Correct Answer": f"right {i}",
                             "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}",
                             "Incorrect Answer 3": f"wrong, with comma {i}", "Subdomain": "x"})


def test_csv_multiple_choice_letters_the_shuffled_options(tmp_path):
    path = tmp_path / "mc.csv"
    _write_mc_csv(path, 24)
    config = PromptSourceConfig(kind="csv", path=str(path), question_field="Question", choice_fields=MC_FIELDS)
    items = load_prompts(config)
    for i, item in enumerate(items):
        question, listed = item.question.split("\n\n")
        options = listed.split("\n")
        assert question == f"Which is item {i}?"
        assert [o[:3] for o in options] == ["A) ", "B) ", "C) ", "D) "]
        by_letter = dict(o.split(") ", 1) for o in options)
        assert by_letter[item.answer] == f"right {i}"
        assert sorted(by_letter.values()) == sorted([f"right {i}", f"wrong a{i}", f"wrong b{i}", f"wrong, with comma {i}"])
    assert len({item.answer for item in items}) == 4, "the correct option moves between questions"
    assert load_prompts(config) == items, "the same seed gives the same order"
    reseeded = load_prompts(PromptSourceConfig(kind="csv", path=str(path), question_field="Question",
                                               choice_fields=MC_FIELDS, seed=1))
    assert [i.answer for i in reseeded] != [i.answer for i in items]
    with pytest.raises(ValueError, match=r"no field 'Incorrect Answer 4' \(set choice_fields"):
        load_prompts(PromptSourceConfig(kind="csv", path=str(path), question_field="Question",
                                        choice_fields=[*MC_FIELDS, "Incorrect Answer 4"]))


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    rows = [{"question": r["problem"], "answer": str(r["solution"])} for r in ROWS]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "plain"))
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    )
    splits.save_to_disk(str(tmp_path / "splits"))

    plain = load_prompts(PromptSourceConfig(kind="hf", name=str(tmp_path / "plain")))
    assert [item.question for item in plain] == ["What is 2 + 3?", "What is 10 / 5?"]
    test = load_prompts(PromptSourceConfig(kind="hf", name=str(tmp_path / "splits"), split="test"))
    assert test == [PromptItem(0, "What is 2 + 3?", "5")]
    with pytest.raises(ValueError, match=r"split 'validation'.*\['train', 'test'\]"):
        load_prompts(PromptSourceConfig(kind="hf", name=str(tmp_path / "splits"), split="validation"))


def test_config_validation():
    with pytest.raises(ValueError, match=r"kind must be one of \['reasoning_gym', 'jsonl', 'parquet', 'csv', 'hf'\]"):
        PromptSourceConfig(kind="tsv")
    with pytest.raises(ValueError, match="choice_fields must name 2 to 26 fields"):
        PromptSourceConfig(kind="csv", path="x.csv", choice_fields=["only"])
    with pytest.raises(ValueError, match="path must be a non-empty string for kind='jsonl'"):
        PromptSourceConfig(kind="jsonl")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        PromptSourceConfig(size=0)
    with pytest.warns(UserWarning, match="path='x.jsonl' is ignored for kind='reasoning_gym'"):
        PromptSourceConfig(path="x.jsonl")


def test_format_prompt_with_chat_template(tokenizer):
    item = PromptItem(0, "Calculate 2 + 3.", "5")
    text = format_prompt(item, tokenizer, PromptFormat(system_prompt="Be brief."))
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\nCalculate 2 + 3.\n\n{DEFAULT_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "<answer></answer>" in DEFAULT_INSTRUCTION


def test_format_prompt_without_chat_template(tokenizer):
    item = PromptItem(0, "Calculate 2 + 3.", "5")
    fmt = PromptFormat(system_prompt="Be brief.", instruction="Answer in <answer></answer>.", use_chat_template=False)
    assert format_prompt(item, None, fmt) == "Be brief.\n\nCalculate 2 + 3.\n\nAnswer in <answer></answer>."
    assert format_prompt(item, None, PromptFormat(instruction="", use_chat_template=False)) == item.question
    with pytest.raises(ValueError, match="use_chat_template"):
        format_prompt(item, None, PromptFormat())


def test_a_response_prefix_starts_the_models_turn(tokenizer):
    item = PromptItem(0, "Calculate 2 + 3.", "5")
    fmt = PromptFormat(instruction="Give only the final number.", response_prefix="The final number is")
    assert format_prompt(item, tokenizer, fmt).endswith(
        "Give only the final number.<|im_end|>\n<|im_start|>assistant\nThe final number is")
    plain = PromptFormat(instruction="", use_chat_template=False, response_prefix="Answer:")
    assert format_prompt(item, None, plain) == "Calculate 2 + 3.\n\nAnswer:"

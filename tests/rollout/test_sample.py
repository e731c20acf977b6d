"""The sample record: validation, JSON round trip, atomic JSONL files."""

import json
import os

import pytest

from rollout.sample import Sample, read_jsonl, write_jsonl


def _sample(**overrides) -> Sample:
    fields = dict(
        group_id=3,
        sample_index=1,
        prompt="<|im_start|>user\nCalculate 2 + 2.<|im_end|>\n",
        prompt_token_ids=[1, 2, 3],
        response_token_ids=[10, 11, 12, 13],
        response_text="<think>é\n2+2</think><answer>4</answer>",
        rollout_logprobs=[-0.5, -1.25, float("-inf"), 0.0],
        finish_reason="stop",
        soft_steps=[
            {"position": 0, "token_ids": [10, 20], "weights": [0.75, 0.25], "log_weights": [-0.2877, -1.3863]},
            {"position": 1, "token_ids": [11], "weights": [1.0], "log_weights": [0.0]},
        ],
        reward=1.1,
        reward_parts={"correct": 1.0, "format": 1.0},
        weight_version=7,
        timings={"generate": 0.25},
        answer="4",
        metadata={"entry": {"question": "Calculate 2 + 2.", "metadata": {"difficulty": [1, 2]}}},
    )
    fields.update(overrides)
    return Sample(**fields)


def test_defaults():
    sample = Sample(0, 0, "p", [1], [2], "x", [-0.1], None)
    assert (sample.soft_steps, sample.reward, sample.reward_parts) == ([], 0.0, {})
    assert (sample.weight_version, sample.timings, sample.answer, sample.metadata) == (0, {}, None, {})


def test_json_round_trip_is_one_line_and_exact():
    sample = _sample()
    line = sample.to_json()
    assert "\n" not in line
    assert json.loads(line)["response_text"] == sample.response_text
    assert Sample.from_json(line) == sample


def test_logprobs_must_match_response_tokens():
    with pytest.raises(ValueError, match="rollout_logprobs"):
        _sample(rollout_logprobs=[-0.5])


@pytest.mark.parametrize("position", [-1, 4, 1.0, None])
def test_soft_step_position_must_index_the_response(position):
    step = {"position": position, "token_ids": [1], "weights": [1.0], "log_weights": [0.0]}
    with pytest.raises(ValueError, match=r"soft_steps\[0\]\.position"):
        _sample(soft_steps=[step])


@pytest.mark.parametrize("key", ["weights", "log_weights"])
def test_soft_step_needs_one_weight_and_log_weight_per_token(key):
    step = {"position": 0, "token_ids": [1, 2], "weights": [0.5, 0.5], "log_weights": [-0.69, -0.69]} | {key: [1.0]}
    with pytest.raises(ValueError, match=f"as many {key} as token_ids"):
        _sample(soft_steps=[step])


def test_from_json_names_unknown_fields():
    data = json.loads(_sample().to_json()) | {"rewrad": 1.0}
    with pytest.raises(ValueError, match="rewrad"):
        Sample.from_json(json.dumps(data))


def test_jsonl_round_trip(tmp_path):
    samples = [_sample(sample_index=i, response_text=f"answer {i}") for i in range(3)]
    path = tmp_path / "samples.jsonl"
    write_jsonl(samples, path)
    assert read_jsonl(path) == samples
    assert len(path.read_text().splitlines()) == 3
    assert os.listdir(tmp_path) == ["samples.jsonl"]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    write_jsonl([_sample()], path)
    before = path.read_text()

    def broken():
        yield _sample(sample_index=5)
        raise RuntimeError("generator failed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        write_jsonl(broken(), path)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["samples.jsonl"]


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(_sample().to_json() + "\n\n" + '{"group_id": 1}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:3"):
        read_jsonl(path)

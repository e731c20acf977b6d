"""``python -m rollout --config configs/rollout_smoke.yaml key=value ...``

Samples G responses for each prompt with a pool of vLLM workers, scores them, and writes
``samples.jsonl``, ``summary.json`` and the resolved ``config.yaml`` to ``output_dir``.
"""

import json
import logging
import time
from pathlib import Path

from rollout.config import config_arg_parser, load_config, save_config
from rollout.prompts import format_prompt, load_prompts
from rollout.sample import write_jsonl
from rollout.settings import RolloutConfig
from rollout.summary import summarize
from rollout.worker import GroupRequest


def build_groups(config: RolloutConfig, tokenizer) -> list[GroupRequest]:
    """The prompt groups of a run: source, then the one prompt format."""
    items = load_prompts(config.prompts)[: config.num_prompts]
    return [
        GroupRequest(group_id=i, prompt=format_prompt(item, tokenizer, config.format), answer=item.answer, entry=item.entry)
        for i, item in enumerate(items)
    ]


def main(argv=None) -> dict:
    args = config_arg_parser(__doc__.split("\n")[0].strip("`")).parse_args(argv)
    config = load_config(RolloutConfig, args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")

    from transformers import AutoTokenizer

    from rollout.pool import RolloutPool
    from vllm_soft.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.engine.model))
    groups = build_groups(config, tokenizer)
    pool = RolloutPool(config.engine, config.rewards, config.pool)
    try:
        start = time.perf_counter()
        samples = [s for group in pool.generate(groups, config.sampling) for s in group]
        summary = summarize(samples, time.perf_counter() - start)
    finally:
        pool.shutdown()
    write_jsonl(samples, out / "samples.jsonl")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'samples.jsonl'} and {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()

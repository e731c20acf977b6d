"""Generate chat answers with vLLM on a named or local model: the quickest end-to-end check.

    vllm-soft generate                        # default model, built-in prompts
    vllm-soft generate --soft-thinking        # the same prompts, every answer decoded soft
    vllm-soft generate --model tiny --prompt "What is 2 + 3?" --max-tokens 32
"""

import argparse
import time

from vllm_soft.models import DEFAULT_MODEL, resolve_model
from vllm_soft.trace import soft_summary

DEMO_PROMPTS = [
    "What is 7 + 5?",
    "What is 9 - 4? Answer with a number.",
    "Name the capital of France.",
    "Write a haiku about the sea.",
    "Explain in one sentence what a prime number is.",
    "List three colours of the rainbow.",
    "What is 3 * 6?",
    "Give a synonym for 'happy'.",
]


def add_generate_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``vllm-soft generate``."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a named model (vllm-soft fetch) or a local folder")
    parser.add_argument("--prompt", action="append", help="a user message; repeat for several (default: built-in set)")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per answer")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--dtype", default="auto", help="bfloat16, float32, or auto: bf16 on CUDA or CPUs with bf16 units, else float32")
    parser.add_argument("--max-model-len", type=int, default=2048, help="context length of the engine")
    parser.add_argument(
        "--soft-thinking", action="store_true", help="decode every answer with soft thinking (built-in knobs)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="let vLLM torch.compile the model (on CPU: ~1.5 min more start-up)"
    )


def run_generate(args: argparse.Namespace) -> None:
    """Start one engine, answer every prompt in one batch, print answers and throughput."""
    from vllm_soft.runtime import configure_cpu_threads, resolve_dtype

    configure_cpu_threads()
    from vllm import LLM, SamplingParams

    prompts = args.prompt or DEMO_PROMPTS
    model_path = resolve_model(args.model)
    start = time.perf_counter()
    llm = LLM(
        model=model_path,
        dtype=resolve_dtype(args.dtype),
        max_model_len=args.max_model_len,
        enforce_eager=not args.compile,
        gpu_memory_utilization=0.3,
        seed=0,
        **({"additional_config": {"soft_thinking": {}}} if args.soft_thinking else {}),
    )
    startup_s = time.perf_counter() - start
    extra_args = {"soft_thinking": {}} if args.soft_thinking else None
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, extra_args=extra_args)
    start = time.perf_counter()
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    generate_s = time.perf_counter() - start
    new_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        soft = ""
        if args.soft_thinking:
            summary = soft_summary(completion)
            soft = f"  [soft steps: {summary['num_soft_steps']}, thinking ended by: {summary['end_reason']}]"
        print(f"\n>>> {prompt}{soft}\n{completion.text.strip()}")
    print(
        f"\n[vllm-soft] {args.model}{' (soft thinking)' if args.soft_thinking else ''}: engine start {startup_s:.1f} s; {len(prompts)} prompts, "
        f"{new_tokens} new tokens in {generate_s:.1f} s ({new_tokens / generate_s:.1f} tokens/s)"
    )

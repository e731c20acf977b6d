"""scripts/check_vllm_builds.py against the installed vLLM's source (no network, no engine).

The installed CPU build has the same Python source as the CUDA wheel of its version, so every
target and named check must pass here; deliberately wrong expectations must be reported.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from vllm_soft.patches.targets import PATCH_TARGETS, RELIED_ON, Target

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_vllm_builds.py"


def _load_checker():
    """Import the script as a module (registered so its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location("check_vllm_builds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


@pytest.fixture(scope="module")
def vllm_dir() -> Path:
    """The installed vLLM package directory, found without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin, "vLLM is not installed"
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def results(vllm_dir):
    return checker.check_source_tree(vllm_dir)


def test_every_target_passes_on_installed_vllm(results):
    targets = results[: len(PATCH_TARGETS) + len(RELIED_ON)]
    assert [r.label for r in targets] == [checker.target_label(t) for t in (*PATCH_TARGETS, *RELIED_ON)]
    failures = [(r.label, r.status) for r in targets if not r.ok]
    assert failures == []


def test_every_extra_check_passes_on_installed_vllm(results):
    extras = results[len(PATCH_TARGETS) + len(RELIED_ON):]
    assert [r.label for r in extras] == [c.name for c in checker.EXTRA_CHECKS]
    failures = [(r.label, r.status) for r in extras if not r.ok]
    assert failures == []


def test_wrong_expectations_are_reported(vllm_dir):
    tree = checker.SourceTree(vllm_dir)
    runner = "vllm.v1.worker.gpu_model_runner"
    wrong_param = Target(runner, "GPUModelRunner", "_sample", "method", ("self", "logits", "metadata"))
    status = checker.check_target(tree, wrong_param)
    assert status.startswith("SIGNATURE (actual: (self, logits, spec_decode_metadata")
    cases = [
        Target(runner, "GPUModelRunner", "_no_such_method", "method", ("self",)),
        Target(runner, "GPUModelRunner", "no_such_attribute", "instance_attribute"),
        Target("vllm.engine.arg_utils", "EngineArgs", "no_such_field", "field"),
        Target(runner, "NoSuchRunner", "__init__", "method", ("self",)),
        Target("vllm.no_such_module", None, "f", "function", ("x",)),
        Target("vllm.envs", None, "VLLM_NO_SUCH_VARIABLE", "env"),
    ]
    for target in cases:
        assert checker.check_target(tree, target).startswith("MISSING"), target
    as_method = Target("vllm.config.vllm", "VllmConfig", "use_v2_model_runner", "method", ("self",))
    assert checker.check_target(tree, as_method).startswith("KIND")


def test_table_has_a_row_per_check(results):
    table = checker.render(["x"], {"x": results})
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| t")
            and not line.startswith("| check |")]
    assert len(rows) == len(results)

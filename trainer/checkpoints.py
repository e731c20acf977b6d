"""Checkpoint folders of a run: written under a temporary name, renamed when complete.

    RUN_DIR/checkpoints/step_000004/      complete: has COMPLETE, loadable
    RUN_DIR/checkpoints/step_000006.partial/   being written (or a crash left it): ignored
        model/      Hugging Face folder (servable: vllm serve .../model --soft-thinking)
        dcp/        sharded model + optimiser state (torch.distributed.checkpoint)
        rng_rank*.pt, trainer_state.json (step, data position)
"""

import json
import shutil
from pathlib import Path

MARKER = "COMPLETE"
PARTIAL = ".partial"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def partial_folder(run_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (an old leftover is removed)."""
    folder = checkpoint_root(run_dir) / f"step_{step:06d}{PARTIAL}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def complete(folder: Path, state: dict, keep: int) -> Path:
    """Write the loop state and the marker, rename to the final name, keep the newest ``keep``."""
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    (folder / MARKER).write_text("")
    final = folder.with_name(folder.name.removesuffix(PARTIAL))
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    for old in complete_checkpoints(folder.parent)[:-keep]:
        shutil.rmtree(old)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL) and (p / MARKER).exists())


def latest(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(checkpoint_root(run_dir))
    return found[-1] if found else None


def load_state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())

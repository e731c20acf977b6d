"""Check vllm-soft's hold on vLLM against the Python source of the CUDA vLLM wheels.

Every attribute the plugin patches or relies on (``vllm_soft/patches/targets.py``) is looked
up by parsing the wheel's source with ``ast`` (CUDA builds cannot be imported here), and its
parameter names are compared with the expected ones. A few named checks also confirm the
runner-selection code the plugin depends on (V1 runner built when ``use_v2_model_runner`` is
False, async scheduling defaulted on only when unset, ``Sampler.forward`` calling ``sample``).

Run it before widening the supported vLLM range (it is not part of CI)::

    python scripts/check_vllm_builds.py                        # downloads 0.32.0 and 0.33.0
    python scripts/check_vllm_builds.py --versions 0.33.0 --keep
    python scripts/check_vllm_builds.py --wheel-dir DIR        # offline: DIR/<version>/vllm

Prints a Markdown table (one column per version) and NOTE lines; exits 1 if any check fails.
"""

import argparse
import ast
import contextlib
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vllm_soft.patches.targets import PATCH_TARGETS, RELIED_ON, Target  # noqa: E402

DEFAULT_VERSIONS = ("0.32.0", "0.33.0")
MAX_BASE_DEPTH = 4
OK = "ok"


@dataclass
class Result:
    """Outcome of one check on one source tree: ``status`` is ``ok`` or what went wrong."""

    label: str
    kind: str
    patch: str
    status: str
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the check passed."""
        return self.status == OK


class SourceTree:
    """The ``vllm`` package directory of one build; parses modules on demand (cached)."""

    def __init__(self, vllm_dir: Path):
        self.vllm_dir = Path(vllm_dir)
        self._cache: dict[str, ast.Module | None] = {}

    def module(self, dotted: str) -> ast.Module | None:
        """Parsed ``vllm.b.c`` (``vllm/b/c.py`` or ``c/__init__.py``), None if absent or not vLLM's."""
        if dotted not in self._cache:
            parts = dotted.split(".")
            rel = self.vllm_dir.joinpath(*parts[1:])
            candidates = (rel.with_suffix(".py"), rel / "__init__.py") if parts[0] == "vllm" else ()
            tree = None
            for path in candidates:
                if path.is_file():
                    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
                    break
            self._cache[dotted] = tree
        return self._cache[dotted]

    def find_class(self, dotted: str, name: str) -> list[tuple[str, ast.ClassDef]]:
        """The class and its bases (same module or ``from X import Y``), nearest first."""
        found: list[tuple[str, ast.ClassDef]] = []
        todo = [(dotted, name, 0)]
        while todo:
            mod_name, cls_name, depth = todo.pop(0)
            tree = self.module(mod_name)
            cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name),
                       None) if tree else None
            if cls is None:
                continue
            found.append((mod_name, cls))
            if depth >= MAX_BASE_DEPTH:
                continue
            imports = imported_names(tree)
            for base in cls.bases:
                if isinstance(base, ast.Name):
                    src_mod = imports.get(base.id, (mod_name, base.id))
                    todo.append((src_mod[0], src_mod[1], depth + 1))
        return found


def imported_names(node: ast.AST) -> dict[str, tuple[str, str]]:
    """Local name -> (module, name) for every absolute ``from X import Y`` under ``node``."""
    names: dict[str, tuple[str, str]] = {}
    for imp in ast.walk(node):
        if isinstance(imp, ast.ImportFrom) and imp.module and imp.level == 0:
            for alias in imp.names:
                names.setdefault(alias.asname or alias.name, (imp.module, alias.name))
    return names


def signature_of(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[list[str], str]:
    """(names of posonly+args+kwonly in order, readable signature)."""
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    shown = [p.arg for p in (*a.posonlyargs, *a.args)]
    if a.vararg:
        shown.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        shown.append("*")
    shown += [p.arg for p in a.kwonlyargs]
    if a.kwarg:
        shown.append("**" + a.kwarg.arg)
    return names, f"({', '.join(shown)})"


def is_self_attr(node: ast.AST, attr: str) -> bool:
    """True for the expression ``self.<attr>``."""
    return (isinstance(node, ast.Attribute) and node.attr == attr
            and isinstance(node.value, ast.Name) and node.value.id == "self")


def find_def(body: list[ast.stmt], name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The last (Async)FunctionDef called ``name`` in a body (later defs win, as at runtime)."""
    defs = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    return defs[-1] if defs else None


def is_property(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """True when the def is decorated with ``@property``."""
    return any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)


def env_keys(tree: SourceTree) -> set[str]:
    """String keys of the ``environment_variables`` dict literal in ``vllm/envs.py``."""
    envs = tree.module("vllm.envs")
    for node in envs.body if envs else ():
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(getattr(x, "id", None) == "environment_variables" for x in targets) \
                and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return set()


def assigns_self_attr(body: list[ast.stmt], attr: str) -> bool:
    """Does any statement under ``body`` assign ``self.<attr>`` (plain, annotated or augmented)?"""
    for node in (sub for stmt in body for sub in ast.walk(stmt)):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            continue
        if any(is_self_attr(sub, attr) for target in targets for sub in ast.walk(target)):
            return True
    return False


def check_target(tree: SourceTree, t: Target) -> str:
    """``ok``, ``MISSING ...``, ``KIND ...`` or ``SIGNATURE (actual: ...)`` for one Target."""
    if t.kind == "env":
        return OK if t.attribute in env_keys(tree) else "MISSING (not a key of environment_variables)"
    if t.owner is None:
        mod = tree.module(t.module)
        if mod is None:
            return f"MISSING (no module {t.module})"
        bodies = [mod.body]
    else:
        classes = tree.find_class(t.module, t.owner)
        if not classes:
            return f"MISSING (no class {t.owner} in {t.module})"
        bodies = [cls.body for _, cls in classes]  # the class first, then its bases
    for body in bodies:
        if t.kind == "field":
            if any(isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == t.attribute
                   for n in body):
                return OK
        elif t.kind == "instance_attribute":
            if assigns_self_attr(body, t.attribute):
                return OK
        elif (fn := find_def(body, t.attribute)) is not None:
            if (t.kind == "property") != is_property(fn):
                return f"KIND (expected {t.kind}, found {'property' if is_property(fn) else 'plain def'})"
            names, shown = signature_of(fn)
            return OK if names[: len(t.params)] == list(t.params) else f"SIGNATURE (actual: {shown})"
    return "MISSING"


# --- named checks of the runner-selection code ---------------------------------------------

Outcome = tuple[str, list[str]]


def _class(tree: SourceTree, module: str, name: str) -> ast.ClassDef:
    """Top-level class ``name`` of ``module``; LookupError (reported as MISSING) if absent."""
    classes = tree.find_class(module, name)
    if not classes or classes[0][0] != module:
        raise LookupError(f"no class {name} in {module}")
    return classes[0][1]


def _builds_outside_v2_branch(tree: SourceTree, module: str, cls: ast.ClassDef, runner_mod: str,
                              runner: str) -> bool:
    """Does ``cls`` call ``runner`` (imported from ``runner_mod``, in the module or the class)
    anywhere except inside the body of an ``if self.use_v2_model_runner:``?"""
    imports = {**imported_names(tree.module(module)), **imported_names(cls)}
    aliases = {local for local, src in imports.items() if src == (runner_mod, runner)}
    in_v2 = {id(sub) for node in ast.walk(cls)
             if isinstance(node, ast.If) and is_self_attr(node.test, "use_v2_model_runner")
             for stmt in node.body for sub in ast.walk(stmt)}
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in aliases
               and id(n) not in in_v2 for n in ast.walk(cls))


def check_v2_property_reads_env(tree: SourceTree) -> Outcome:
    """VllmConfig.use_v2_model_runner is a property reading envs.VLLM_USE_V2_MODEL_RUNNER."""
    fn = find_def(_class(tree, "vllm.config.vllm", "VllmConfig").body, "use_v2_model_runner")
    if fn is None or not is_property(fn):
        return "MISSING (no property use_v2_model_runner)", []
    reads = any(isinstance(n, ast.Attribute) and n.attr == "VLLM_USE_V2_MODEL_RUNNER"
                and getattr(n.value, "id", None) == "envs" for n in ast.walk(fn))
    return (OK if reads else "CHANGED (does not read envs.VLLM_USE_V2_MODEL_RUNNER)"), []


def check_gpu_worker_selects_v1(tree: SourceTree) -> Outcome:
    """Worker reads the config's use_v2_model_runner and otherwise builds the V1 GPUModelRunner."""
    mod = "vllm.v1.worker.gpu_worker"
    cls = _class(tree, mod, "Worker")
    if not any(isinstance(n, ast.Attribute) and n.attr == "use_v2_model_runner"
               and not (isinstance(n.value, ast.Name) and n.value.id == "self") for n in ast.walk(cls)):
        return "CHANGED (never reads <config>.use_v2_model_runner)", []
    if not _builds_outside_v2_branch(tree, mod, cls, "vllm.v1.worker.gpu_model_runner", "GPUModelRunner"):
        return "CHANGED (no V1 GPUModelRunner(...) outside the V2 branch)", []
    return OK, []


def check_cpu_runner_is_v1_subclass(tree: SourceTree) -> Outcome:
    """CPUWorker(Worker) builds CPUModelRunner when not V2, and CPUModelRunner(GPUModelRunner)."""
    mod = "vllm.v1.worker.cpu_worker"
    cls = _class(tree, mod, "CPUWorker")
    if "Worker" not in [getattr(b, "id", None) for b in cls.bases]:
        return "CHANGED (CPUWorker does not subclass Worker)", []
    if not _builds_outside_v2_branch(tree, mod, cls, "vllm.v1.worker.cpu_model_runner", "CPUModelRunner"):
        return "CHANGED (no CPUModelRunner(...) outside the V2 branch)", []
    runner = _class(tree, "vllm.v1.worker.cpu_model_runner", "CPUModelRunner")
    if "GPUModelRunner" not in [getattr(b, "id", None) for b in runner.bases]:
        return "CHANGED (CPUModelRunner does not subclass GPUModelRunner)", []
    return OK, []


def check_async_default_only_when_unset(tree: SourceTree) -> Outcome:
    """VllmConfig sets scheduler_config.async_scheduling = True only under ``... is None``."""
    cls = _class(tree, "vllm.config.vllm", "VllmConfig")
    under_none = {id(sub) for node in ast.walk(cls) if isinstance(node, ast.If)
                  and isinstance(node.test, ast.Compare) and isinstance(node.test.ops[0], ast.Is)
                  and getattr(node.test.left, "attr", None) == "async_scheduling"
                  and getattr(node.test.comparators[0], "value", 0) is None
                  for stmt in node.body for sub in ast.walk(stmt)}
    sets_true = [n for n in ast.walk(cls) if isinstance(n, ast.Assign)
                 and any(ast.unparse(t) == "self.scheduler_config.async_scheduling" for t in n.targets)
                 and getattr(n.value, "value", None) is True]
    if not sets_true:
        return "CHANGED (never sets async_scheduling = True)", []
    outside = [n.lineno for n in sets_true if id(n) not in under_none]
    return (f"CHANGED (set True outside an 'is None' branch, line {outside})" if outside else OK), []


def check_sampler_forward_calls_sample(tree: SourceTree) -> Outcome:
    """Sampler.forward calls self.sample(...); earlier returns are reported as notes."""
    fn = find_def(_class(tree, "vllm.v1.sample.sampler", "Sampler").body, "forward")
    if fn is None:
        return "MISSING (no Sampler.forward)", []
    calls = [n.lineno for n in ast.walk(fn) if isinstance(n, ast.Call) and is_self_attr(n.func, "sample")]
    if not calls:
        return "CHANGED (forward never calls self.sample)", []
    parents = {id(child): node for node in ast.walk(fn) for child in ast.iter_child_nodes(node)}
    notes = []
    for ret in (n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.lineno < min(calls)):
        guard = parents.get(id(ret))
        while guard is not None and not isinstance(guard, ast.If):
            guard = parents.get(id(guard))
        where = f" under `if {ast.unparse(guard.test)}`" if guard is not None else ""
        notes.append(f"Sampler.forward line {ret.lineno} returns before self.sample{where}: "
                     "the soft step does not run on that path (patches/model_runner.sampler_bypass must "
                     "refuse it at start; it knows mixed_sample_eligible)")
    return OK, notes


@dataclass(frozen=True)
class ExtraCheck:
    """A named check over the parsed sources."""

    name: str
    description: str
    run: Callable[[SourceTree], Outcome]


EXTRA_CHECKS = (
    ExtraCheck("v2_property_reads_env", "VllmConfig.use_v2_model_runner reads envs.VLLM_USE_V2_MODEL_RUNNER",
               check_v2_property_reads_env),
    ExtraCheck("gpu_worker_selects_v1", "Worker builds V1 GPUModelRunner when the property is False",
               check_gpu_worker_selects_v1),
    ExtraCheck("cpu_runner_is_v1_subclass", "CPUWorker builds CPUModelRunner(GPUModelRunner) when not V2",
               check_cpu_runner_is_v1_subclass),
    ExtraCheck("async_default_only_when_unset",
               "async_scheduling = True only under `async_scheduling is None`",
               check_async_default_only_when_unset),
    ExtraCheck("sampler_forward_calls_sample", "Sampler.forward calls self.sample(...)",
               check_sampler_forward_calls_sample),
)


def target_label(t: Target) -> str:
    """Row label: ``Owner.attr`` or ``module_tail.attr``."""
    return f"{t.owner or t.module.rsplit('.', 1)[-1]}.{t.attribute}"


def check_source_tree(vllm_dir: Path) -> list[Result]:
    """Run every target check and extra check against one ``vllm`` package directory."""
    tree = SourceTree(vllm_dir)
    results = [Result(target_label(t), t.kind, t.patch or "(relied on)", check_target(tree, t))
               for t in (*PATCH_TARGETS, *RELIED_ON)]
    for check in EXTRA_CHECKS:
        try:
            status, notes = check.run(tree)
        except LookupError as exc:
            status, notes = f"MISSING ({exc})", []
        results.append(Result(check.name, "check", check.description, status, notes))
    return results


def download_sources(version: str, workdir: Path) -> Path:
    """``pip download`` the vLLM wheel into ``workdir`` and extract only ``vllm/**/*.py``."""
    dest = workdir / version
    start = time.monotonic()
    print(f"downloading vllm=={version} ...", flush=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:"]
    subprocess.run([*pip, f"vllm=={version}", "--dest", str(dest / "wheel")], check=True,
                   stdout=subprocess.DEVNULL)
    wheel = next((dest / "wheel").glob("vllm-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith("vllm/") and m.endswith(".py")]
        zf.extractall(dest / "src", members)
    wheel.unlink()
    print(f"  {wheel.name}: {len(members)} .py files, {time.monotonic() - start:.0f} s", flush=True)
    return dest / "src" / "vllm"


def render(versions: list[str], by_version: dict[str, list[Result]]) -> str:
    """Markdown tables (targets, then extra checks) followed by NOTE lines."""
    first = by_version[versions[0]]
    cols = " | ".join(versions)
    lines = [f"| target | kind | patch | {cols} |", "|---|---|---|" + "---|" * len(versions)]
    extra_start = len(first) - len(EXTRA_CHECKS)
    for i, row in enumerate(first[:extra_start]):
        cells = " | ".join(by_version[v][i].status for v in versions)
        lines.append(f"| {row.label} | {row.kind} | {row.patch} | {cells} |")
    lines += ["", f"| check | what | {cols} |", "|---|---|" + "---|" * len(versions)]
    for i, row in enumerate(first[extra_start:], start=extra_start):
        cells = " | ".join(by_version[v][i].status for v in versions)
        lines.append(f"| {row.label} | {row.patch} | {cells} |")
    notes = [f"NOTE {v}: {n}" for v in versions for r in by_version[v] for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> int:
    """Parse arguments, gather each version's sources, print the table; 0 if all pass."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="+", default=list(DEFAULT_VERSIONS))
    parser.add_argument("--wheel-dir", type=Path, help="use unpacked sources at DIR/<version>/vllm")
    parser.add_argument("--keep", action="store_true", help="keep the downloaded sources")
    args = parser.parse_args()
    by_version: dict[str, list[Result]] = {}
    with contextlib.ExitStack() as cleanup:
        if args.wheel_dir:
            workdir = None
        elif args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="check_vllm_builds_"))
            print(f"sources kept in {workdir}")
        else:  # removed on leaving the block, also on errors
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="check_vllm_builds_")))
        for version in args.versions:
            if workdir is None:
                vllm_dir = args.wheel_dir / version / "vllm"
                if not vllm_dir.is_dir():
                    parser.error(f"no sources at {vllm_dir}")
            else:
                vllm_dir = download_sources(version, workdir)
            by_version[version] = check_source_tree(vllm_dir)
    print(render(args.versions, by_version))
    return 0 if all(r.ok for results in by_version.values() for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The package reads bottom-up: no import cycle between utils modules, no two packages that
import each other, and every module of the checkpoint layer imports on its own in a fresh
interpreter (one forked, per module, from a new interpreter holding torch and no utils module)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "utils"
# The bottom layer's modules the checkpoint layer stands on (they import no engine module).
BOTTOM = ["utils.checkpoint_errors", "utils.reading"]
# The checkpoint layer bottom-up (CLAUDE.md explains each), then training on top of it.
ENGINE_ORDER = ["distributed", "rng", "checkpoint", "runs", "listing",
                "recovery", "writer", "storage",
                "loading", "evaluation", "compare", "optim", "precision", "throughput",
                "compiling", "device_loop", "out_of_memory", "loggers", "samples", "session",
                "trainer"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """utils modules `path` imports anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from utils.a import b` imports the module utils.a.b when there is one
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    found.discard(module_name(path))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_utils_modules():
    modules = all_modules()
    graph = {name: imported_modules(path, modules) for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_engine_modules_import_only_from_below():
    """checkpoint format -> runs -> recovery -> writer -> loading -> trainer: each module
    imports only modules before it in ENGINE_ORDER."""
    modules = all_modules()
    rank = {f"utils.training.engine.{name}": i for i, name in enumerate(ENGINE_ORDER)}
    assert set(rank) == {name for name in modules
                         if name.startswith("utils.training.engine.")}, "update ENGINE_ORDER"
    for name, position in rank.items():
        for target in imported_modules(modules[name], modules):
            if target in rank:
                assert rank[target] < position, f"{name} imports {target}, which is above it"


# A fresh interpreter that imports torch (and with it numpy), the third-party libraries the
# engine stands on, and no utils module; then, per module, a forked child imports that one
# module and exits. Each child starts with no utils module loaded, as a new interpreter
# would, without paying torch's import (over a second of CPU) once per module.
FORK_PER_MODULE = """
import importlib, json, os, sys, traceback
import torch  # noqa: F401  (the same `import torch` each module would run first)
loaded = sorted(m for m in sys.modules if m == "utils" or m.startswith("utils."))
assert not loaded, loaded
failures = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            os.write(write, traceback.format_exc()[-2000:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failures[name] = output or f"exit status {status}"
print(json.dumps(failures))
"""


def test_each_engine_module_imports_alone_in_a_fresh_interpreter():
    names = BOTTOM + [f"utils.training.engine.{name}" for name in ENGINE_ORDER]
    result = subprocess.run([sys.executable, "-c", FORK_PER_MODULE, *names], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.splitlines()[-1])
    assert not failures, failures


def test_the_fresh_interpreter_check_finds_modules_that_fail_alone(tmp_path):
    """The forked check reports a module caught in an import cycle and a module that only
    works after another was imported (each child starts without the modules its siblings
    imported), and not a module that imports fine."""
    package = tmp_path / "utils_probe"
    package.mkdir()
    files = {"__init__.py": "",
             "good.py": "import torch\nVALUE = 1\n",
             "cycle_a.py": "from utils_probe.cycle_b import B\nA = 1\n",
             "cycle_b.py": "from utils_probe.cycle_a import A\nB = 2\n",
             "leans_on_good.py": "import utils_probe\nX = utils_probe.good.VALUE\n"}
    for name, text in files.items():
        (package / name).write_text(text)
    names = ["utils_probe.good", "utils_probe.leans_on_good", "utils_probe.cycle_a"]
    result = subprocess.run([sys.executable, "-c", FORK_PER_MODULE, *names], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.splitlines()[-1])
    assert sorted(failures) == ["utils_probe.cycle_a", "utils_probe.leans_on_good"], failures
    assert "ImportError" in failures["utils_probe.cycle_a"]
    assert "AttributeError" in failures["utils_probe.leans_on_good"]


def package_of(module: str) -> str:
    """The package a module belongs to: `utils.data.load` -> "data", the checkpoint layer
    `utils.training.engine.x` -> "training.engine", a top-level module `utils.plots` -> "plots"."""
    parts = module.split(".")[1:] or ["utils"]
    if parts[:2] == ["training", "engine"]:
        return "training.engine"
    return parts[0]


def package_graph() -> dict[str, set[str]]:
    """Which packages import which: an import between modules of two packages is an arrow."""
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target in imported_modules(path, modules):
            if package_of(name) != package_of(target):
                graph.setdefault(package_of(name), set()).add(package_of(target))
    return graph


def test_packages_import_each_other_in_one_direction_only():
    """No arrow runs back up: the errors and readers every layer uses live at the bottom
    (`utils.checkpoint_errors`, `utils.reading`), not in the engine that imports the data
    and weights formats."""
    cycle = find_cycle(package_graph())
    assert cycle is None, "packages import each other: " + " -> ".join(cycle)


def test_the_bottom_modules_import_no_package_above_them():
    modules = all_modules()
    for name in BOTTOM:
        assert imported_modules(modules[name], modules) <= set(BOTTOM), name

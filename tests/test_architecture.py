"""The floors of ARCHITECTURE.md, enforced on the imports of the code (a small AST check).

Every module of ``cnas_hpc`` belongs to one package; each package sits on a floor and may import
only the packages listed for it below (its own floor's allowed neighbours and the floors beneath).
Also checked: no project import hides inside a function (a way to dodge an import cycle), and the
module-level import graph has no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "cnas_hpc"

GROUND = {"common", "config"}
CORE = {"space", "models", "data", "ssl", "distributed", "train"}
APPS = {"search", "evaluate", "fidelity"}

#: package -> the project packages it may import (besides itself). Mirrors ARCHITECTURE.md.
ALLOWED: dict[str, set[str]] = {
    # floor 0: the ground floor imports nothing of the project (config only its pure helpers)
    "common": set(),
    "config": {"common"},
    # floor 1: the core, unaware of the apps; inside it, arrows follow this order
    "space": GROUND,
    "models": GROUND | {"space"},
    "data": GROUND,
    "distributed": GROUND,
    "ssl": GROUND | {"distributed"},
    "train": GROUND | {"space", "models", "data", "distributed", "ssl"},
    # floor 2: the shared study (Optuna storage, claims, retries, heartbeats)
    "study": GROUND | CORE,
    # floor 3: the apps, side by side: none imports another
    "search": GROUND | CORE | {"study"},
    "evaluate": GROUND | CORE | {"study"},
    "fidelity": GROUND | CORE | {"study"},
    # floor 4: trackers, adapters of the apps' observer protocols
    "tracking": GROUND | CORE | {"study"} | APPS,
    # floor 5: study analysis (report, plots, cell drawings, the W&B study view)
    "analysis": GROUND | CORE | {"study", "tracking"} | APPS,
    # floor 6: the command line composes everything
    "cli": GROUND | CORE | {"study", "tracking", "analysis"} | APPS,
    # above the house: `python -m cnas_hpc` dispatches to the commands; the configs are YAML
    "__main__": {"cli"},
    "configs": set(),
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cnas_hpc" else None


def _imports(tree: ast.Module) -> Iterator[tuple[str, ast.AST, bool]]:
    """``(imported module, node, at module level)`` for every project import."""
    top_level = set()
    for statement in tree.body:
        top_level.add(id(statement))
        if isinstance(statement, ast.If):  # `if TYPE_CHECKING:` blocks count as module level
            top_level.update(id(child) for child in statement.body)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("cnas_hpc"):
                yield name, node, id(node) in top_level


def _graph() -> dict[str, set[str]]:
    modules = dict(_modules())
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = {
            name for name, _, top in _imports(tree) if top and name in modules and name != module
        }
    return graph


def test_every_package_has_a_floor() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert all((PACKAGE / name / "__init__.py").exists() for name in packages)
    assert packages <= set(ALLOWED), f"put these on a floor: {sorted(packages - set(ALLOWED))}"


def test_arrows_only_point_down() -> None:
    offenders = []
    for module, path in _modules():
        own = _package(module)
        if own is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, node, _ in _imports(tree):
            other = _package(name)
            if other is not None and other != own and other not in ALLOWED[own]:
                offenders.append(f"{module}:{getattr(node, 'lineno', '?')} imports {name}")
    assert not offenders, "imports against the floors (ARCHITECTURE.md):\n" + "\n".join(offenders)


def test_no_project_import_inside_a_function() -> None:
    offenders = []
    for module, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, node, top in _imports(tree):
            if not top:
                offenders.append(f"{module}:{getattr(node, 'lineno', '?')} imports {name}")
    assert not offenders, "move these imports to the top of the module:\n" + "\n".join(offenders)


def test_the_module_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                cycle = [*path[path.index(child) :], child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_worker_knows_trackers_only_through_its_protocol() -> None:
    graph = _graph()
    worker_side = [m for m in graph if _package(m) == "search"]
    assert worker_side
    for module in worker_side:
        reached = {_package(name) for name in graph[module]}
        assert not reached & {"tracking", "analysis", "cli"}, module


#: The claim's internals: the search reaches them only through ``study.claim``.
CLAIM_INTERNALS = {f"cnas_hpc.study.{name}" for name in ("budget", "stale", "proposal", "sampler")}


def test_the_search_claims_only_through_study_claim() -> None:
    graph = _graph()
    assert "cnas_hpc.study.claim" in graph["cnas_hpc.search.owner"]
    for module in (m for m in graph if _package(m) == "search"):
        assert not graph[module] & CLAIM_INTERNALS, module


@pytest.mark.parametrize("folder", ["train", "search"])
def test_no_function_over_80_lines(folder: str) -> None:
    long = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_tests_mirror_the_packages() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    # Tests of the real cluster path and of the entry points cut across the packages.
    cross_cutting = {"architecture", "cluster", "faults", "secrets", "slurm", "validation"}
    cross_cutting |= {"launch", "benchmarks"}
    strays = [
        path.name
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        if path.stem.split("_")[1] not in packages | cross_cutting
    ]
    assert not strays, f"name tests test_<package>_<module>.py: {strays}"


#: Libraries only a picture or a ranking needs, each ~0.4-0.5 s of a process start on the CI
#: machine: the commands and every worker they start must not pay for them (analysis imports
#: them inside the functions that draw or rank).
DRAWING_AND_STATISTICS = ("matplotlib", "scipy")


def test_starting_a_command_imports_no_drawing_or_statistics_library() -> None:
    commands = ", ".join(f"cnas_hpc.cli.{name}" for name in ("search", "evaluate", "fidelity"))
    probe = f"import sys, {commands}; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    loaded = {name.split(".")[0] for name in ast.literal_eval(out.strip())}
    assert "torch" in loaded  # the probe imported the commands for real
    assert not loaded & set(DRAWING_AND_STATISTICS), sorted(loaded & set(DRAWING_AND_STATISTICS))

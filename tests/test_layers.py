"""The import layers, enforced on the source (every import, at module level or inside a function).

    cli, api, testing  ->  commands (check, training, bench, doctor, image, deploy)
        ->  research loop  ->  planning, sandbox, registry, evaluation services
            ->  evaluator, sandbox_image

Imports point down only: nothing in ``evaluator/`` or ``sandbox_image/`` imports the
orchestrator; ``sandbox_image/`` uses only the evaluator modules the sandbox image
ships; no module below the commands imports a command; and no two orchestrator
modules import each other, however indirectly.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "evaluator", "sandbox_image")

#: The command layer: what only entry points may import.
COMMANDS = frozenset({
    "orchestrator.cli", "orchestrator.check", "orchestrator.training", "orchestrator.bench",
    "orchestrator.doctor", "orchestrator.image", "orchestrator.deploy",
})
#: Entry points above or beside the commands (the package itself may re-export the API).
ENTRY_POINTS = frozenset({"orchestrator", "orchestrator.__main__", "orchestrator.api", "orchestrator.testing"})


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` loads (a package's ``__init__`` for a name inside it), else None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(project module, line) for every import in ``path``, wherever it stands."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                yield target, node.lineno


GRAPH = {module: sorted(set(_imported(module, path))) for module, path in MODULES.items()}


def _violations(modules, forbidden) -> list[str]:
    return [f"{MODULES[m].relative_to(ROOT)}:{line} imports {target}"
            for m in modules for target, line in GRAPH[m] if forbidden(target)]


def test_the_graph_sees_the_project() -> None:
    assert {"orchestrator.loop", "orchestrator.sandbox.runner", "evaluator.metrics", "sandbox_image.worker"} <= set(MODULES)
    assert "orchestrator.sandbox.runner" in {t for t, _ in GRAPH["orchestrator.loop"]}
    # load_prepared imports the evaluator inside the function: such imports count too
    assert "evaluator.datasets" in {t for t, _ in GRAPH["orchestrator.evaluation"]}


@pytest.mark.parametrize("package", ["evaluator", "sandbox_image"])
def test_the_trusted_libraries_import_nothing_of_the_orchestrator(package: str) -> None:
    inside = [m for m in MODULES if m.split(".")[0] == package]
    assert _violations(inside, lambda t: t.split(".")[0] == "orchestrator") == []


def test_sandbox_image_uses_only_the_evaluator_modules_the_image_ships() -> None:
    from orchestrator.sandbox.image import EXTRA_CONTEXT_FILES, HOST_ONLY_MODULES

    shipped = {_resolve(f.removesuffix(".py").replace("/", ".")) for f in EXTRA_CONTEXT_FILES if f.endswith(".py")}
    assert "evaluator.recipe" in shipped
    in_image = [m for m in MODULES if m.split(".")[0] == "sandbox_image"
                and str(MODULES[m].relative_to(ROOT)) not in HOST_ONLY_MODULES] + sorted(shipped)
    # What runs in the sandbox reaches only itself and the shipped evaluator modules.
    assert _violations(in_image, lambda t: t.split(".")[0] == "evaluator" and t not in shipped) == []


def test_nothing_below_the_commands_imports_a_command() -> None:
    below = [m for m in MODULES if m.startswith("orchestrator") and m not in COMMANDS | ENTRY_POINTS]
    assert _violations(below, lambda t: t in COMMANDS) == []


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over every import; each must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []

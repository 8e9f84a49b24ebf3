"""The allowed import directions between batcher's packages, checked over the AST.

The data flows one way: ``core`` at the bottom, ``cli`` at the top. A package may
import only the packages listed for it below (and itself). A cycle between two
modules fails even when both are in the same package. Only ``providers/``,
``sandbox/``, ``cli/sandbox.py`` and ``demo.py`` may import a concrete provider.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "batcher"

#: package (first dotted part under batcher) -> packages it may import
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "config": frozenset({"core"}),
    "transport": frozenset({"core", "__init__"}),
    "intake": frozenset({"core"}),
    "ledger": frozenset({"core"}),
    "providers": frozenset({"core", "config", "transport"}),
    "reporting": frozenset({"core", "intake", "ledger", "providers"}),
    "execute": frozenset({"core", "config", "intake", "ledger", "providers", "reporting"}),
    "services": frozenset(
        {"core", "config", "intake", "ledger", "providers", "reporting", "execute", "transport"}
    ),
    "cli": frozenset(
        {
            "core",
            "config",
            "intake",
            "ledger",
            "providers",
            "reporting",
            "execute",
            "services",
            "sandbox",
            "__init__",
        }
    ),
    "sandbox": frozenset({"core"}),
    "demo": frozenset({"sandbox", "core", "cli", "config"}),
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}

#: modules that may import a concrete provider client or sandbox
PROVIDER_NAMING = ("batcher.providers", "batcher.sandbox", "batcher.cli.sandbox", "batcher.demo")
CONCRETE_PROVIDERS = ("batcher.providers.ugiftme", "batcher.providers.gifq")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def imports_of(source: str, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every batcher module `source` imports, with its line, relative imports resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "batcher" or alias.name.startswith("batcher."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "batcher" or target.startswith("batcher."):
                # `from batcher.x import y` may name a submodule y
                for alias in node.names:
                    yield (
                        (f"{target}.{alias.name}", node.lineno)
                        if _is_module(f"{target}.{alias.name}")
                        else (target, node.lineno)
                    )


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def violations(module: str, imported: str) -> list[str]:
    found = []
    own, theirs = package_of(module), package_of(imported)
    if own != theirs and theirs not in ALLOWED.get(own, frozenset()):
        found.append(f"{module} imports {imported}: {own}/ may not import {theirs}/")
    if imported.startswith(CONCRETE_PROVIDERS) and not module.startswith(PROVIDER_NAMING):
        found.append(f"{module} imports {imported}: only providers/ may name a provider")
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    graph: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        graph[name] = list(imports_of(path.read_text(), name, path.name == "__init__.py"))
    return graph


def test_every_package_is_known() -> None:
    unknown = {package_of(m) for m in import_graph()} - set(ALLOWED)
    assert not unknown, f"add these packages to ALLOWED: {sorted(unknown)}"


def test_imports_point_down_the_flow() -> None:
    problems = [
        f"{problem} (line {line})"
        for module, targets in import_graph().items()
        for imported, line in targets
        for problem in violations(module, imported)
    ]
    assert not problems, "\n".join(problems)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets; a package's __init__ and its own modules excepted."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or _is_ancestor(nxt, node):
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)
    return cycles


def test_no_import_cycles() -> None:
    modules = import_graph_modules()
    graph = {m: {t for t, _ in targets if t in modules} for m, targets in import_graph().items()}
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def import_graph_modules() -> set[str]:
    return {module_name(p) for p in ROOT.rglob("*.py")}


# The five wrong-way imports an audit found: the checker must flag each one.
WRONG_WAY = [
    ("batcher.transport.http", "from batcher.providers.base import OutcomeUnknown"),
    ("batcher.providers.ugiftme", "from batcher.intake.read import BASE_REQUIRED"),
    ("batcher.reporting.failures", "from batcher.execute.runner import Runner"),
    ("batcher.reporting.reports", "from batcher.execute.run import run_batch"),
    ("batcher.execute.plan", "from batcher.providers.gifq import GifqProvider"),
    ("batcher.core.money", "from batcher.ledger.store import Ledger"),
]


@pytest.mark.parametrize(("module", "source"), WRONG_WAY)
def test_checker_flags_wrong_way_imports(module: str, source: str) -> None:
    problems = [
        p for imported, _ in imports_of(source, module, False) for p in violations(module, imported)
    ]
    assert problems, f"{source!r} in {module} should be refused"


def test_checker_flags_a_cycle_between_cli_commands() -> None:
    """cli/validate and cli/run once imported each other (one import inside a function)."""
    graph = {
        "batcher.cli.validate": {"batcher.cli.run", "batcher.cli.common"},
        "batcher.cli.run": {"batcher.cli.validate"},
        "batcher.cli.common": set(),
    }
    assert find_cycles(graph)


def test_state_groups_live_in_core() -> None:
    """Row and chunk state groups are defined once, in core/states.py, and imported from there."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        if name == "batcher.core.states":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets = [node.target]
            offenders += [
                f"{name}:{node.lineno} {t.id}" for t in targets if t.id.endswith("_STATES")
            ]
    assert not offenders, offenders


def test_transport_types_stay_inside_providers() -> None:
    """No raw httpx type is named outside transport/, providers/ and sandbox/."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        if name.startswith(("batcher.transport", "batcher.providers", "batcher.sandbox")):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                if any(n == "httpx" or n.startswith("httpx.") for n in names):
                    offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


#: the pipeline stages: none of them may branch on which provider it is talking to
PROVIDER_NEUTRAL = ("core", "intake", "ledger", "transport", "execute", "reporting", "services")
PROVIDER_NAMES = {"ugiftme", "gifq"}


def provider_name_constants(source: str) -> list[int]:
    """Lines where a string constant (not a docstring) is exactly a provider's name."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value.strip().lower() in PROVIDER_NAMES
    ]


def test_pipeline_stages_never_name_a_provider() -> None:
    """Provider names live in providers/, sandbox/, the connection profiles in config.py,
    and the CLI's option choices; the stages in between speak only the Provider protocol."""
    offenders = [
        f"{module_name(path)}:{line}"
        for path in sorted(ROOT.rglob("*.py"))
        if package_of(module_name(path)) in PROVIDER_NEUTRAL
        for line in provider_name_constants(path.read_text())
    ]
    assert not offenders, offenders


def test_the_provider_name_check_can_fail() -> None:
    assert provider_name_constants('def f(p):\n    """gifq"""\n    return p == "gifq"\n') == [3]

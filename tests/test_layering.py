"""The package's layering (docs/architecture.md), checked on every module's imports.

The core is formats -> kernels -> collectives -> tp (plus errors): a core module imports only its own
layer and the layers below, never the harness (bench), the CLI, the package root, gguf or
matplotlib; no two mxcomm modules import each other in a circle. Imports inside functions (lazy
imports) count like module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mxcomm"
CORE = ("errors", "formats", "kernels", "collectives", "tp")  # bottom to top
FORBIDDEN_THIRD_PARTY = ("gguf", "matplotlib")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement of ``module`` refers to (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str) -> str | None:
    """The mxcomm module a dotted name lives in (``mxcomm.formats.BlockFormat`` -> ``mxcomm.formats``)."""
    while name and name not in MODULES:
        if "." not in name:
            return None
        name = name.rpartition(".")[0]
    return name or None


def _edges() -> dict[str, set[str]]:
    edges = {}
    for module, path in MODULES.items():
        targets = {_resolve(n) for n in _imported_names(module, path)}
        edges[module] = {t for t in targets if t is not None and t != module}
    return edges


EDGES = _edges()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def layer_violations(module: str, edges: dict[str, set[str]]) -> list[str]:
    allowed = set(CORE[: CORE.index(_layer(module)) + 1]) | {"errors"}
    return sorted(t for t in edges[module] if _layer(t) not in allowed and not t.startswith(module + "."))


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package's __init__
    re-exporting its own submodules is not a cycle (Python resolves it)."""

    def deps(module: str) -> set[str]:
        return {t for t in edges[module] if module != "mxcomm" and not t.startswith(module + ".")}

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in deps(v):
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

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in CORE))
def test_core_module_imports_only_its_layer_and_below(module: str) -> None:
    bad = layer_violations(module, EDGES)
    assert not bad, f"{module} ({_layer(module)}) imports {bad}"
    third_party = sorted(
        n for n in _imported_names(module, MODULES[module]) if n.split(".")[0] in FORBIDDEN_THIRD_PARTY
    )
    assert not third_party, f"{module} imports {third_party}"


def test_no_import_cycles() -> None:
    assert not import_cycles(EDGES)


def test_the_checks_catch_what_they_forbid() -> None:
    # a lazy import inside a function is found like a module-level one
    names = _imported_names("mxcomm.kernels.api", MODULES["mxcomm.kernels.api"])
    assert "mxcomm.kernels.dispatch" in {_resolve(n) for n in names}
    # an upward import and a cycle, added to the real graph, are reported
    edges = {m: set(t) for m, t in EDGES.items()}
    edges["mxcomm.kernels.packed"].add("mxcomm.collectives.ops")
    assert layer_violations("mxcomm.kernels.packed", edges) == ["mxcomm.collectives.ops"]
    edges["mxcomm.formats.block"].add("mxcomm.formats.registry")
    edges["mxcomm.formats.registry"].add("mxcomm.formats.block")
    assert ["mxcomm.formats.block", "mxcomm.formats.registry"] in import_cycles(edges)
    edges["mxcomm.tp.style"].add("mxcomm.bench.launch")
    assert "mxcomm.bench.launch" in layer_violations("mxcomm.tp.style", edges)

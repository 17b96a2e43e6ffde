"""The package layout and the import rules between its layers (no exceptions list).

One namespace, ``tritonfleet``, mapped onto the repository's folders by pyproject.toml.
Layers, each importing only itself and what is below it:

    tritonfleet.builder.cli                  the command line (top)
    tritonfleet.examples.workdir             example specs -> built repositories
    tritonfleet.builder.lifecycle            work on built repositories: tune, promote, distil
    tritonfleet.builder.build                the build: steps over a typed state
    tritonfleet.builder.repository           plans, configs, writer, journal, manifest records
    tritonfleet.builder.stages               export, convert, quantize, check
    tritonfleet.builder.spec                 the one spec schema
    tritonfleet.builder.{errors,failpoints,steps}
    tritonfleet.clients.evaluation           accuracy, bench, report (above the clients)
    tritonfleet.clients                      server, infer, loadgen, perf, manifest view, errors (bottom)

and two leaves that import nothing of tritonfleet: ``tritonfleet.builder.runtime`` (copied
into every repository, runs inside tritonserver) and the example models and their training
(``tritonfleet.examples.digits`` / ``.detection``). The module graph has no cycles.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAPPING = PYPROJECT["tool"]["setuptools"]["package-dir"]

# top to bottom; a module belongs to the first (longest) prefix that matches
LAYERS = [
    "tritonfleet.builder.cli",
    "tritonfleet.examples.workdir",
    "tritonfleet.builder.lifecycle",
    "tritonfleet.builder.build",
    "tritonfleet.builder.repository",
    "tritonfleet.builder.stages",
    "tritonfleet.builder.spec",
    "tritonfleet.builder.base",  # errors, failpoints, steps (below)
    "tritonfleet.clients.evaluation",
    "tritonfleet.clients",
]
BUILDER_BASE = ("tritonfleet.builder.errors", "tritonfleet.builder.failpoints", "tritonfleet.builder.steps")
LEAVES = ("tritonfleet.builder.runtime", "tritonfleet.examples.digits", "tritonfleet.examples.detection",
          "tritonfleet.examples.conformance")
PACKAGE_ROOTS = ("tritonfleet.builder", "tritonfleet.examples")  # docstring-only __init__ files


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for package, folder in MAPPING.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            # a sub-folder mapped to a package of its own belongs to that mapping
            if not any(other != package and other.startswith(package + ".")
                       and path.is_relative_to(ROOT / MAPPING[other]) for other in MAPPING):
                found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """tritonfleet modules imported anywhere in a file (function bodies included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n == "tritonfleet" or n.startswith("tritonfleet.")}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module a dotted import refers to (``from pkg import name`` may name a module or
    an attribute)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def layer(module: str) -> int | None:
    if module.startswith(BUILDER_BASE) or module in PACKAGE_ROOTS:
        return LAYERS.index("tritonfleet.builder.base")
    matches = [i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + ".")]
    return max(matches, key=lambda i: len(LAYERS[i])) if matches else None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for imp in imports_of(path) if (m := resolve(imp, known)) and m != name}
            for name, path in known.items()}


def test_every_module_has_a_layer_or_is_a_leaf(graph):
    homeless = [m for m in graph if layer(m) is None and not m.startswith(LEAVES)]
    assert homeless == [], "add these modules to a layer in tests/test_layout.py (and the README layout)"


def violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            if module.startswith(LEAVES):
                own = next(leaf for leaf in LEAVES if module.startswith(leaf))
                if target.startswith(own):
                    continue
                wrong.append(f"{module} (copied or standalone: imports nothing of tritonfleet) imports {target}")
            elif target.startswith(LEAVES):
                if target.startswith("tritonfleet.examples") and not module.startswith(("tritonfleet.builder.cli",
                                                                                          "tritonfleet.examples")):
                    wrong.append(f"{module} imports the examples ({target}); only the CLI and the workdir may")
            elif layer(target) < layer(module):
                wrong.append(f"{module} ({LAYERS[layer(module)]}) imports {target} ({LAYERS[layer(target)]}), "
                             "a layer above it")
    return sorted(wrong)


def test_imports_go_down_the_layers_only(graph):
    assert violations(graph) == []


def test_the_module_graph_has_no_cycles(graph):
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_pyproject_lists_every_package():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert on_disk - packages == set(), "add these packages to [tool.setuptools] packages"
    assert {p for p in packages - on_disk if p not in MAPPING} == set(), "packages listed that do not exist"


def test_the_rules_catch_violations(graph):
    """The checks are not vacuous: each kind of wrong import is reported."""
    bad = {k: set(v) for k, v in graph.items()}
    bad["tritonfleet.clients.infer"].add("tritonfleet.builder.spec")
    bad["tritonfleet.builder.runtime.ops"].add("tritonfleet.clients.errors")
    bad["tritonfleet.builder.stages.parity"].add("tritonfleet.examples.digits.models")
    assert violations(bad) == [
        "tritonfleet.builder.runtime.ops (copied or standalone: imports nothing of tritonfleet) imports "
        "tritonfleet.clients.errors",
        "tritonfleet.builder.stages.parity imports the examples (tritonfleet.examples.digits.models); only the CLI "
        "and the workdir may",
        "tritonfleet.clients.infer (tritonfleet.clients) imports tritonfleet.builder.spec (tritonfleet.builder.spec), "
        "a layer above it",
    ]

"""The layout rules of the README ("Layout"), checked on the source itself.

* ``common/`` imports none of the other folders; ``refine/`` only ``common/``; ``harvester/`` and
  ``reports/`` never ``flows/``; only ``flows/`` imports Prefect;
* no module imports a private name (``_x``) of another module, or uses one as ``module._x``;
* the modules of one folder have no import cycle at load time (imports inside functions and
  under ``TYPE_CHECKING`` do not run at load time and are not counted).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from realdata import REPO

FOLDERS = ("common", "refine", "harvester", "reports", "flows")
MAY_IMPORT = {"common": set(), "refine": {"common"}, "harvester": {"common", "refine"},
              "reports": {"common", "refine"}, "flows": set(FOLDERS)}


def _modules():
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield folder, "rerefine." + ".".join(parts), path


def _resolve(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, module: str):
    """(imported module, names, at load time?) of every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    late = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            late.update(id(n) for n in ast.walk(node) if n is not node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            late.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], id(node) not in late
        elif isinstance(node, ast.ImportFrom):
            yield _resolve(node, module, is_pkg), [a.name for a in node.names], id(node) not in late


ALL = list(_modules())


@pytest.mark.parametrize("folder,module,path", ALL, ids=[m for _, m, _ in ALL])
def test_imports_follow_the_layout(folder, module, path):
    for target, names, _ in _imports(path, module):
        if target.startswith("rerefine."):
            other = target.split(".")[1]
            assert other == folder or other in MAY_IMPORT[folder], f"{module} imports {target}"
            for n in names:
                assert not (n.startswith("_") and not n.startswith("__")), f"{module} imports private {target}.{n}"
        if target.split(".")[0] in ("prefect", "prefect_dask"):
            assert folder == "flows", f"{module} imports {target}: only flows/ may use Prefect"


@pytest.mark.parametrize("folder,module,path", ALL, ids=[m for _, m, _ in ALL])
def test_no_private_attribute_of_another_module(folder, module, path):
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _resolve(node, module, path.name == "__init__.py")
            for a in node.names:
                aliases[a.asname or a.name] = f"{src}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name
    mods = {name for name, full in aliases.items() if full.startswith("rerefine.")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in mods:
            attr = node.attr
            assert not (attr.startswith("_") and not attr.startswith("__")), \
                f"{module} uses {node.value.id}.{attr}, a private name of {aliases[node.value.id]}"


def test_no_import_cycle_at_load_time():
    graph = {m: set() for _, m, _ in ALL}
    for _, module, path in ALL:
        for target, names, load_time in _imports(path, module):
            if not load_time:
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in graph]
            # "from . import x" runs the submodule x; the package itself is already being imported
            for cand in subs or [target]:
                if cand in graph and cand != module:
                    graph[module].add(cand)
    # depth-first search for a back edge
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)

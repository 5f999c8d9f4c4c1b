"""The shape of the house (issue 12): import contracts, no import circles, honest sizes.

- ``lint-imports`` checks the contracts in pyproject.toml: the layers (cli > service > relay >
  routing > tls | identity > dns > ground), the intake apart from courier and queue, the pure
  cores free of asyncio, socket and ssl, no circle between the parts of a package.
- No circle among mxroute's modules at all, imports inside functions included (grimp sees them;
  ``if TYPE_CHECKING:`` imports are left out, as Python never runs them).
- No module over 700 lines, no class over 400, no function over 80 (ruff holds lines to 100).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.support.paths import ROOT

MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 700, 400, 80


def test_import_contracts_kept() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    command = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    result = subprocess.run([*command, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import circle among the graph's modules, or None (iterative DFS, colours)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph.modules, white)
    for start in sorted(graph.modules):
        if colour[start] != white:
            continue
        first = sorted(graph.find_modules_directly_imported_by(start))
        stack: list[tuple[str, list[str]]] = [(start, first)]
        path = [start]
        colour[start] = grey
        while stack:
            module, todo = stack[-1]
            if not todo:
                colour[module] = black
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if colour[nxt] == grey:
                return [*path[path.index(nxt):], nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append((nxt, sorted(graph.find_modules_directly_imported_by(nxt))))
    return None


def test_no_import_circle_among_modules() -> None:
    graph = grimp.build_graph("mxroute", exclude_type_checking_imports=True, cache_dir=None)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_circle_through_a_lazy_import(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "circlepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circlepkg import b\n")
    (package / "b.py").write_text("def f() -> None:\n    from circlepkg import c\n")
    (package / "c.py").write_text("import circlepkg.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circlepkg", cache_dir=None)
    cycle = _cycle(graph)
    assert cycle is not None and set(cycle) == {"circlepkg.a", "circlepkg.b", "circlepkg.c"}


def _oversized(path: Path) -> list[str]:
    source = path.read_text()
    found = []
    lines = source.count("\n") + 1
    if lines > MAX_MODULE:
        found.append(f"{path}: module of {lines} lines (> {MAX_MODULE})")
    for node in ast.walk(ast.parse(source)):
        size = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
        if isinstance(node, ast.ClassDef) and size > MAX_CLASS:
            found.append(f"{path}:{node.lineno}: class {node.name} of {size} lines (> {MAX_CLASS})")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and size > MAX_FUNCTION:
            found.append(f"{path}:{node.lineno}: {node.name}() of {size} lines (> {MAX_FUNCTION})")
    return found


def test_no_module_class_or_function_over_its_size() -> None:
    found = [f for path in sorted((ROOT / "mxroute").rglob("*.py")) for f in _oversized(path)]
    assert not found, "\n".join(found)


def test_size_check_sees_an_oversized_function(tmp_path: Path) -> None:
    body = "".join(f"    x{n} = {n}\n" for n in range(MAX_FUNCTION))
    (tmp_path / "big.py").write_text(f"def big() -> None:\n{body}")
    expected = f"{tmp_path / 'big.py'}:1: big() of {MAX_FUNCTION + 1} lines (> {MAX_FUNCTION})"
    assert _oversized(tmp_path / "big.py") == [expected]


def test_every_wing_says_what_it_owns_and_imports_none_of_its_children() -> None:
    for init in sorted((ROOT / "mxroute").rglob("__init__.py")):
        if init.parent == ROOT / "mxroute":
            continue
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init}: no docstring"
        assert "import" in (ast.get_docstring(tree) or ""), f"{init}: no word on what it may import"
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        future = [n for n in imports if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
        assert imports == future, init

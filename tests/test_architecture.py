"""The package layout is the architecture: an import graph of ``mammo_lib`` parsed with ``ast``.

Three rules, each checked on the real package and shown to fail on a planted violation:

* no import cycle between modules (a package ``__init__`` re-exporting its own children is not one);
* no upward import: a module imports only from its own subpackage or from a subpackage earlier in
  :data:`LAYERS` (``docs/ARCHITECTURE.md`` draws the same order);
* no import of another module's private (``_``-prefixed) name.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

#: Allowed order, lowest first: a unit may import only from itself and the units before it.
#: ``numerics`` is imported first by ``mammo_lib/__init__`` (pins the CPU kernels before torch).
LAYERS = ("numerics", "utils", "data", "networks", "metrics", "engines", "protocol", "explain", "visualize", "repro",
          "cli", "reproduce")
ROOT = Path(__file__).resolve().parents[1] / "mammo_lib"


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _targets(mods: dict[str, Path], cur: str, node: ast.AST) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for one import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name in mods]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        pkg = cur.split(".") if mods[cur].name == "__init__.py" else cur.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = []
    for a in node.names:
        if f"{base}.{a.name}" in mods:
            out.append((f"{base}.{a.name}", None))
        elif base in mods:
            out.append((base, a.name))
    return out


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Edges module -> imported modules (every import, also inside functions) and the private
    cross-module imports as ``"a imports b._name"``."""
    mods = modules(root)
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for tgt, name in _targets(mods, m, node):
                    if tgt != m and not m.startswith(tgt + "."):
                        edges[m].add(tgt)
                    if name and name.startswith("_") and not name.startswith("__") and tgt != m:
                        private.append(f"{m} imports {tgt}.{name}")
    return edges, private


def _related(a: str, b: str) -> bool:
    return a.startswith(b + ".") or b.startswith(a + ".")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if _related(v, w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def unit(module: str) -> str:
    """The layer unit of a module: its first name below the package (``mammo_lib.data.roi`` -> ``data``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward(edges: dict[str, set[str]], layers: tuple[str, ...] = LAYERS) -> list[str]:
    out = []
    for a, targets in edges.items():
        for b in targets:
            ua, ub = unit(a), unit(b)
            if ua == "" or ub == "" or ua == ub:  # the package __init__ (numerics first) and within a unit
                continue
            if ua not in layers or ub not in layers or layers.index(ub) > layers.index(ua):
                out.append(f"{a} -> {b}")
    return sorted(out)


def violations(root: Path, layers: tuple[str, ...] = LAYERS) -> dict[str, list]:
    edges, private = import_graph(root)
    return {"cycles": cycles(edges), "upward": upward(edges, layers), "private": sorted(private)}


# ------------------------------------------------------------------------------ the package
def test_every_module_is_in_a_declared_layer():
    units = {unit(m) for m in modules(ROOT)} - {""}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_no_import_cycle():
    assert violations(ROOT)["cycles"] == []


def test_no_upward_import():
    assert violations(ROOT)["upward"] == []


def test_no_private_cross_module_import():
    assert violations(ROOT)["private"] == []


def test_numerics_is_imported_first_and_needs_no_torch():
    init = ast.parse((ROOT / "__init__.py").read_text())
    first = next(n for n in init.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    assert isinstance(first, ast.ImportFrom) and first.module == "mammo_lib.numerics"
    edges, _ = import_graph(ROOT)
    assert edges.get("mammo_lib.numerics", set()) == set()


# ------------------------------------------------------------------------------ the checks can fail
def _tiny(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "mammo_lib"
    for name, text in {"__init__.py": "", "utils/__init__.py": "", "data/__init__.py": "",
                       "utils/files.py": "def write(): pass\n", "data/records.py": "X = 1\n", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_clean_tiny_package_passes(tmp_path):
    root = _tiny(tmp_path, {"data/roi.py": "from mammo_lib.utils.files import write\nfrom .records import X\n"})
    assert violations(root) == {"cycles": [], "upward": [], "private": []}


@pytest.mark.parametrize("files, kind, expected", [
    ({"data/a.py": "from mammo_lib.data import b\n", "data/b.py": "def f():\n    from mammo_lib.data.a import g\n"},
     "cycles", [["mammo_lib.data.a", "mammo_lib.data.b"]]),
    ({"utils/files.py": "def write():\n    from mammo_lib.data.records import X\n"},
     "upward", ["mammo_lib.utils.files -> mammo_lib.data.records"]),
    ({"data/records.py": "_SECRET = 1\n", "data/roi.py": "from .records import _SECRET\n"},
     "private", ["mammo_lib.data.roi imports mammo_lib.data.records._SECRET"]),
], ids=["cycle", "upward", "private"])
def test_a_planted_violation_is_found(tmp_path, files, kind, expected):
    found = violations(_tiny(tmp_path, files))
    assert found[kind] == expected
    assert all(v == [] for k, v in found.items() if k != kind)

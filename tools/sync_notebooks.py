"""Write every ``notebooks/NN_*.ipynb`` from its jupytext source ``notebooks/NN_*.py`` (py:percent).

The ``.py`` files are what people edit and review; the ``.ipynb`` files are generated:

    .venv/bin/python tools/sync_notebooks.py            # rewrite the .ipynb files from the .py files
    .venv/bin/python tools/sync_notebooks.py --check    # exit 1 naming every stale or unpaired notebook

A generated notebook carries no outputs, except the pinned output of a ``# NBVAL_CHECK_OUTPUT``
cell (compared by nbval on the smoke profile), kept from the current ``.ipynb`` while that cell's
source is unchanged. Cell ids are ``NN-cc``, so an unchanged source gives the same bytes.
(``jupytext --sync`` also works on a pair; this script adds the stable ids and the output rule.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PINNED = "# NBVAL_CHECK_OUTPUT"


def notebook_from_source(py: Path, previous: nbformat.NotebookNode | None = None,
                         warnings: list[str] | None = None) -> nbformat.NotebookNode:
    """The notebook of the jupytext source ``py``: stable ids, no outputs but pinned ones from ``previous``."""
    nb = jupytext.read(py, fmt="py:percent")
    kept = {}
    for cell in (previous.cells if previous is not None else []):
        if cell.cell_type == "code" and cell.source.startswith(PINNED) and cell.get("outputs"):
            kept[cell.source] = (cell.outputs, cell.execution_count)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{py.stem[:2]}-{i:02d}"
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        if cell.source.startswith(PINNED):
            if cell.source in kept:
                cell.outputs, cell.execution_count = kept[cell.source]
            elif warnings is not None:
                warnings.append(f"{py.name}, cell {i}: no pinned output for this source; run the notebook on "
                                f"the smoke profile, save it, and sync again")
    return nb


def render(py: Path, warnings: list[str] | None = None) -> str:
    """The ``.ipynb`` text that ``py`` gives (keeping pinned outputs of the current ``.ipynb``)."""
    ipynb = py.with_suffix(".ipynb")
    previous = nbformat.read(ipynb, as_version=4) if ipynb.exists() else None
    return jupytext.writes(notebook_from_source(py, previous, warnings), fmt="ipynb")


def problems(folder: Path) -> list[str]:
    """Every numbered notebook in ``folder`` that is unpaired or differs from its source."""
    pys = {p.stem: p for p in folder.glob("[0-9][0-9]_*.py")}
    nbs = {p.stem: p for p in folder.glob("[0-9][0-9]_*.ipynb")}
    out = [f"{nbs[s].name}: no source {s}.py" for s in sorted(set(nbs) - set(pys))]
    for stem, py in sorted(pys.items()):
        if stem not in nbs:
            out.append(f"{py.name}: no {stem}.ipynb; run tools/sync_notebooks.py")
        elif render(py) != nbs[stem].read_text():
            out.append(f"{stem}.ipynb differs from {py.name}; run tools/sync_notebooks.py")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=NOTEBOOKS, help="notebooks folder (default: notebooks/)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook is stale or unpaired")
    args = ap.parse_args(argv)
    pys = sorted(args.folder.glob("[0-9][0-9]_*.py"))
    if not pys:
        print(f"no numbered notebook sources (NN_*.py) in {args.folder}", file=sys.stderr)
        return 1
    if args.check:
        bad = problems(args.folder)
        for line in bad:
            print(line, file=sys.stderr)
        return 1 if bad else 0
    warnings: list[str] = []
    for py in pys:
        text = render(py, warnings)
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.exists() or ipynb.read_text() != text:
            tmp = ipynb.with_name(f".{ipynb.name}.tmp")
            tmp.write_text(text)
            tmp.replace(ipynb)
            print("written", ipynb.name)
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

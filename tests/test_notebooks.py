"""The notebooks: jupytext sources in sync with the .ipynb files, output-free, told as the paper's steps,
figures displayed from the objects the library returns."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "sync_notebooks.py"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PINNED = "# NBVAL_CHECK_OUTPUT"

# `tools/sync_notebooks.py --check` on a copy of notebooks/ after one change:
# (change, exit status, message fragment on stderr)
SYNC_CASES = [
    ("none", 0, ""),
    ("edit 01_data_preparation.py", 1, "01_data_preparation.ipynb differs from 01_data_preparation.py"),
    ("remove 02_table1_roi_variants.ipynb", 1, "02_table1_roi_variants.py: no 02_table1_roi_variants.ipynb"),
    ("remove 03_ddsm_pretraining.py", 1, "03_ddsm_pretraining.ipynb: no source 03_ddsm_pretraining.py"),
]
EDIT = "\n# %%\nprint('an added cell')\n"


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def _sync(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args, str(folder)], capture_output=True, text=True)


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder)
    return folder


def test_every_notebook_has_its_jupytext_source():
    pys = sorted(p.with_suffix(".ipynb") for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert pys == NOTEBOOKS and len(NOTEBOOKS) == 9
    for nb in NOTEBOOKS:
        header = nb.with_suffix(".py").read_text().split("# ---", 2)[1]
        assert "formats: ipynb,py:percent" in header, f"{nb.stem}.py is not paired as ipynb,py:percent"


def test_committed_notebooks_match_their_sources():
    out = _sync(ROOT / "notebooks", "--check")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("change,status,message", SYNC_CASES, ids=[c[0] for c in SYNC_CASES])
def test_sync_check_names_each_stale_or_unpaired_notebook(tmp_path: Path, change: str, status: int, message: str):
    folder = _copy(tmp_path)
    if change.startswith("edit "):
        with open(folder / change.split()[1], "a") as f:
            f.write(EDIT)
    elif change.startswith("remove "):
        (folder / change.split()[1]).unlink()
    out = _sync(folder, "--check")
    assert out.returncode == status, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == status   # one line per problem, none when in sync


def test_sync_writes_the_edit_and_keeps_the_pinned_output(tmp_path: Path):
    folder = _copy(tmp_path)
    py = folder / "01_data_preparation.py"
    py.write_text(py.read_text() + EDIT)
    out = _sync(folder)
    assert out.returncode == 0 and out.stdout.strip() == "written 01_data_preparation.ipynb", out.stdout
    cells = _cells(folder / "01_data_preparation.ipynb")
    assert _src(cells[-1]) == "print('an added cell')" and cells[-1]["outputs"] == []
    assert [c["id"] for c in cells] == [f"01-{i:02d}" for i in range(len(cells))]
    pinned = [c for c in cells if c["cell_type"] == "code" and _src(c).startswith(PINNED)]
    assert len(pinned) == 1
    assert "".join(pinned[0]["outputs"][0]["text"]) == "cross-validation set: 24 masses, 12 benign, 12 malignant\n"
    assert _sync(folder, "--check").returncode == 0
    # the pinned cell's source changes: its output is dropped with a warning, not kept stale
    py.write_text(py.read_text().replace("# class counts of the cross-validation set", "# class counts"))
    out = _sync(folder)
    assert "01_data_preparation.py, cell" in out.stderr and "no pinned output" in out.stderr
    assert all(c.get("outputs", []) == [] for c in _cells(folder / "01_data_preparation.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_output_free(nb: Path):
    """Outputs only where nbval pins them (a `# NBVAL_CHECK_OUTPUT` cell)."""
    for c in _cells(nb):
        if c["cell_type"] == "code" and not _src(c).startswith(PINNED):
            assert c["outputs"] == [] and c["execution_count"] is None, f"{nb.name}: output in {_src(c)[:60]!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_read_as_the_papers_steps(nb: Path):
    """Title cell naming what it reproduces, then numbered steps: a heading with 3-6 lines of text
    and code that calls the library and displays what it returns (no figures re-read from files)."""
    cells = _cells(nb)
    title = _src(cells[0])
    assert cells[0]["cell_type"] == "markdown" and title.startswith(f"# {nb.name[:2]} "), nb.name
    assert re.search(r"Sec\. \d|Table \d|Fig\. \d|Eq\. \d|REPORT\.md", title), f"{nb.name}: title cites nothing"
    steps = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _src(c).startswith("## Step ")]
    assert steps, f"{nb.name}: no step headings"
    for k, i in enumerate(steps, start=1):
        text = _src(cells[i]).splitlines()
        assert text[0].startswith(f"## Step {k}: "), f"{nb.name}: step {k} heading is {text[0]!r}"
        body = [line for line in text[1:] if line.strip()]
        assert 1 <= len(body) <= 6, f"{nb.name}: step {k} has {len(body)} lines of text"
        assert cells[i + 1]["cell_type"] == "code", f"{nb.name}: step {k} is not followed by code"
    for c in cells:
        if c["cell_type"] == "code":
            assert not re.search(r"\bImage\(|\.png\b|glob", _src(c)), f"{nb.name}: reads a file back: {_src(c)[:80]}"


def test_a_saved_figure_stays_displayable(tmp_path: Path):
    """The steps save each figure and return it; the object still draws the same PNG afterwards."""
    from mammo_lib.repro.figures import fig6_distance_distribution
    from mammo_lib.repro.report import save_figure

    import pandas as pd

    df = pd.DataFrame({"group": [1, 1, 2, 2, 3, 3, 4, 4], "d": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]})
    fig = fig6_distance_distribution(df)
    first = save_figure(fig, "a", tmp_path)
    assert isinstance(fig, Figure) and first == tmp_path / "figures" / "a.png"
    again = save_figure(fig, "b", tmp_path)
    assert again.read_bytes() == first.read_bytes()

"""The papermill runner: order, skip-when-unchanged, stop-at-first-failure naming notebook and cell."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat as nbf
import pytest

from mammo_lib.reproduce import NotebookFailed, notebooks, run_all

PARAMS = ('profile: str = "demo"  # profile\ndata_root: str = ""  # data\n'
          'device: str = ""  # device\nprogress: bool = True  # bars')


def _notebook(path: Path, body: str) -> None:
    nb = nbf.v4.new_notebook()
    p = nbf.v4.new_code_cell(PARAMS)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbf.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "mammo_lib").mkdir()
    (tmp_path / "mammo_lib" / "lib.py").write_text("X = 1\n")
    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "notebooks" / "01_first.ipynb",
              "open('ran_01.txt', 'a').write(profile + '\\n')")
    _notebook(tmp_path / "notebooks" / "02_second.ipynb", "x = 1\nraise RuntimeError('boom in 02')")
    return tmp_path


def test_order_failure_and_skip(project: Path, monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    assert [p.name for p in notebooks(project)] == ["01_first.ipynb", "02_second.ipynb"]
    with pytest.raises(NotebookFailed, match=r"02_second\.ipynb failed at cell 2 .*RuntimeError: boom in 02"):
        run_all("smoke", root=project, progress=False)
    ran = project / "notebooks" / "ran_01.txt"
    assert ran.read_text() == "smoke\n"                      # the profile parameter was injected
    executed = project / "runs" / "smoke" / "executed"
    assert (executed / "01_first.done.json").exists() and not (executed / "02_second.done.json").exists()
    # Rerun: 01 is unchanged and skipped, 02 is attempted again.
    with pytest.raises(NotebookFailed):
        run_all("smoke", root=project, progress=False)
    assert ran.read_text() == "smoke\n"
    # A change in the library invalidates every notebook downstream.
    (project / "mammo_lib" / "lib.py").write_text("X = 2\n")
    run_all("smoke", root=project, progress=False, only=["01"])
    assert ran.read_text() == "smoke\nsmoke\n"
    timings = json.loads((executed / "timings.json").read_text())
    assert set(timings) == {"01_first"}


def test_no_notebooks_is_a_clear_error(tmp_path: Path):
    (tmp_path / "notebooks").mkdir()
    with pytest.raises(FileNotFoundError, match="no numbered notebooks"):
        notebooks(tmp_path)


def test_progress_is_streamed_and_fresh_recomputes(project: Path, monkeypatch, capsys):
    """With progress on, a bar the notebook draws reaches the terminal (not the executed notebook);
    --fresh removes the work folder, so a notebook that was done runs again."""
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    monkeypatch.delenv("MAMMO_PROGRESS_FILE", raising=False)
    (project / "notebooks" / "02_second.ipynb").unlink()
    _notebook(project / "notebooks" / "01_first.ipynb",
              "import time\nfrom mammo_lib.progress import tqdm\n"
              "for _ in tqdm(range(3), desc='counting sheep', mininterval=0):\n    time.sleep(1.2)\n"
              "open('ran_01.txt', 'a').write('x')")
    run_all("smoke", root=project, progress=True)
    out = capsys.readouterr().out
    assert "counting sheep" in out and "[01 " in out
    executed = nbf.read(project / "runs" / "smoke" / "executed" / "01_first.ipynb", 4)
    assert "counting sheep" not in json.dumps(executed.cells[-1].get("outputs", []))
    run_all("smoke", root=project, progress=True)              # unchanged: skipped
    assert (project / "notebooks" / "ran_01.txt").read_text() == "x"
    run_all("smoke", root=project, progress=True, fresh=True)  # from scratch: runs again
    assert (project / "notebooks" / "ran_01.txt").read_text() == "xx"
    assert "[fresh] removed" in capsys.readouterr().out

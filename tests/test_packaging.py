"""The environment files agree, and every notebook documents typed parameters for papermill."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(pyproject["dependencies"]) | set(pyproject["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, (f"only in pyproject: {sorted(wanted - listed)}; "
                              f"only in environment.yml: {sorted(listed - wanted)}")
    assert "python=3.11" in env["dependencies"]


def test_pinned_dependencies_are_the_installed_ones():
    """Every ``==`` pin of pyproject.toml is the version this environment runs (the tests ran on it)."""
    from importlib.metadata import version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if "==" in d)
    assert pins, "no pinned dependency"
    assert {name: version(name).split("+")[0] for name in pins} == pins


def test_notebooks_are_numbered_and_contiguous():
    nums = [int(p.name[:2]) for p in NOTEBOOKS]
    assert nums == list(range(1, len(nums) + 1)) and len(nums) >= 8


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_tagged_and_typed(nb: Path):
    cells = json.loads(nb.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name}: exactly one cell tagged 'parameters'"
    src = "".join(tagged[0]["source"])
    for line in src.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r"^\w+: [\w| \[\],]+ = .+  # .+$", line), f"{nb.name}: untyped or uncommented: {line!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS[:1] + NOTEBOOKS[-1:], ids=lambda p: p.stem)
def test_papermill_help_lists_typed_parameters(nb: Path):
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(nb)],
                         capture_output=True, text=True, check=True).stdout
    for expected in ('profile: str (default "")', 'data_root: str (default "")',
                     'device: str (default "")', "progress: bool (default True)"):
        assert expected in out, out


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_stay_thin(nb: Path):
    """No function or class definitions in notebooks: logic lives in mammo_lib."""
    for c in json.loads(nb.read_text())["cells"]:
        if c["cell_type"] == "code":
            src = "".join(c["source"])
            assert not re.search(r"^\s*(def|class) ", src, re.M), f"{nb.name} defines code: {src[:80]}"


def test_committed_results_are_not_gitignored():
    """What the repository commits under results/ must not be listed in .gitignore."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert files, "results/ holds no committed file"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert ignored == []

"""The papermill runner: order, skip-when-unchanged, stop-at-first-failure naming notebook and cell."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat as nbf
import pytest

from mammo_lib.repro import runner as rp
from mammo_lib.repro.runner import NotebookFailed, notebooks, run_all

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
    times = json.loads((project / "runs" / "smoke" / "results" / "timings.json").read_text())
    assert set(times["cached"]["notebooks"]) == {"01_first"}      # over the work folder: a cached run
    assert set(times["fresh"]["notebooks"]) == {"01_first"}       # the first run (empty folder) was fresh
    assert "last complete run" not in times["cached"]             # --only: not a complete run


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
              "import time\nfrom mammo_lib.utils.progress import tqdm\n"
              "for _ in tqdm(range(3), desc='counting sheep', mininterval=0):\n    time.sleep(1.2)\n"
              "open('ran_01.txt', 'a').write('x')")
    monkeypatch.setenv("COLUMNS", "80")
    run_all("smoke", root=project, progress=True)
    out = capsys.readouterr().out
    assert "counting sheep" in out and "[01 " in out
    bars = [line for line in out.splitlines() if line.startswith(("    [01", "[run ]"))]
    assert bars and all(len(line) <= 79 for line in bars)     # an 80-column terminal does not wrap
    executed = nbf.read(project / "runs" / "smoke" / "executed" / "01_first.ipynb", 4)
    assert "counting sheep" not in json.dumps(executed.cells[-1].get("outputs", []))
    run_all("smoke", root=project, progress=True)              # unchanged: skipped
    assert (project / "notebooks" / "ran_01.txt").read_text() == "x"
    run_all("smoke", root=project, progress=True, fresh=True)  # from scratch: runs again
    assert (project / "notebooks" / "ran_01.txt").read_text() == "xx"
    assert "[fresh] removed" in capsys.readouterr().out


# --------------------------------------------------------------------------- the time-left estimate
# Hand-computed values; no test depends on a clock.


def test_parse_bar_compact_default_and_unknown_total():
    assert rp.parse_bar("heads (4 trained together): 12/30 [00:41<01:02, 3.44s/it]") == rp.BarState(
        "heads (4 trained together)", 12, 30, 41.0, 62.0)
    # tqdm's default format with a bar graphic and a postfix; H:MM:SS
    assert rp.parse_bar("epochs:  20%|####4     | 2/10 [1:00:05<2:00:00, 3.1s/it, loss=0.3]") == rp.BarState(
        "epochs", 2, 10, 3605.0, 7200.0)
    assert rp.parse_bar("rois: 3/? [00:07<?, 2.3it/s]") == rp.BarState("rois", 3, None, 7.0, None)
    assert rp.parse_bar("folds: 0/5 [00:00<?, ?it/s]") == rp.BarState("folds", 0, 5, 0.0, None)
    assert rp.parse_bar("Loading the phantom") is None


def test_bar_left():
    assert rp.bar_left(rp.BarState("f", 2, 5, 60.0, 90.0)) == 90.0
    assert rp.bar_left(rp.BarState("f", 2, 5, 60.0, 90.0), age=25.0) == 65.0     # read 25 s ago
    assert rp.bar_left(rp.BarState("f", 2, 5, 60.0, 90.0), age=95.0) is None    # late on its estimate
    assert rp.bar_left(rp.BarState("f", 4, 10, 20.0, None)) == 30.0              # 20 s * 6 / 4
    assert rp.bar_left(rp.BarState("f", 0, 5, 3.0, None)) is None                # nothing done yet
    assert rp.bar_left(rp.BarState("f", 5, 5, 10.0, 0.0)) is None                # finished
    assert rp.bar_left(rp.BarState("f", 3, None, 10.0, None)) is None            # no total


def test_bar_log_latest_state_per_bar_and_end_marks():
    from mammo_lib.utils.progress import END_MARK

    log = rp.BarLog(Path("unused"))
    log.feed("\rfolds: 1/5 [00:10<00:40, 10.0s/it]\n\repochs: 3/10 [00:03<00:07, 1.0s/it]", now=100.0)
    log.feed("\repochs: 4/10 [00:04<00:06, 1.0s/it]", now=101.0)
    assert log.last == "epochs: 4/10 [00:04<00:06, 1.0s/it]"
    assert sorted(log.lefts(now=103.0)) == [4.0, 37.0]       # 6 - 2 and 40 - 3
    log.feed(f"\n{END_MARK}epochs\n", now=104.0)               # early-stopped: no longer running
    assert log.lefts(now=104.0) == [36.0]
    assert log.last == "epochs: 4/10 [00:04<00:06, 1.0s/it]"  # the end mark is not a status
    log.feed("\n\rtrain (finetune): 0/1 [00:00<?, ?it/s]\x1b[A", now=105.0)   # a nested bar's cursor-up
    assert log.last == "train (finetune): 0/1 [00:00<?, ?it/s]"


def test_bar_log_reads_the_file_incrementally(tmp_path: Path):
    f = tmp_path / "progress.log"
    f.write_text("\rfolds: 1/4 [00:30<01:30, 30.0s/it]")
    log = rp.BarLog(f)
    log.poll(now=0.0)
    with open(f, "a") as fh:
        fh.write("\rfolds: 2/4 [01:00<01:00, 30.0s/it]")
    log.poll(now=0.0)
    assert log.lefts(now=10.0) == [50.0]


def test_speed_factor():
    assert rp.speed_factor(0.0, 0.0) == 1.0                            # nothing to compare
    assert rp.speed_factor(300.0, 100.0) == 3.0                        # three times slower so far
    assert rp.speed_factor(50.0, 100.0) == 0.5
    # running notebook past its scaled time: (100 + 90) / (100 + 30) = 19/13
    assert rp.speed_factor(100.0, 100.0, elapsed=90.0, expected_here=30.0) == pytest.approx(19 / 13)
    # still within it: the notebooks done decide
    assert rp.speed_factor(100.0, 100.0, elapsed=20.0, expected_here=30.0) == 1.0
    assert rp.speed_factor(5000.0, 100.0) == rp.SPEED_BOUNDS[1]        # clamped
    assert rp.speed_factor(1.0, 100.0) == rp.SPEED_BOUNDS[0]


def test_time_left_here_never_zero_while_running():
    assert rp.time_left_here(30.0, 100.0, [20.0]) == 70.0              # record: 100 - 30
    assert rp.time_left_here(30.0, 100.0, [95.0, 20.0]) == 95.0        # a bar says more
    assert rp.time_left_here(30.0, 100.0, [], speed=2.0) == 170.0      # 2 * 100 - 30
    assert rp.time_left_here(120.0, 100.0, [15.0]) == 15.0             # past the record: the bar
    assert rp.time_left_here(120.0, 100.0, []) is None                 # past it, no bar: unknown
    assert rp.time_left_here(5.0, None, [12.0]) == 12.0                # no record: the bar
    assert rp.time_left_here(5.0, None, []) is None
    assert rp.time_left_here(100.0, 100.0, [0.0]) is None              # exactly at the record: not 0


def test_eta_text():
    assert rp.eta_text(30.0, 70.0, 200.0, 0, 1.0) == "0:30, ~1:10 left, all ~4:30"
    # twice as slow: the rest counts 2 * 200 s; 70 + 400 = 470 s
    assert rp.eta_text(30.0, 70.0, 200.0, 0, 2.0) == "0:30, ~1:10 left, all ~7:50"
    # past the record and no bar: no number for here, the whole run is a lower bound
    assert rp.eta_text(150.0, None, 200.0, 0, 1.5, expected_here=100.0) == "2:30, ? left (last 1:40), all >5:00"
    # a notebook without a record among the later ones: lower bound
    assert rp.eta_text(10.0, 50.0, 60.0, 1, 1.0) == "0:10, ~0:50 left, all >1:50"
    # last notebook, past its record: nothing that reads as zero
    assert rp.eta_text(150.0, None, 0.0, 0, 1.5, expected_here=100.0) == "2:30, ? left (last 1:40)"
    # 0.3 s left rounds up, never "~0:00"
    assert rp.eta_text(10.0, 0.3, 0.0, 0, 1.0) == "0:10, ~0:01 left, all ~0:01"


def test_fit_width():
    line = "    [05 1:23, ~2:10 left, all ~6:40] " + "heads (4 trained together): 12/30 [00:41<01:02, 3.44s/it]"
    out = rp.fit_width(line, 80)
    assert len(out) == 79 and out.endswith("...") and out.startswith(line[:76])
    assert rp.fit_width("short", 80) == "short"


def test_expected_times_fresh_never_from_cached():
    committed = {"fresh": {"notebooks": {"01": 60.0, "02": 150.0}},
                 "cached": {"notebooks": {"01": 6.0, "02": 20.0}}}
    here = {"fresh": {"notebooks": {"02": 180.0}}, "cached": {"notebooks": {"01": 5.0}}}
    # this machine's record first, then the committed one, per notebook
    assert rp.expected_times("fresh", here, committed) == {"02": 180.0, "01": 60.0}
    assert rp.expected_times("cached", here, committed) == {"01": 5.0, "02": 20.0}
    # cached without a cached record: the fresh time (an upper bound); fresh never takes a cached time
    assert rp.expected_times("cached", {"fresh": {"notebooks": {"03": 40.0}}}) == {"03": 40.0}
    assert rp.expected_times("fresh", {"cached": {"notebooks": {"03": 4.0}}}) == {}
    # an older provenance.json's times (of a fresh run) fill what is missing
    assert rp.expected_times("fresh", committed, legacy={"09": 12.0, "01": 1.0}) == {"01": 60.0, "02": 150.0,
                                                                                     "09": 12.0}


def test_record_cached_never_overwrites_fresh(tmp_path: Path):
    rp.record_time(tmp_path, "fresh", "01_a", 61.04, load=1.5)
    rp.record_run(tmp_path, "fresh", 300.0, load_start=1.0, load_end=2.0)
    rp.record_time(tmp_path, "cached", "01_a", 7.0)
    rp.record_run(tmp_path, "cached", 40.0, load_start=3.0, load_end=3.5)
    rec = rp.load_times(tmp_path)
    assert rec["fresh"]["notebooks"] == {"01_a": 61.0} and rec["cached"]["notebooks"] == {"01_a": 7.0}
    assert rec["fresh"]["last complete run"]["total (s)"] == 300.0
    assert rec["cached"]["last complete run"]["total (s)"] == 40.0
    assert rec["fresh"]["last complete run"]["load average (1 min) at start"] == 1.0
    assert rec["fresh"]["load average (1 min) at each notebook's end"] == {"01_a": 1.5}
    with pytest.raises(ValueError, match="kind must be one of"):
        rp.record_time(tmp_path, "warm", "01_a", 1.0)


def test_fresh_after_force_is_estimated_from_the_fresh_record(project: Path, monkeypatch, capsys):
    """A --force run records a cached time; the --fresh run after it still announces the fresh time."""
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    (project / "notebooks" / "02_second.ipynb").unlink()
    results = project / "runs" / "smoke" / "results"
    results.mkdir(parents=True)                    # the results folder alone: still an empty work folder
    run_all("smoke", root=project, progress=False, only=["01"])           # first run: fresh
    rec = json.loads((results / "timings.json").read_text())
    assert rec["fresh"]["notebooks"]["01_first"] < 600.0 and "cached" not in rec
    (results / "timings.json").write_text(json.dumps({"fresh": {"notebooks": {"01_first": 600.0}}}))
    capsys.readouterr()
    run_all("smoke", root=project, progress=False, force=True)            # over the folder: cached
    out = capsys.readouterr().out
    assert "last fresh run 10:00" in out          # no cached record yet: the fresh time, an upper bound
    rec = json.loads((results / "timings.json").read_text())
    assert rec["fresh"]["notebooks"] == {"01_first": 600.0}               # untouched by the cached run
    assert rec["cached"]["last complete run"]["total (s)"] > 0
    run_all("smoke", root=project, progress=False, fresh=True)              # not estimated from the cached run
    out = capsys.readouterr().out
    assert "last fresh run 10:00" in out and "all ~10:00" in out and "last cached" not in out
    rec = json.loads((results / "timings.json").read_text())
    assert rec["fresh"]["notebooks"]["01_first"] < 600.0 and "last complete run" in rec["fresh"]


def test_report_records_fresh_and_cached_times_apart(tmp_path: Path):
    """--force after --fresh: the provenance keeps the fresh total and lists both kinds."""
    from mammo_lib.repro.config import load_config
    from mammo_lib.repro.report import write_report

    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    cfg = load_config("smoke", {}, root=tmp_path, honour_env=False)
    rp.record_time(cfg.results_dir, "fresh", "01_a", 300.0)
    rp.record_run(cfg.results_dir, "fresh", 560.0, load_start=1.0, load_end=1.2)
    rp.record_time(cfg.results_dir, "cached", "01_a", 60.0)
    rp.record_run(cfg.results_dir, "cached", 159.0, load_start=1.0, load_end=1.0)
    write_report(cfg)
    prov = json.loads((cfg.results_dir / "provenance.json").read_text())
    assert prov["total wall time, last complete fresh run (s)"] == 560.0
    assert prov["wall time per notebook, fresh run (s)"] == {"01_a": 300.0}
    assert prov["wall time per notebook, cached run (s)"] == {"01_a": 60.0}

"""Run the numbered notebooks in order with papermill: the one-command reproduction.

    python -m mammo_lib.reproduce --profile demo            # the default main job
    python -m mammo_lib.reproduce --profile full --data-root /data/mammo --device cuda

Executed notebooks go to ``<work_dir>/executed/``. A notebook whose inputs are unchanged since its
last successful run (same notebook, parameters, profile, library source and upstream notebooks) is
skipped; the first failure stops the run and names the notebook and the cell.

While a notebook runs, its progress bars (steps, folds, epochs, ROIs, with tqdm's time-left
estimate) are shown in the terminal with the notebook's elapsed time and, where an earlier run
of the profile is known, the time left for the notebook and for the whole run.

``--force`` re-executes every notebook over the library's caches (same numbers, quicker);
``--fresh`` deletes the profile's working folder (caches, checkpoints, trainings) and its result
files first, so everything is recomputed from scratch: that is what reproduces the committed
``results/`` from a clean clone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from .config import find_project_root, load_config
from .io import write_json


def notebooks(root: Path) -> list[Path]:
    """``notebooks/NN_*.ipynb`` in the order they run."""
    nbs = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise FileNotFoundError(f"no numbered notebooks in {root / 'notebooks'}")
    return nbs


def _library_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "mammo_lib").rglob("*")):
        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _last_status(path: Path) -> str:
    """The latest progress line in the kernel's progress file (tqdm rewrites with carriage returns)."""
    try:
        text = path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""
    parts = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1] if parts else ""


class _Watcher(threading.Thread):
    """Prints what the running notebook's progress bars say, with elapsed and estimated time left."""

    def __init__(self, name: str, path: Path, expected: float | None, rest: float | None, every: float = 10.0):
        super().__init__(daemon=True)
        self.name_, self.path, self.expected, self.rest, self.every = name, path, expected, rest, every
        self.t0 = time.perf_counter()
        self.stop = threading.Event()

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        msg = f"    [{self.name_} {_fmt(el)}"
        if self.expected:
            left = max(self.expected - el, 0)
            msg += f", ~{_fmt(left)} left here"
            if self.rest is not None:
                msg += f", ~{_fmt(left + self.rest)} in all"
        status = _last_status(self.path)
        return msg + "]" + (f" {status}" if status else "")

    def run(self) -> None:
        last, last_t = "", 0.0
        while not self.stop.wait(1.0):
            status = _last_status(self.path)
            now = time.perf_counter()
            if status != last and now - last_t >= 2.0 or now - last_t >= self.every:
                print(self.line(), flush=True)
                last, last_t = status, now


def _expected_times(cfg: Any, timings: dict[str, Any]) -> dict[str, float]:
    """Seconds per notebook from this work folder's last run, else from the committed provenance."""
    if timings:
        return {k: float(v) for k, v in timings.items()}
    prov = cfg.results_dir / "provenance.json"
    try:
        known = json.loads(prov.read_text()).get("wall time per notebook, latest execution (s)", {})
        return {k: float(v) for k, v in known.items()} if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}


def fresh_start(cfg: Any) -> list[Path]:
    """Delete the profile's working folder and its result files (tables, figures, explanations,
    REPORT.md, provenance.json; benchmarks stay). Returns what was removed."""
    removed = []
    root = Path(cfg.root).resolve()
    targets = [cfg.work_dir] + [cfg.results_dir / n for n in ("tables", "figures", "explanations", "REPORT.md",
                                                              "provenance.json")]
    for t in targets:
        t = Path(t)
        if not t.exists():
            continue
        if root not in t.resolve().parents:
            raise ValueError(f"refusing to delete {t}: it is outside the project folder {root}")
        shutil.rmtree(t) if t.is_dir() else t.unlink()
        removed.append(t)
    return removed


def check_real_data(cfg: Any) -> None:
    """Before any work: every dataset the profile reads must be under its data root. Otherwise a
    :class:`~mammo_lib.records.DataError` names each missing dataset with the first missing path and
    says what could run on what is present (Table 2 needs BCDR D01 + F01, the DDSM pre-training
    needs CBIS-DDSM; README "Real data"). The phantom profiles need nothing.

    >>> check_real_data(load_config("full", {"data_root": "/data/mammo"}))  # doctest: +SKIP
    DataError: BCDR-D01 missing at /data/mammo/BCDR/BCDR-D01_dataset/bcdr_d01_outlines.csv; ...
    """
    from .records import DataError

    if cfg.uses_phantom:
        return
    root = cfg.data_root
    if not root.is_dir():
        raise DataError("data root folder not found (--data-root)", root)
    rd = cfg.section("real_data")
    cb, d01, f01 = rd["cbis_ddsm"], rd["bcdr_d01"], rd["bcdr_f01"]
    csvs = [cb["csv"]] if isinstance(cb["csv"], str) else list(cb["csv"])
    needed = {"CBIS-DDSM": [root / p for p in csvs] + [root / cb["dicom_root"]],
              "BCDR-D01": [root / d01["outlines"], root / d01["images"]],
              "BCDR-F01": [root / f01["outlines"], root / f01["images"]]}
    missing = {name: next(p for p in paths if not p.exists()) for name, paths in needed.items()
               if not all(p.exists() for p in paths)}
    if not missing:
        return
    said = "; ".join(f"{name} missing at {path}" for name, path in missing.items())
    bcdr_ok = not {"BCDR-D01", "BCDR-F01"} & set(missing)
    if "CBIS-DDSM" not in missing:
        could = "CBIS-DDSM present: only pre-training could run"
    elif bcdr_ok:
        could = "BCDR present: only the ImageNet-initialised rows of Table 2 could run"
    else:
        could = "nothing of the full profile can run on what is present"
    need = "Table 2 needs BCDR-D01 and BCDR-F01" if not bcdr_ok else "the DDSM pre-training needs CBIS-DDSM"
    raise DataError(f"{said}: {need}; {could} (expected layout under the data root: README, \"Real data\")")


def run_all(profile: str = "demo", *, data_root: str = "", device: str = "", force: bool = False,
            fresh: bool = False, only: Sequence[str] | None = None, root: Path | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Execute every notebook (or those whose names start with an entry of ``only``) in order;
    ``fresh`` first deletes the profile's caches and result files (:func:`fresh_start`)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    root = root or find_project_root()
    cfg = load_config(profile, {"data_root": data_root or None, "device": device or None}, root=root,
                      honour_env=False)
    check_real_data(cfg)  # before any work: which dataset is missing, what could run
    old_timings = cfg.work_dir / "executed" / "timings.json"
    known = _expected_times(cfg, json.loads(old_timings.read_text()) if old_timings.exists() else {})
    if fresh:
        for p in fresh_start(cfg):
            print(f"[fresh] removed {p}", flush=True)
    out_dir = cfg.work_dir / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    # The notebooks' bars go to a file (not into the executed notebooks) that a watcher shows live.
    params = {"profile": profile or "demo", "data_root": data_root, "device": device, "progress": progress}
    progress_file = out_dir / "progress.log"
    upstream = _digest(cfg.to_dict(), _library_digest(root))
    timings: dict[str, Any] = {}
    timings_file = out_dir / "timings.json"
    if timings_file.exists():
        timings = json.loads(timings_file.read_text())
    expected = _expected_times(cfg, timings) or known
    t_all = time.perf_counter()
    nbs = notebooks(root)
    for i, nb in enumerate(nbs):
        digest = _digest(upstream, nb.read_bytes().decode(), params)
        upstream = digest
        stamp = out_dir / f"{nb.stem}.done.json"
        selected = not only or any(nb.name.startswith(o) for o in only)
        if not selected:
            continue
        if not force and stamp.exists() and json.loads(stamp.read_text()).get("digest") == digest:
            print(f"[skip] {nb.name}: unchanged since its last successful run", flush=True)
            continue
        stamp.unlink(missing_ok=True)
        rest = [expected.get(n.stem) for n in nbs[i + 1:] if not only or any(n.name.startswith(o) for o in only)]
        left = sum(rest) if all(r is not None for r in rest) else None
        est = expected.get(nb.stem)
        print(f"[run ] {nb.name} ({i + 1}/{len(nbs)})" + (f", last run {est:.0f} s" if est else ""), flush=True)
        t0 = time.perf_counter()
        progress_file.write_text("")
        watcher = _Watcher(nb.stem[:2], progress_file, est, left) if progress else None
        old_env = os.environ.get("MAMMO_PROGRESS_FILE")
        os.environ["MAMMO_PROGRESS_FILE"] = str(progress_file)
        try:
            if watcher is not None:
                watcher.start()
            pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, cwd=str(nb.parent),
                                kernel_name="python3", progress_bar=False, log_output=False,
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except PapermillExecutionError as err:
            raise NotebookFailed(
                f"{nb.name} failed at cell {err.cell_index} (execution count {err.exec_count}): "
                f"{err.ename}: {err.evalue}. The executed notebook is {out_dir / nb.name}") from None
        finally:
            if watcher is not None:
                watcher.stop.set()
                watcher.join(timeout=5)
            if old_env is None:
                os.environ.pop("MAMMO_PROGRESS_FILE", None)
            else:
                os.environ["MAMMO_PROGRESS_FILE"] = old_env
        dt = time.perf_counter() - t0
        timings[nb.stem] = round(dt, 1)
        write_json(timings_file, timings)
        write_json(stamp, {"digest": digest, "seconds": round(dt, 1)})
        print(f"[done] {nb.name} in {dt:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    print(f"all notebooks done in {total:.0f} s; results in {cfg.results_dir}", flush=True)
    return {"results_dir": cfg.results_dir, "seconds": total, "timings": timings}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the reproduction; exit status 1 names the failing notebook and cell. Other
    errors (e.g. a missing dataset, :func:`check_real_data`) reach :func:`mammo_lib.cli.main`."""
    ap = argparse.ArgumentParser(prog="mammo-kt reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", help="smoke | demo | full | path to a YAML profile (default: demo)")
    ap.add_argument("--data-root", default="", help="folder with the real datasets (full profile)")
    ap.add_argument("--device", default="", help="cpu | cuda (default: the profile's)")
    ap.add_argument("--force", action="store_true",
                    help="re-execute every notebook even when unchanged (over the library's caches: same numbers)")
    ap.add_argument("--fresh", action="store_true",
                    help="delete the profile's caches and result files first: recompute everything from scratch")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names start with these, e.g. 05 06")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        run_all(a.profile, data_root=a.data_root, device=a.device, force=a.force, fresh=a.fresh, only=a.only,
                progress=not a.no_progress)
    except NotebookFailed as err:
        print(f"mammo-kt: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1

    return 0


if __name__ == "__main__":
    from .cli import main as cli_main  # the command line's one-line errors and --debug

    sys.exit(cli_main(["reproduce", *sys.argv[1:]]))

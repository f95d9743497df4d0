"""Run the numbered notebooks in order with papermill: the one-command reproduction.

    python -m mammo_lib.reproduce --profile demo            # the default main job
    python -m mammo_lib.reproduce --profile full --data-root /data/mammo --device cuda

Executed notebooks go to ``<work_dir>/executed/``. A notebook whose inputs are unchanged since its
last successful run (same notebook, parameters, profile, library source and upstream notebooks) is
skipped; the first failure stops the run and names the notebook and the cell.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .config import find_project_root, load_config
from .report import write_json


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


def run_all(profile: str = "demo", *, data_root: str = "", device: str = "", force: bool = False,
            only: Sequence[str] | None = None, root: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Execute every notebook (or those whose names start with an entry of ``only``) in order."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    root = root or find_project_root()
    cfg = load_config(profile, {"data_root": data_root or None, "device": device or None}, root=root,
                      honour_env=False)
    out_dir = cfg.work_dir / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Papermill shows its own per-cell bar; the notebooks' tqdm bars would flood the executed notebooks.
    params = {"profile": profile, "data_root": data_root, "device": device, "progress": False}
    upstream = _digest(cfg.to_dict(), _library_digest(root))
    timings: dict[str, Any] = {}
    timings_file = out_dir / "timings.json"
    if timings_file.exists():
        timings = json.loads(timings_file.read_text())
    t_all = time.perf_counter()
    for nb in notebooks(root):
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
        print(f"[run ] {nb.name}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, cwd=str(nb.parent),
                                kernel_name="python3", progress_bar=progress, log_output=False)
        except PapermillExecutionError as err:
            raise NotebookFailed(
                f"{nb.name} failed at cell {err.cell_index} (execution count {err.exec_count}): "
                f"{err.ename}: {err.evalue}. The executed notebook is {out_dir / nb.name}") from None
        dt = time.perf_counter() - t0
        timings[nb.stem] = round(dt, 1)
        write_json(timings_file, timings)
        write_json(stamp, {"digest": digest, "seconds": round(dt, 1)})
        print(f"[done] {nb.name} in {dt:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    print(f"all notebooks done in {total:.0f} s; results in {cfg.results_dir}", flush=True)
    return {"results_dir": cfg.results_dir, "seconds": total, "timings": timings}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the reproduction; exit status 1 names the failing notebook and cell."""
    ap = argparse.ArgumentParser(prog="mammo-kt reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", help="smoke | demo | full | path to a YAML profile (default: demo)")
    ap.add_argument("--data-root", default="", help="folder with the real datasets (full profile)")
    ap.add_argument("--device", default="", help="cpu | cuda (default: the profile's)")
    ap.add_argument("--force", action="store_true", help="rerun notebooks even when unchanged")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names start with these, e.g. 05 06")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        run_all(a.profile, data_root=a.data_root, device=a.device, force=a.force, only=a.only,
                progress=not a.no_progress)
    except NotebookFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

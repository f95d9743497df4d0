"""Run the numbered notebooks in order with papermill: the one-command reproduction.

    python -m mammo_lib.reproduce --profile demo            # the default main job
    python -m mammo_lib.reproduce --profile full --data-root /data/mammo --device cuda

Executed notebooks go to ``<work_dir>/executed/``. A notebook whose inputs are unchanged since its
last successful run (same notebook, parameters, profile, library source and upstream notebooks) is
skipped; the first failure stops the run and names the notebook and the cell.

While a notebook runs, its progress bars (steps, folds, epochs, ROIs) are shown in the terminal,
cut to its width, after the notebook's elapsed time, its time left and the whole run's::

    [05 1:23, ~2:10 left, all ~6:40] heads (4 trained together): 12/30 [00:41<01:02, 3.44s/it]

The time left in a notebook is the longest of its running bars' (tqdm's rate times the work left)
and of its recorded time minus the elapsed; the whole run adds the later notebooks' recorded
times, scaled by how much slower or quicker this run has been so far (:func:`speed_factor`).
``?`` / ``>`` mark an unknown part (a notebook past its recorded time with no bar to tell).
Times are recorded per kind of run in ``<results_dir>/timings.json`` (:data:`RUN_KINDS`: a
``--force`` run over the caches never replaces a fresh run's time, and a fresh run is never
estimated from a cached one), with the machine's load average and cores.

``--force`` re-executes every notebook over the library's caches (same numbers, quicker);
``--fresh`` deletes the profile's working folder (caches, checkpoints, trainings) and its result
files first, so everything is recomputed from scratch: that is what reproduces the committed
``results/`` from a clean clone.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from mammo_lib.repro.config import find_project_root, load_config
from mammo_lib.utils.files import write_json


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


#: Kinds of run whose times are recorded apart: ``fresh`` starts from an empty working folder
#: (``--fresh``, or a first run), ``cached`` re-executes over the folder's caches (``--force``, or
#: notebooks whose inputs changed). A cached run is several times quicker than a fresh one.
RUN_KINDS = ("fresh", "cached")
#: The recorded times, in the profile's results folder (committed for the demo profile).
TIMES_FILE = "timings.json"
#: Bounds of the speed factor (this run's time / the recorded time) used to scale what is left.
SPEED_BOUNDS = (0.25, 10.0)


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _fmt_left(seconds: float) -> str:
    """``m:ss`` rounded up: a positive time left never prints as ``0:00``."""
    seconds = max(0, int(math.ceil(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------- progress bars


@dataclass(frozen=True)
class BarState:
    """One progress bar as its last text line says: ``desc: n/total [elapsed<remaining, rate]``
    (``total`` and ``remaining`` are ``None`` when tqdm prints ``?``)."""

    desc: str
    n: int
    total: Optional[int]
    elapsed: float
    remaining: Optional[float]


_BAR = re.compile(r"(?P<n>\d+)/(?P<total>\d+|\?)\s*\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:]+|\?)")
#: Terminal control sequences (nested tqdm bars move the cursor up with ``ESC [A``): never echoed.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def _clock(text: str) -> float:
    """Seconds of tqdm's ``[H:]MM:SS``."""
    out = 0.0
    for part in text.split(":"):
        out = 60 * out + int(part)
    return out


def parse_bar(line: str) -> Optional[BarState]:
    """The state of a tqdm text line (compact :data:`mammo_lib.utils.progress.FILE_BAR_FORMAT` or
    tqdm's default with a bar graphic), or ``None`` if the line is not a bar.

    >>> parse_bar("folds: 2/5 [01:00<01:30, 30.00s/it]")
    BarState(desc='folds', n=2, total=5, elapsed=60.0, remaining=90.0)
    """
    m = _BAR.search(line)
    if m is None:
        return None
    desc = re.sub(r"\s*\d+%\|.*$", "", line[:m.start()]).strip().rstrip(":").strip()
    total = None if m["total"] == "?" else int(m["total"])
    remaining = None if m["remaining"] == "?" else _clock(m["remaining"])
    return BarState(desc, int(m["n"]), total, _clock(m["elapsed"]), remaining)


def bar_left(bar: BarState, age: float = 0.0) -> Optional[float]:
    """Seconds left in a running bar ``age`` seconds after its line was written: tqdm's estimate
    (its rate times the iterations left), else ``elapsed * left / done``; ``None`` when the bar
    is finished, has no total or no iteration done yet, or is late on its own estimate.

    >>> bar_left(BarState("folds", 2, 5, 60.0, 90.0), age=10.0)
    80.0
    >>> bar_left(BarState("folds", 2, 5, 60.0, None))
    90.0
    """
    if bar.total is None or bar.n >= bar.total or bar.n <= 0:
        return None
    left = bar.remaining if bar.remaining is not None else bar.elapsed * (bar.total - bar.n) / bar.n
    left -= age
    return left if left > 0 else None


class BarLog:
    """The running bars of a progress file, read incrementally: the latest line of each bar
    (by description) and when it was read; a bar's ``[end]`` line removes it."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0
        self.bars: dict[str, tuple[BarState, float]] = {}
        self.last = ""

    def feed(self, text: str, now: float) -> None:
        """Take new text of the file, read at time ``now`` (seconds, any clock)."""
        from mammo_lib.utils.progress import END_MARK

        for part in text.replace("\r", "\n").split("\n"):
            part = _ESCAPES.sub("", part).strip()
            if not part:
                continue
            if part.startswith(END_MARK.strip()):
                self.bars.pop(part[len(END_MARK):].strip(), None)
                continue
            self.last = part
            bar = parse_bar(part)
            if bar is not None:
                self.bars[bar.desc] = (bar, now)

    def poll(self, now: float) -> None:
        """Read what was appended to the file since the last poll."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        self.offset += len(data)
        if data:
            self.feed(data.decode(errors="replace"), now)

    def lefts(self, now: float) -> list[float]:
        """Seconds left in each running bar that can say (:func:`bar_left`)."""
        out = [bar_left(bar, now - seen) for bar, seen in self.bars.values()]
        return [x for x in out if x is not None]


# ----------------------------------------------------------------------------- estimates


def speed_factor(done_actual: float, done_expected: float, elapsed: float = 0.0,
                 expected_here: Optional[float] = None) -> float:
    """How much slower (> 1) or quicker (< 1) this run is than the recorded times: the notebooks
    done so far (``done_actual`` s against ``done_expected`` s recorded) and, when the running
    notebook is already past its scaled time, that one too (its time is at least ``elapsed``).
    Clamped to :data:`SPEED_BOUNDS`; 1 with nothing to compare.

    >>> speed_factor(120.0, 60.0)          # twice as slow so far
    2.0
    >>> speed_factor(0.0, 0.0, elapsed=90.0, expected_here=60.0)   # the first notebook is late
    1.5
    """
    s = done_actual / done_expected if done_expected > 0 else 1.0
    if expected_here and elapsed > expected_here * s:
        s = (done_actual + elapsed) / (done_expected + expected_here)
    return min(max(s, SPEED_BOUNDS[0]), SPEED_BOUNDS[1])


def time_left_here(elapsed: float, expected_here: Optional[float], bar_lefts: Sequence[float],
                   speed: float = 1.0) -> Optional[float]:
    """Seconds left in the running notebook: the longest of its running bars' times left and of
    its recorded time (scaled by ``speed``) minus ``elapsed``; ``None`` when neither says (the
    notebook is past its recorded time and no bar can tell), never 0 while it runs.

    >>> time_left_here(30.0, 100.0, [20.0], speed=1.0)     # the record says 70 s, the bar 20 s
    70.0
    >>> time_left_here(150.0, 100.0, [40.0], speed=1.5)    # past its scaled time: the bar says
    40.0
    >>> time_left_here(150.0, 100.0, [], speed=1.5) is None
    True
    """
    cands = [b for b in bar_lefts if b > 0]
    if expected_here:
        hist = expected_here * speed - elapsed
        if hist > 0:
            cands.append(hist)
    return max(cands) if cands else None


def eta_text(elapsed: float, here: Optional[float], rest: float, rest_unknown: int, speed: float,
             expected_here: Optional[float] = None) -> str:
    """The runner's ``m:ss, ~m:ss left, all ~m:ss`` for the running notebook: time left here (or
    ``?`` after the recorded time), and for the whole run ``here + speed * rest`` (``>`` when a
    part is unknown: this notebook's time left or ``rest_unknown`` notebooks without a record).

    >>> eta_text(30.0, 70.0, 200.0, 0, 1.0)
    '0:30, ~1:10 left, all ~4:30'
    >>> eta_text(150.0, None, 200.0, 1, 1.5, expected_here=100.0)
    '2:30, ? left (last 1:40), all >5:00'
    """
    msg = _fmt(elapsed)
    if here is not None:
        msg += f", ~{_fmt_left(here)} left"
    elif expected_here:
        msg += f", ? left (last {_fmt(expected_here)})"
    total = (here or 0.0) + speed * rest
    if total > 0:
        msg += f", all {'>' if here is None or rest_unknown else '~'}{_fmt_left(total)}"
    return msg


def fit_width(line: str, width: Optional[int] = None) -> str:
    """``line`` cut to the terminal's width (``width``, else ``shutil.get_terminal_size``, 80
    when unknown) minus one column, with ``...`` where cut: a progress line never wraps.

    >>> fit_width("x" * 100, 20)
    'xxxxxxxxxxxxxxxx...'
    """
    width = width or shutil.get_terminal_size((80, 24)).columns
    room = max(10, width - 1)
    return line if len(line) <= room else line[:room - 3] + "..."


# ----------------------------------------------------------------------------- recorded times


def load_times(results_dir: Path) -> dict[str, Any]:
    """The recorded wall times of the profile (``<results_dir>/timings.json``): per kind of run
    (:data:`RUN_KINDS`) the latest time of each notebook and the last complete run's total with
    the machine's load. Missing or unreadable: no record."""
    try:
        data = json.loads((Path(results_dir) / TIMES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _notebook_times(record: Mapping[str, Any], kind: str) -> dict[str, float]:
    got = (record.get(kind) or {}).get("notebooks") or {}
    return {k: float(v) for k, v in got.items() if isinstance(v, (int, float))}


def expected_times(kind: str, *records: Mapping[str, Any],
                   legacy: Optional[Mapping[str, Any]] = None) -> dict[str, float]:
    """Seconds per notebook to expect in a run of ``kind``: per notebook, the first record that
    has a time of that kind; a cached run falls back on fresh times (an upper bound), never the
    other way (a fresh run estimated from a cached one would promise a third of its time).
    ``legacy``: per-notebook times of a fresh run kept by an older version (provenance.json).

    >>> rec = {"fresh": {"notebooks": {"01": 60.0, "02": 90.0}}, "cached": {"notebooks": {"01": 6.0}}}
    >>> expected_times("cached", rec)
    {'01': 6.0, '02': 90.0}
    >>> expected_times("fresh", rec)
    {'01': 60.0, '02': 90.0}
    """
    kinds = ("cached", "fresh") if kind == "cached" else ("fresh",)
    out: dict[str, float] = {}
    for k in kinds:
        for rec in records:
            for nb, t in _notebook_times(rec, k).items():
                out.setdefault(nb, t)
        if legacy and k == "fresh":
            for nb, t in legacy.items():
                if isinstance(t, (int, float)):
                    out.setdefault(nb, float(t))
    return out


def _legacy_times(results_dir: Path) -> dict[str, Any]:
    """Per-notebook times of provenance.json as an older version wrote them (of a fresh run)."""
    try:
        known = json.loads((Path(results_dir) / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}
    got = known.get("wall time per notebook, latest execution (s)", {}) if isinstance(known, dict) else {}
    return got if isinstance(got, dict) else {}


def _work_dir_empty(cfg: Any) -> bool:
    """Whether the profile's working folder holds nothing (its results folder, where it lies
    inside, aside): a run from there computes everything, a fresh run."""
    work, results = Path(cfg.work_dir), Path(cfg.results_dir).resolve()
    if not work.is_dir():
        return True
    return not any(p.resolve() != results for p in work.iterdir())


def _load() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def record_time(results_dir: Path, kind: str, notebook: str, seconds: float, *,
                load: Optional[float] = None) -> dict[str, Any]:
    """Record one notebook's wall time under ``kind`` (its other kind is left alone: a cached run
    never overwrites a fresh time). Returns the record written."""
    if kind not in RUN_KINDS:
        raise ValueError(f"kind must be one of {RUN_KINDS}, got {kind!r}")
    rec = load_times(results_dir)
    part = rec.setdefault(kind, {})
    part.setdefault("notebooks", {})[notebook] = round(float(seconds), 1)
    part["notebooks"] = dict(sorted(part["notebooks"].items()))
    if load is not None:
        part.setdefault("load average (1 min) at each notebook's end", {})[notebook] = load
    rec["note"] = ("wall times (s) recorded by mammo_lib.reproduce; fresh = from an empty working folder "
                   "(--fresh), cached = over the working folder's caches (--force); loads are the 1-minute "
                   "load average, cpus the machine's cores")
    write_json(Path(results_dir) / TIMES_FILE, dict(sorted(rec.items())))
    return rec


def record_run(results_dir: Path, kind: str, seconds: float, *, load_start: Optional[float],
               load_end: Optional[float]) -> dict[str, Any]:
    """Record the total wall time of a complete run of ``kind`` (every notebook executed) with the
    load average at its start and end and the machine's cores."""
    rec = load_times(results_dir)
    rec.setdefault(kind, {})["last complete run"] = {
        "total (s)": round(float(seconds), 1), "load average (1 min) at start": load_start,
        "load average (1 min) at end": load_end, "cpus": os.cpu_count(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(Path(results_dir) / TIMES_FILE, dict(sorted(rec.items())))
    return rec


class _Watcher(threading.Thread):
    """Prints what the running notebook's progress bars say, with elapsed and estimated time left
    (here and in all, :func:`eta_text`), cut to the terminal's width."""

    def __init__(self, name: str, path: Path, expected: Optional[float], rest: float, rest_unknown: int,
                 done_actual: float, done_expected: float, every: float = 10.0):
        super().__init__(daemon=True)
        self.name_, self.expected, self.rest, self.rest_unknown = name, expected, rest, rest_unknown
        self.done_actual, self.done_expected, self.every = done_actual, done_expected, every
        self.log = BarLog(path)
        self.t0 = time.perf_counter()
        self.stop = threading.Event()

    def line(self) -> str:
        now = time.perf_counter()
        self.log.poll(now)
        el = now - self.t0
        speed = speed_factor(self.done_actual, self.done_expected, el, self.expected)
        here = time_left_here(el, self.expected, self.log.lefts(now), speed)
        msg = f"    [{self.name_} " + eta_text(el, here, self.rest, self.rest_unknown, speed, self.expected) + "]"
        return fit_width(msg + (f" {self.log.last}" if self.log.last else ""))

    def run(self) -> None:
        last, last_t = "", 0.0
        while not self.stop.wait(1.0):
            self.log.poll(time.perf_counter())
            status = self.log.last
            now = time.perf_counter()
            if status != last and now - last_t >= 2.0 or now - last_t >= self.every:
                print(self.line(), flush=True)
                last, last_t = status, now


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
    :class:`~mammo_lib.data.records.DataError` names each missing dataset with the first missing path and
    says what could run on what is present (Table 2 needs BCDR D01 + F01, the DDSM pre-training
    needs CBIS-DDSM; README "Real data"). The phantom profiles need nothing.

    >>> check_real_data(load_config("full", {"data_root": "/data/mammo"}))  # doctest: +SKIP
    DataError: BCDR-D01 missing at /data/mammo/BCDR/BCDR-D01_dataset/bcdr_d01_outlines.csv; ...
    """
    from mammo_lib.data.records import DataError

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
    # Times recorded before --fresh deletes anything; a run from an empty working folder is fresh.
    kind = "fresh" if fresh or _work_dir_empty(cfg) else "cached"
    recorded = load_times(cfg.results_dir)
    expected = expected_times(kind, recorded, legacy=_legacy_times(cfg.results_dir))
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
    t_all, load_start = time.perf_counter(), _load()
    nbs = notebooks(root)
    selected = [nb for nb in nbs if not only or any(nb.name.startswith(o) for o in only)]
    done_actual = done_expected = 0.0
    executed_all = not only
    for i, nb in enumerate(nbs):
        digest = _digest(upstream, nb.read_bytes().decode(), params)
        upstream = digest
        stamp = out_dir / f"{nb.stem}.done.json"
        if nb not in selected:
            continue
        later = selected[selected.index(nb) + 1:]
        if not force and stamp.exists() and json.loads(stamp.read_text()).get("digest") == digest:
            print(f"[skip] {nb.name}: unchanged since its last successful run", flush=True)
            executed_all = False
            continue
        stamp.unlink(missing_ok=True)
        rest = sum(expected.get(n.stem, 0.0) for n in later)
        rest_unknown = sum(n.stem not in expected for n in later)
        est = expected.get(nb.stem)
        speed = speed_factor(done_actual, done_expected)
        head = f"[run ] {nb.name} ({i + 1}/{len(nbs)})"
        if est:
            source = kind if kind == "fresh" or nb.stem in _notebook_times(recorded, kind) else "fresh"
            head += f", last {source} run {_fmt(est)}"
        if est or rest:
            head += (f", all {'>' if est is None or rest_unknown else '~'}"
                     f"{_fmt_left(speed * ((est or 0.0) + rest))}")
        print(fit_width(head), flush=True)
        t0 = time.perf_counter()
        progress_file.write_text("")
        watcher = (_Watcher(nb.stem[:2], progress_file, est, rest, rest_unknown, done_actual, done_expected)
                   if progress else None)
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
        if est:
            done_actual, done_expected = done_actual + dt, done_expected + est
        record_time(cfg.results_dir, kind, nb.stem, dt, load=_load())
        write_json(stamp, {"digest": digest, "seconds": round(dt, 1), "kind": kind})
        print(f"[done] {nb.name} in {dt:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    if executed_all and timings:
        record_run(cfg.results_dir, kind, total, load_start=load_start, load_end=_load())
    print(f"all notebooks done in {total:.0f} s ({kind} run; times in {cfg.results_dir / TIMES_FILE}); "
          f"results in {cfg.results_dir}", flush=True)
    return {"results_dir": cfg.results_dir, "seconds": total, "timings": timings, "kind": kind}

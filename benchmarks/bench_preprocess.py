"""Benchmark: preprocessing (DICOM decoding + ROI extraction, Sec. 3.2) of a CBIS-DDSM style DICOM
tree with 1 worker vs several, medians of interleaved repeats and speed-ups measured in this one
run (a shared machine is noisy: compare ratios, and read them with the load average recorded; with
``sched_autogroup_enabled`` = 1, the default of many distributions, the workers of one session share
one CPU share while other sessions keep the cores busy, so only an idle machine shows the scaling).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_preprocess.py [--n-cases 16] [--workers 1 2]
        [--repeats 3] [--image-shape 2560 2048] [--tree-dir runs/bench_cbis_tree] [--out results/benchmarks/preprocess_scaling.json]

The phantom tree (``phantom.write_cbis_tree``, every other full mammogram RLE-compressed) is cached
in ``--tree-dir`` between runs. Every timed run preprocesses into a fresh cache folder. Peak RSS per
worker process is sampled with psutil every 50 ms (the parent's when workers=1), so it is a lower
bound for spikes shorter than that: RSS counts pages shared with the parent by fork, USS the
worker's own; ``rusage_children_maxrss_mb`` (``getrusage(RUSAGE_CHILDREN)``)
is the largest child ever reaped by this benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

try:
    import psutil  # optional (not a dependency): per-worker peaks; without it only RUSAGE_CHILDREN
except ImportError:  # pragma: no cover
    psutil = None

from mammo_lib.data.cbis_ddsm import load_cbis_ddsm
from mammo_lib.data.phantom import PhantomConfig, write_cbis_tree
from mammo_lib.data.preprocess import preprocess
from mammo_lib.utils.files import write_json


class _RssSampler:
    """Peak RSS and USS (MiB) per process: this one's children (``children=True``) or this process."""

    def __init__(self, children: bool, period_s: float = 0.05) -> None:
        self.children, self.period_s, self.peaks, self.uss, self._stop = children, period_s, {}, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = me.children(recursive=True) if self.children else [me]
            for p in procs:
                try:
                    mem = p.memory_full_info()  # uss: pages of this process alone (not shared by fork)
                except psutil.Error:
                    continue
                self.peaks[p.pid] = max(self.peaks.get(p.pid, 0.0), mem.rss / 2**20)
                self.uss[p.pid] = max(self.uss.get(p.pid, 0.0), mem.uss / 2**20)
            self._stop.wait(self.period_s)

    def __enter__(self) -> "_RssSampler":
        if psutil is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _autogroup() -> str | None:
    """Linux's ``sched_autogroup_enabled``: when "1", the processes of one session (the parent and
    its workers) share one CPU share on a busy machine, so extra workers add little there."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return None


def _peaks(runs: dict[int, list[dict[str, Any]]], key: str) -> dict[str, float | None]:
    """Largest sampled value per worker count (None without psutil)."""
    return {str(w): (max(max(r[key] or [0.0]) for r in rs) if psutil is not None else None) for w, rs in runs.items()}


def run_once(records: list, workers: int, scratch: Path) -> dict[str, Any]:
    cache = Path(tempfile.mkdtemp(dir=scratch, prefix=f"w{workers}-"))
    try:
        with _RssSampler(children=workers > 1) as rss:
            t0 = time.perf_counter()
            rs = preprocess(records, cache, workers=workers, on_error="skip", progress=False)
            wall = time.perf_counter() - t0
        return {"wall_s": wall, "n_rois": len(rs), "n_excluded": len(rs.exclusions),
                "peak_rss_mb_per_process": sorted((round(v, 1) for v in rss.peaks.values()), reverse=True),
                "peak_uss_mb_per_process": sorted((round(v, 1) for v in rss.uss.values()), reverse=True)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cases", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="worker counts to compare (default: 1 and os.cpu_count())")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-shape", type=int, nargs=2, default=[2560, 2048], metavar=("ROWS", "COLS"),
                    help="full-field size of the phantom mammograms (real CBIS-DDSM: about 5000 x 3000)")
    ap.add_argument("--tree-dir", default="runs/bench_cbis_tree")
    ap.add_argument("--out", default="results/benchmarks/preprocess_scaling.json")
    a = ap.parse_args(argv)
    cpus = os.cpu_count() or 1
    workers = sorted(set(a.workers or [1, cpus]) | {1})
    load_start = os.getloadavg()

    t0 = time.perf_counter()
    shape = (int(a.image_shape[0]), int(a.image_shape[1]))
    root = write_cbis_tree(Path(a.tree_dir) / f"n{a.n_cases}-{shape[0]}x{shape[1]}", PhantomConfig(image_shape=shape),
                           n_cases=a.n_cases)
    tree_s = time.perf_counter() - t0
    csvs = sorted(root.glob("mass_case_description_*_set.csv"))
    records = load_cbis_ddsm(csvs, dicom_root=root, on_error="skip", progress=False).records

    scratch = Path(tempfile.mkdtemp(prefix="bench_preprocess-"))
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
    try:
        for _ in range(a.repeats):  # interleaved: 1, N, 1, N, ... so that load drifts hit both
            for w in workers:
                runs[w].append(run_once(records, w, scratch))
                print(f"workers={w}: {runs[w][-1]['wall_s']:.2f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {w: statistics.median(r["wall_s"] for r in runs[w]) for w in workers}
    out = {
        "machine": {"cpu_count": cpus, "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "sched_autogroup_enabled": _autogroup(), "psutil": psutil is not None, "platform": platform.platform(), "python": platform.python_version()},
        "n_cases": a.n_cases, "image_shape": list(shape), "n_records": len(records), "repeats": a.repeats,
        "tree": str(root), "tree_build_s": round(tree_s, 2),
        "median_wall_s": {str(w): round(med[w], 3) for w in workers},
        "speedup_vs_1": {str(w): round(med[1] / med[w], 3) for w in workers},
        "peak_rss_mb_per_worker": _peaks(runs, "peak_rss_mb_per_process"),
        "peak_uss_mb_per_worker": _peaks(runs, "peak_uss_mb_per_process"),
        "rusage_children_maxrss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "runs": {str(w): runs[w] for w in workers},
    }
    write_json(Path(a.out), out)
    print(json.dumps({k: out[k] for k in ("machine", "median_wall_s", "speedup_vs_1", "peak_rss_mb_per_worker",
                                          "peak_uss_mb_per_worker")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

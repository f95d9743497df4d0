"""Table 2 as independent jobs: one job = one Table 2 configuration and one outer fold, run in any
process, on any GPU or cluster node, in any order; :func:`collect` merges what is done (Sec. 5.1;
``docs/DECISIONS.md``, "Table 2 as independent jobs").

A job's spec is a Table 2 row name (:data:`JOB_SPECS`). The instrument's unit is (condition,
initialisation, fold), so every spec maps to the runs it needs, in every condition of the profile:

- ``<init>_finetune``: the beta = 0 grid point of ``<init>`` (fine-tuning; the grid trains together,
  so this job trains the whole grid and records its beta = 0 point);
- ``<init>_transfer``: the whole beta grid of ``<init>`` (beta = 0 included: the choice is made over
  the grid on the fold's inner split), the choice, and the two controls (``<init>_shuffled``,
  ``<init>_oracle``);
- ``mask_only``: the mask-only model.

Runs needed by two jobs (the grid: ``<init>_finetune`` and ``<init>_transfer``) are trained once:
each group of runs trained together (the grid, the controls) and each single run is guarded by a
lock, and ``result.json`` is re-read once the lock is held. The
shared preconditions (phantom, ROI caches, generic and DDSM pre-training, trunk caches) are built
under a lock too, by the first job to need them.

>>> from mammo_lib.repro.config import load_config
>>> cfg = load_config("smoke")
>>> all_jobs(cfg)[:3]
[('imagenet_finetune', 0), ('imagenet_finetune', 1), ('imagenet_transfer', 0)]
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.table2 import TABLE2_SPECS

#: Job spec names: Table 2's rows and the mask-only model (Fig. 4(b)).
JOB_SPECS = TABLE2_SPECS + ("mask_only",)
#: What :func:`run_job` can return.
STATUSES = ("ran", "done", "busy")


@dataclass
class JobOutcome:
    """The outcome of one job: ``status`` ``"ran"`` (trained at least one run here), ``"done"`` (all
    read back) or ``"busy"`` (``wait=False`` and another process holds a run's lock); ``runs`` and
    ``predictions``: the rows it recorded (as in :class:`~mammo_lib.protocol.instrument.InstrumentResult`),
    ``trained``: how many runs this call trained."""

    spec: str
    fold: int
    status: str
    runs: pd.DataFrame
    predictions: pd.DataFrame
    trained: int = 0
    message: str = ""


@dataclass
class Collected:
    """What :func:`collect` found: ``result`` (the merged :class:`~mammo_lib.protocol.instrument.InstrumentResult`
    of the runs done), ``done`` and ``missing`` (spec, fold) pairs, ``tables`` (the output of
    :func:`mammo_lib.repro.steps.table2_finetune_vs_transfer.table2_tables` when asked for and nothing is missing)."""

    result: Any
    done: list[tuple[str, int]]
    missing: list[tuple[str, int]]
    n_jobs: int
    prepared: bool = True
    tables: Optional[dict[str, Any]] = None

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        """One paragraph: how many jobs are done and which (spec, fold) pairs are missing."""
        if not self.prepared:
            return (f"Nothing to collect yet: the shared preconditions (pre-training, trunk caches) are not built, "
                    f"so all {self.n_jobs} jobs are missing. Run them with `run_job` (or `mammo-kt train --spec S "
                    f"--fold K`) or `submit`.")
        if self.complete:
            return (f"All {self.n_jobs} Table 2 jobs are done ({len(self.result.runs)} run rows merged); "
                    f"the tables can be written.")
        miss = ", ".join(f"{s} fold {k}" for s, k in self.missing)
        return (f"{len(self.done)} of {self.n_jobs} Table 2 jobs are done; {len(self.missing)} missing: {miss}. "
                f"The merged result holds only the runs done; run the missing jobs, then collect again.")


def _n_splits(cfg: Config) -> int:
    return int(cfg.section("cv")["n_splits"])


def all_jobs(cfg: Config) -> list[tuple[str, int]]:
    """Every (spec, fold) job of the profile, spec by spec (5 specs x ``cv.n_splits`` folds)."""
    return [(s, k) for s in JOB_SPECS for k in range(_n_splits(cfg))]


def check_job(cfg: Config, spec: str, fold: int) -> None:
    """Raise ``ValueError`` naming the valid specs / folds when ``(spec, fold)`` is not a job."""
    if spec not in JOB_SPECS:
        raise ValueError(f"unknown Table 2 spec {spec!r}; valid specs: {', '.join(JOB_SPECS)}")
    n = _n_splits(cfg)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < n:
        raise ValueError(f"fold {fold!r} out of range: profile {cfg.name!r} has cv.n_splits = {n}, "
                         f"valid folds 0..{n - 1}")


def _instruments(cfg: Config, datas: Any) -> list[Any]:
    """One instrument per replicate of the design (trunk seed, fold seed): :func:`mammo_lib.repro.table2.instruments`."""
    from mammo_lib.repro.table2 import instruments

    return instruments(cfg, datas)


def prepare(cfg: Config, *, wait: bool = True, progress: bool = True):
    """The shared preconditions (ROI sets, both trunks of every trunk seed, trunk caches), built once
    under the lock ``<work_dir>/prepare.lock`` and read back by every other job; returns
    ``{trunk seed: (data, trunks)}`` (:func:`mammo_lib.repro.table2.design_data`).
    ``wait=False``: :class:`~mammo_lib.protocol.instrument.RunBusy` while another process holds the lock."""
    from filelock import Timeout

    from mammo_lib.protocol.instrument import RunBusy
    from mammo_lib.repro.table2 import design_data, lock_for

    lock = lock_for(cfg.work_dir / "prepare")
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout as err:
        raise RunBusy(f"{cfg.work_dir}: the shared preconditions are being built by another process "
                      f"(lock {lock.lock_file})") from err
    try:
        return design_data(cfg, progress=progress)
    finally:
        lock.release()


def _parts(inst: Any, spec: str, fold: int, *, mode: str, wait: bool, bar: Any) -> list[Any]:
    if spec == "mask_only":
        return [inst.mask_unit(c, fold, mode=mode, wait=wait, bar=bar) for c in inst.conditions]
    init, meth = spec.split("_", 1)
    return [inst.unit(c, init, fold, finetune_only=meth == "finetune", mode=mode, wait=wait, bar=bar)
            for c in inst.conditions]


def run_job(cfg: Config, spec: str, fold: int, *, wait: bool = True, progress: bool = True) -> JobOutcome:
    """Run (or read back) one Table 2 job: every run ``spec`` needs in fold ``fold``, in every
    condition and every replicate of the design (trunk seed x fold seed; module docstring). ``wait=False``: return status ``"busy"`` instead of waiting
    for a run another process is training.

    >>> # out = run_job(load_config("demo"), "ddsm_transfer", 3); out.status, len(out.runs)
    """
    from mammo_lib.protocol.instrument import RunBusy
    from mammo_lib.utils.progress import tqdm

    check_job(cfg, spec, fold)
    try:
        datas = prepare(cfg, wait=wait, progress=progress)
    except RunBusy as err:
        return JobOutcome(spec, fold, "busy", pd.DataFrame(), pd.DataFrame(), message=str(err))
    from mammo_lib.protocol.instrument import concat_results

    insts = _instruments(cfg, datas)
    bar = tqdm(disable=not progress, desc=f"Table 2 job {spec} fold {fold} (runs)")
    results, trained = [], 0
    try:
        for inst in insts:
            parts = _parts(inst, spec, fold, mode="train", wait=wait, bar=bar)
            trained += sum(p.trained for p in parts)
            results.append(inst.merge(parts))
    except RunBusy as err:  # the runs finished before stay done; a later call reads them back
        empty = insts[0].merge([])
        return JobOutcome(spec, fold, "busy", empty.runs, empty.predictions, message=str(err))
    finally:
        bar.close()
    res = concat_results(results)
    return JobOutcome(spec, fold, "ran" if trained else "done", res.runs, res.predictions, trained=trained)


def _is_prepared(cfg: Config) -> bool:
    """Whether the preconditions' marker exists, was written by this code, and its checkpoints exist."""
    from mammo_lib.protocol.instrument import CODE
    from mammo_lib.repro.table2 import prepared_marker

    m = prepared_marker(cfg)
    if not m.exists():
        return False
    saved = json.loads(m.read_text())
    if saved.get("code") != CODE:
        return False
    for t in saved.get("trunks", {}).values():
        w = t.get("weights")
        if w and w not in ("imagenet", "none") and not Path(w).exists():
            return False
    return True


def collect(cfg: Config, *, tables: bool = False, progress: bool = False) -> Collected:
    """Merge the runs done into the :class:`~mammo_lib.protocol.instrument.InstrumentResult` that
    :func:`mammo_lib.repro.table2.run` would return (same rows, same order) and list the missing
    (spec, fold) pairs, training nothing. ``tables=True`` and nothing missing: also write
    Table 2's tables and figures (:func:`mammo_lib.repro.steps.table2_finetune_vs_transfer.table2_tables`, from this result).

    >>> # c = collect(load_config("demo")); print(c.describe()); c.missing
    """
    from mammo_lib.repro import table2
    from mammo_lib.protocol.instrument import concat_results
    from mammo_lib.repro.table2 import design_data

    jobs = all_jobs(cfg)
    if not _is_prepared(cfg):
        return Collected(result=None, done=[], missing=jobs, n_jobs=len(jobs), prepared=False)
    datas = design_data(cfg, progress=progress)  # preconditions exist: read back
    missing_set: set[tuple[str, int]] = set()
    results = []
    for inst in _instruments(cfg, datas):
        units = {(c.name, i, k): inst.unit(c, i, k, mode="read") for c, i, k in inst.units()}
        masks = {(c.name, k): inst.mask_unit(c, k, mode="read") for c in inst.conditions
                 for k in range(inst.n_splits)} if inst.has_mask else {}
        results.append(inst.merge(list(units.values()) + list(masks.values())))
        fine = {f"grid:{p.name}" for p in inst.grid if p.is_finetune}
        for spec, k in jobs:
            if spec == "mask_only":
                gone = not masks or any(masks[(c.name, k)].missing for c in inst.conditions)
            else:
                init, meth = spec.split("_", 1)
                if init not in inst.data.inits:
                    gone = True
                else:
                    miss = [set(units[(c.name, init, k)].missing) for c in inst.conditions]
                    gone = any(m & fine for m in miss) if meth == "finetune" else any(miss)
            if gone:
                missing_set.add((spec, k))
    res = concat_results(results)
    missing = [j for j in jobs if j in missing_set]
    out = Collected(result=res, done=[j for j in jobs if j not in missing], missing=missing, n_jobs=len(jobs))
    if tables and out.complete:
        trunks = {t: tr for t, (_, tr) in datas.items()}
        data0 = next(iter(datas.values()))[0]
        patients = dict(zip(data0.ids, data0.groups if data0.groups is not None else data0.ids))
        from mammo_lib.repro.steps.table2_finetune_vs_transfer import table2_tables

        table2.remember_design(cfg, table2.Design(res, trunks, table2.default_replicate(cfg, trunks), patients, datas))
        out.tables = table2_tables(cfg, progress=progress)
    return out


def _cli_config(args: Any) -> Config:
    """The profile of a ``mammo-kt train`` / ``collect`` process, its threads and precision pinned
    (the process computes as the notebooks do)."""
    from mammo_lib.repro.config import load_config
    from mammo_lib.repro.runtime import pin_numerics

    cfg = load_config(args.profile, {"data_root": getattr(args, "data_root", None) or None,
                                     "device": getattr(args, "device", None) or None})
    pin_numerics(cfg)
    return cfg


def cli_run_job(args: Any) -> int:
    """``mammo-kt train --profile P --spec S --fold K [--no-wait]``: ``args`` has ``profile``,
    ``spec``, ``fold`` and optionally ``data_root``, ``device``, ``no_wait``. Prints the outcome;
    exit code 0 (ran or done) or 3 (busy)."""
    cfg = _cli_config(args)
    out = run_job(cfg, args.spec, int(args.fold), wait=not getattr(args, "no_wait", False))
    print(f"{out.spec} fold {out.fold}: {out.status} ({out.trained} runs trained here, {len(out.runs)} rows)"
          + (f"; {out.message}" if out.message else ""))
    return 3 if out.status == "busy" else 0


def cli_collect(args: Any) -> int:
    """``mammo-kt collect --profile P``: prints :meth:`Collected.describe`, writes the Table 2
    tables when every job is done; exit code 0 (complete) or 1 (jobs missing)."""
    col = collect(_cli_config(args), tables=True)
    print(col.describe())
    return 0 if col.complete else 1


def _worker(cfg: Config, spec: str, fold: int, wait: bool = True) -> dict[str, Any]:
    """What a submitted job runs (in the worker process): :func:`run_job`, a small summary back."""
    from mammo_lib.repro.runtime import pin_numerics

    pin_numerics(cfg)  # a job process computes at the profile's threads and precision, as the notebooks do
    out = run_job(cfg, spec, fold, wait=wait, progress=False)
    return {"spec": out.spec, "fold": out.fold, "status": out.status, "trained": out.trained,
            "rows": len(out.runs), "message": out.message}


def make_executor(cfg: Config, *, folder: str | Path | None = None, partition: Optional[str] = None,
                  gpus_per_job: int = 1, time_min: int = 240, cpus_per_task: int = 4, mem_gb: Optional[int] = None,
                  slurm: Optional[Mapping[str, Any]] = None) -> Any:
    """``submitit.AutoExecutor`` (SLURM when ``sbatch`` is there, else local processes; logs under
    ``folder``, default ``<work_dir>/submitit``) with one job's resources: ``partition``,
    ``gpus_per_job`` (0 on a machine without GPUs), ``time_min``, ``cpus_per_task``, ``mem_gb`` and
    extra ``slurm_*`` parameters (``slurm``; an unknown one raises submitit's ``NameError``)."""
    import submitit

    executor = submitit.AutoExecutor(folder=Path(folder or cfg.work_dir / "submitit"))
    params: dict[str, Any] = {"timeout_min": int(time_min), "gpus_per_node": int(gpus_per_job),
                              "cpus_per_task": int(cpus_per_task), "name": f"mammo-kt-{cfg.name}"}
    if mem_gb is not None:
        params["mem_gb"] = int(mem_gb)
    if partition is not None:
        params["slurm_partition"] = partition
    params.update(slurm or {})
    executor.update_parameters(**params)
    return executor


def submit(cfg: Config, executor: Any = None, *, jobs: Optional[Sequence[tuple[str, int]]] = None,
           folder: str | Path | None = None, partition: Optional[str] = None, gpus_per_job: int = 1,
           time_min: int = 240, cpus_per_task: int = 4, mem_gb: Optional[int] = None,
           slurm: Optional[Mapping[str, Any]] = None) -> list[Any]:
    """Submit Table 2's jobs (default :func:`all_jobs`) through submitit, as one job array: each
    worker runs :func:`run_job`. Without ``executor``, :func:`make_executor` with ``folder``,
    ``partition``, ``gpus_per_job``, ``time_min``, ``cpus_per_task``, ``mem_gb`` and extra ``slurm_*``
    parameters (``slurm``, e.g. ``{"slurm_account": "abc"}``); a given executor (e.g. ``submitit.LocalExecutor``,
    ``submitit.DebugExecutor``) is used as configured. Returns the submitit jobs; once they are
    finished, :func:`collect` merges them.

    >>> # js = submit(load_config("full", {"data_root": "/data"}), partition="gpu", time_min=600)
    >>> # [j.result()["status"] for j in js]; collect(cfg, tables=True)
    """
    jobs = list(all_jobs(cfg) if jobs is None else jobs)
    for spec, k in jobs:
        check_job(cfg, spec, k)
    if executor is None:
        executor = make_executor(cfg, folder=folder, partition=partition, gpus_per_job=gpus_per_job,
                                 time_min=time_min, cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm=slurm)
    if not jobs:
        return []
    return executor.map_array(_worker, [cfg] * len(jobs), [s for s, _ in jobs], [k for _, k in jobs])


__all__ = ["JOB_SPECS", "JobOutcome", "Collected", "all_jobs", "check_job", "prepare", "run_job", "collect",
           "make_executor", "submit", "cli_run_job", "cli_collect"]

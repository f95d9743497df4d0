"""Tests of mammo_lib.repro.jobs: Table 2 as independent (spec, fold) jobs, their locks, collect and
submitit. One tiny prepared work dir (smoke profile, 1 epoch) is shared by the module; every test
starts from an empty instrument folder."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from filelock import FileLock

from mammo_lib.repro import jobs
from mammo_lib.repro import table2
from mammo_lib.repro.config import load_config
from mammo_lib.repro.runtime import pin_numerics
from mammo_lib.utils.precision import in_precision

ROOT = Path(__file__).resolve().parents[2]

# (spec, fold) -> exact ValueError fragment
BAD_JOB_CASES = [
    ("imagenet_shuffled", 0, "unknown Table 2 spec 'imagenet_shuffled'; valid specs: imagenet_finetune, "
                             "imagenet_transfer, ddsm_finetune, ddsm_transfer, mask_only"),
    ("ImageNet_finetune", 0, "unknown Table 2 spec 'ImageNet_finetune'"),
    ("mask_only", 2, "fold 2 out of range: profile 'smoke' has cv.n_splits = 2, valid folds 0..1"),
    ("ddsm_transfer", -1, "fold -1 out of range"),
    ("ddsm_transfer", "0", "fold '0' out of range"),
]
# jobs run -> (spec, fold) pairs collect must call missing (beta = 0 is shared: transfer covers finetune)
PARTIAL_CASES = [
    ([], [(s, k) for s in jobs.JOB_SPECS for k in (0, 1)]),
    ([("ddsm_finetune", 1), ("mask_only", 0)],
     [("imagenet_finetune", 0), ("imagenet_finetune", 1), ("imagenet_transfer", 0), ("imagenet_transfer", 1),
      ("ddsm_finetune", 0), ("ddsm_transfer", 0), ("ddsm_transfer", 1), ("mask_only", 1)]),
    ([("imagenet_transfer", 0)],
     [("imagenet_finetune", 1), ("imagenet_transfer", 1), ("ddsm_finetune", 0), ("ddsm_finetune", 1),
      ("ddsm_transfer", 0), ("ddsm_transfer", 1), ("mask_only", 0), ("mask_only", 1)]),
]
# runs of one job in the smoke profile: 2 conditions x (grid b0, b8, at1000 + 2 controls), or x 1
RUNS_PER_JOB = {"imagenet_transfer": 10, "imagenet_finetune": 6, "mask_only": 2}  # smoke: grid of 3 + 2 controls


#: One trunk seed, one fold seed, the two original controls: the job and lock tests count runs of
#: one replicate (test_replicates_* covers the design's several trunk and fold seeds).
ONE_REPLICATE = {"trunk_seeds": [0], "fold_seeds": [0], "controls": ["shuffled", "oracle"], "positive_control": False}


def _cfg(work: Path, **cv):
    return load_config("smoke", {"work_dir": str(work), "results_dir": str(work / "results"),
                                 "train": {"epochs": 1}, "pretrain": {"epochs": 1}, "cv": {**ONE_REPLICATE, **cv}})


@pytest.fixture(autouse=True)
def _smoke_precision():
    """In-process stages compute in the smoke profile's float64, as its notebooks and job processes do."""
    with in_precision("float64"):
        yield


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = _cfg(tmp_path_factory.mktemp("jobs") / "work")
    with in_precision("float64"):
        jobs.prepare(c, progress=False)
    return c


def _clean(cfg) -> None:
    """An empty instrument folder (the preconditions stay) and no in-process memo."""
    shutil.rmtree(table2.instrument_dir(cfg), ignore_errors=True)
    table2._RUNS.clear()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _tables(res) -> tuple[pd.DataFrame, ...]:
    """Per-fold Table 2 rows of every condition, all runs, predictions, beta choices and the
    dose-response (wall time dropped: the one column a rerun does not reproduce)."""
    pf = pd.concat([res.per_fold(c.name).assign(condition=c.name) for c in res.conditions],
                   ignore_index=True).drop(columns=["wall_s"])
    return pf, res.runs.drop(columns=["wall_s"]), res.predictions, res.choices, res.dose_response()


def _reference(cfg):
    """Table 2 in one process (``table2.run`` -> ``run_instrument``), then an empty folder again;
    at the profile's threads and precision, as the job processes compute (``runtime.pin_numerics``)."""
    _clean(cfg)
    old = torch.get_num_threads()
    try:
        pin_numerics(cfg)
        res, _ = table2.run(cfg, progress=False)
    finally:
        torch.set_num_threads(old)
    out = _tables(res)
    _clean(cfg)
    return out


@pytest.mark.parametrize("spec,fold,msg", BAD_JOB_CASES)
def test_bad_job_rejected_before_any_work(tmp_path, spec, fold, msg):
    c = _cfg(tmp_path / "never")
    with pytest.raises(ValueError, match=re.escape(msg)):
        jobs.run_job(c, spec, fold, progress=False)
    with pytest.raises(ValueError, match="out of range|unknown Table 2 spec"):
        jobs.submit(c, executor=object(), jobs=[("mask_only", 0), (spec, fold)])
    assert not (tmp_path / "never").exists()


def test_all_jobs_order():
    c = load_config("smoke")
    assert jobs.all_jobs(c) == [("imagenet_finetune", 0), ("imagenet_finetune", 1), ("imagenet_transfer", 0),
                                ("imagenet_transfer", 1), ("ddsm_finetune", 0), ("ddsm_finetune", 1),
                                ("ddsm_transfer", 0), ("ddsm_transfer", 1), ("mask_only", 0), ("mask_only", 1)]


def test_collect_before_anything_is_prepared(tmp_path):
    col = jobs.collect(_cfg(tmp_path / "w"))
    assert not col.prepared and col.result is None and len(col.missing) == 10
    assert "all 10 jobs are missing" in col.describe()
    assert not (tmp_path / "w" / "pretrain").exists()


def test_jobs_in_separate_processes_equal_one_process(cfg, tmp_path):
    """Every job in its own process (submitit's LocalExecutor, all at once, so the jobs sharing the
    beta = 0 runs race for their locks) gives exactly Table 2 of ``table2.run`` in one process."""
    import submitit

    ref = _reference(cfg)
    ex = submitit.LocalExecutor(folder=tmp_path / "submitit", python=sys.executable)
    ex.update_parameters(timeout_min=10)
    old = dict(os.environ)
    os.environ.update(_env())  # the workers inherit it: this checkout, same thread count
    try:
        submitted = jobs.submit(cfg, ex)
        outs = [j.result() for j in submitted]
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert sorted((o["spec"], o["fold"]) for o in outs) == sorted(jobs.all_jobs(cfg))
    assert {o["status"] for o in outs} <= {"ran", "done"}
    # every run of the instrument trained exactly once over all processes: 2 conditions x
    # (2 inits x 2 folds x (3 grid + 2 controls) + 2 folds x mask only) = 44
    assert sum(o["trained"] for o in outs) == 44
    col = jobs.collect(cfg)
    assert col.complete and col.missing == [] and len(col.done) == 10
    got = _tables(col.result)
    for a, b in zip(ref, got):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_two_processes_on_one_job_train_it_once(cfg):
    _clean(cfg)
    code = ("import json,sys; from mammo_lib.repro.config import load_config; from mammo_lib.repro import jobs; "
            f"c=load_config('smoke', {({'work_dir': str(cfg.work_dir), 'results_dir': str(cfg.results_dir), 'train': {'epochs': 1}, 'pretrain': {'epochs': 1}, 'cv': ONE_REPLICATE})!r}); "
            "from mammo_lib.repro.runtime import pin_numerics; pin_numerics(c); "  # as a job process does
            "o=jobs.run_job(c, 'imagenet_transfer', 0, progress=False); "
            "print(json.dumps({'status': o.status, 'trained': o.trained, 'acc': o.runs['accuracy'].tolist()}))")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=300)
        assert p.returncode == 0, se[-2000:]
        outs.append(json.loads(so.strip().splitlines()[-1]))
    assert sum(o["trained"] for o in outs) == RUNS_PER_JOB["imagenet_transfer"]
    # 10 runs + 2 transfer rows + the oracle analysis's 2 rows (condition B: its epoch and beta on the neutral split)
    assert outs[0]["acc"] == outs[1]["acc"] and len(outs[0]["acc"]) == 14
    # a third call reads everything back
    again = jobs.run_job(cfg, "imagenet_transfer", 0, progress=False)
    assert (again.status, again.trained) == ("done", 0)
    assert again.runs["accuracy"].tolist() == outs[0]["acc"]


def test_busy_lock_wait_false_and_wait_true(cfg):
    _clean(cfg)
    d = table2.replicate_dir(cfg, 0, 0) / "A" / "mask" / "fold_1"
    d.mkdir(parents=True)
    lock = FileLock(str(d / "mask_only") + ".lock")
    lock.acquire()
    try:
        out = jobs.run_job(cfg, "mask_only", 1, wait=False, progress=False)
        assert out.status == "busy" and "mask_only: being trained by another process" in out.message
        assert out.runs.empty and not (d / "mask_only" / "result.json").exists()
    finally:
        lock.release()
    out = jobs.run_job(cfg, "mask_only", 1, wait=False, progress=False)
    assert (out.status, out.trained, len(out.runs)) == ("ran", RUNS_PER_JOB["mask_only"], 2)
    # while another process builds the shared preconditions, wait=False is busy too
    with FileLock(str(cfg.work_dir / "prepare") + ".lock"):
        out = jobs.run_job(cfg, "mask_only", 1, wait=False, progress=False)
    assert out.status == "busy" and "shared preconditions are being built by another process" in out.message
    # once done, the job is read back, not retrained (result.json untouched)
    res = d / "mask_only" / "result.json"
    mtime = res.stat().st_mtime_ns
    out = jobs.run_job(cfg, "mask_only", 1, progress=False)
    assert (out.status, out.trained) == ("done", 0) and res.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("ran,missing", PARTIAL_CASES)
def test_collect_names_exactly_the_missing_jobs(cfg, ran, missing):
    _clean(cfg)
    for spec, k in ran:
        jobs.run_job(cfg, spec, k, progress=False)
    before = sorted(p for p in table2.instrument_dir(cfg).rglob("result.json")) if ran else []
    col = jobs.collect(cfg)
    assert col.missing == missing
    assert col.done == [j for j in jobs.all_jobs(cfg) if j not in missing]
    assert f"{10 - len(missing)} of 10 Table 2 jobs are done; {len(missing)} missing: " in col.describe()
    # collect trained nothing, and merged only rows of jobs run
    after = sorted(p for p in table2.instrument_dir(cfg).rglob("result.json")) if ran else []
    assert before == after
    specs = set(col.result.runs["spec"]) - {""}
    want = set()
    for spec, _ in ran:
        want |= {spec} | ({spec.replace("transfer", m) for m in ("finetune", "shuffled", "oracle", "nselft", "nselkt")}
                          if spec.endswith("transfer") else set())
    assert specs == want


def test_debug_executor_then_collect_writes_tables(cfg, tmp_path):
    import submitit

    _clean(cfg)
    submitted = jobs.submit(cfg, submitit.DebugExecutor(folder=tmp_path / "dbg"),
                            jobs=[(s, k) for s, k in jobs.all_jobs(cfg) if s != "imagenet_finetune"])
    assert [j.result()["status"] for j in submitted] == ["ran"] * 8
    col = jobs.collect(cfg, tables=True)
    assert col.complete and "All 10 Table 2 jobs are done (60 run rows merged)" in col.describe()
    assert (cfg.results_dir / "tables").is_dir() and col.tables["comparison"] is not None
    assert len(col.tables["result"].runs) == 60  # 52 + the oracle analysis (condition B: 2 inits x 2 folds x 2)


def test_submit_auto_executor_parameters(cfg, tmp_path):
    ex = jobs.make_executor(cfg, folder=tmp_path / "auto", partition="gpu", gpus_per_job=2, time_min=30)
    if ex.cluster == "local":  # no sbatch here: the slurm_* parameters are kept for SLURM only
        assert ex._executor.parameters == {"timeout_min": 30, "gpus_per_node": 2, "cpus_per_task": 4,
                                           "name": "mammo-kt-smoke"}
    assert jobs.submit(cfg, jobs=[], folder=tmp_path / "auto", partition="gpu", gpus_per_job=0) == []
    with pytest.raises(NameError, match="slurm_no_such_option"):
        jobs.submit(cfg, jobs=[], folder=tmp_path / "auto", slurm={"slurm_no_such_option": 1})


def test_cli_helpers(cfg, tmp_path, capsys):
    _clean(cfg)
    prof = tmp_path / "tiny.yaml"
    prof.write_text(yaml.safe_dump(cfg.raw))
    assert jobs.cli_collect(Namespace(profile=str(prof))) == 1
    assert "0 of 10 Table 2 jobs are done; 10 missing: imagenet_finetune fold 0," in capsys.readouterr().out
    assert jobs.cli_run_job(Namespace(profile=str(prof), spec="mask_only", fold="0")) == 0
    assert "mask_only fold 0: ran (2 runs trained here, 2 rows)" in capsys.readouterr().out
    with FileLock(str(cfg.work_dir / "prepare") + ".lock"):
        assert jobs.cli_run_job(Namespace(profile=str(prof), spec="mask_only", fold=1, no_wait=True)) == 3
    assert "mask_only fold 1: busy (0 runs trained here, 0 rows)" in capsys.readouterr().out


# mammo-kt's front door to the jobs: (argv after "train"/"collect", exit status, message fragment)
CLI_JOB_CASES = [
    (["train", "--profile", "smoke", "--spec", "bogus", "--fold", "0"], 2, "unknown Table 2 spec 'bogus'"),
    (["train", "--profile", "smoke", "--spec", "mask_only", "--fold", "7"], 2, "fold 7"),
    (["train", "--profile", "smoke", "--spec", "mask_only"], 2, "needs all of --profile P --spec S --fold K"),
    (["train", "--profile", "smoke", "--spec", "mask_only", "--fold", "0", "--out", "x"], 2,
     "--out: not used by a Table 2 job"),
    (["train", "--csv", "cases.csv"], 2, "--out is required"),
]


@pytest.mark.parametrize("argv, status, msg", CLI_JOB_CASES)
def test_cli_job_arguments_checked_before_any_work(tmp_path, argv, status, msg):
    p = subprocess.run([sys.executable, "-m", "mammo_lib.cli", *argv], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == status, p.stderr
    assert msg in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_train_job_then_collect(cfg, tmp_path):
    """``mammo-kt train --profile P --spec S --fold K`` runs one job; ``collect`` names the rest."""
    _clean(cfg)
    prof = tmp_path / "tiny.yaml"
    prof.write_text(yaml.safe_dump(cfg.raw))
    run = [sys.executable, "-m", "mammo_lib.cli"]
    p = subprocess.run([*run, "train", "--profile", str(prof), "--spec", "mask_only", "--fold", "1"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "mask_only fold 1: ran (2 runs trained here, 2 rows)" in p.stdout
    p = subprocess.run([*run, "collect", "--profile", str(prof)], env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 1, p.stderr
    assert "1 of 10 Table 2 jobs are done; 9 missing: imagenet_finetune fold 0," in p.stdout
    assert "mask_only fold 1" not in p.stdout.split("missing:")[1]


def test_replicates_trunk_and_fold_seeds_resume_and_collect(cfg):
    """Two trunk seeds x two fold seeds: a job trains its runs in every replicate (its own folder,
    rows tagged), an interrupted replicate retrains only what it lost, collect names the job
    missing until every replicate has it. Trunk seed 1 pre-trains its own generic and DDSM trunks."""
    c = _cfg(cfg.work_dir, trunk_seeds=[0, 1], fold_seeds=[0, 1], min_passing_trunks=1)
    shutil.rmtree(table2.instrument_dir(c), ignore_errors=True)
    table2._RUNS.clear()
    out = jobs.run_job(c, "mask_only", 0, progress=False)
    assert (out.status, out.trained) == ("ran", 2 * 4)                 # 2 conditions x 4 replicates
    assert sorted(set(zip(out.runs["trunk_seed"], out.runs["fold_seed"]))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    w = {t: table2.imagenet_trunk(c, trunk_seed=t, progress=False)["weights"] for t in (0, 1)}
    assert w[0] != w[1]
    assert table2.ddsm_trunk(c, trunk_seed=1, progress=False)["weights"] != table2.ddsm_trunk(c, progress=False)["weights"]
    lost = table2.replicate_dir(c, 1, 1) / "B" / "mask" / "fold_0" / "mask_only" / "result.json"
    acc = json.loads(lost.read_text())["row"]["accuracy"]
    lost.unlink()
    col = jobs.collect(c)
    assert ("mask_only", 0) in col.missing and ("mask_only", 1) in col.missing
    again = jobs.run_job(c, "mask_only", 0, progress=False)
    assert again.trained == 1 and json.loads(lost.read_text())["row"]["accuracy"] == acc
    col = jobs.collect(c)
    assert ("mask_only", 0) in col.done and ("mask_only", 1) in col.missing
    with pytest.raises(ValueError, match=r"trunk seed 5 is not in cv.trunk_seeds \[0, 1\]"):
        table2.imagenet_trunk(c, trunk_seed=5, progress=False)

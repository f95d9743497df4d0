"""The GPU Table 2 benchmark script in its ``--tiny`` CPU mode: runs standalone (without the
notebook/cluster/Grad-CAM packages the GPU box lacks) and writes a complete JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Packages absent on the GPU box: importing any of them must not be needed.
ABSENT = ("papermill", "nbval", "jupytext", "submitit", "pytorch_grad_cam")
STAGES = ("generic_pretrain", "ddsm_pretrain", "trunk_caches", "instrument")
#: Table 2 specs of condition B (both initialisations, controls, mask only).
SPECS = ({f"{i}_{m}" for i in ("imagenet", "ddsm") for m in ("finetune", "transfer", "shuffled", "oracle", "nselft", "nselkt")}
         | {"mask_only"})  # condition B: the oracle analysis's two arms too


def test_gpu_table2_tiny_on_cpu(tmp_path):
    out = tmp_path / "out"
    code = (f"import sys, runpy; sys.modules.update({{m: None for m in {ABSENT!r}}}); "
            f"sys.argv = ['gpu_table2.py', '--out', {str(out)!r}, '--work', {str(tmp_path / 'work')!r}, "
            f"'--tiny', '--device', 'cpu']; runpy.run_path('benchmarks/gpu_table2.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done; wrote" in proc.stdout
    doc = json.loads((out / "gpu_table2.json").read_text())
    assert doc["tiny"] is True and doc["device"] == "cpu" and doc["torch"] == __import__("torch").__version__
    assert doc["overrides"]["cv"]["conditions"] == ["B"] and doc["overrides"]["arch"] == "small"
    assert doc["data"]["seconds"] > 0 and doc["data"]["cv_lesions"] == 24 and doc["data"]["roi_size"] == 64
    assert list(doc["variants"]) == ["bf16", "fp32"]
    assert doc["variants"]["bf16"]["flags"] == {"amp": "bf16", "channels_last": True}
    for name, v in doc["variants"].items():
        st = v["stages"]
        assert set(st) == set(STAGES), name
        for s in STAGES:
            assert "error" not in st[s] and "skipped" not in st[s], (name, s, st[s])
            assert st[s]["seconds"] > 0
        assert st["generic_pretrain"]["images_per_s"] > 0 and st["ddsm_pretrain"]["images_per_s"] > 0
        inst = st["instrument"]
        assert inst["folds_run"] == [0, 1] and inst["runs_per_fold"] > 0
        assert set(inst["accuracy"]) == SPECS
        assert all(0.0 <= a["mean"] <= 1.0 for a in inst["accuracy"].values())
        assert v["total_s"] >= sum(st[s]["seconds"] for s in STAGES[:3])
    # on the CPU both flags are exact no-ops: the two variants' Table 2 accuracies are equal
    assert doc["common_folds"] == [0, 1]
    acc = doc["accuracy_on_common_folds"]
    assert acc["bf16"] == acc["fp32"]


def test_gpu_table2_refuses_cuda_without_gpu(tmp_path):
    """No GPU visible (also on a GPU machine: CUDA_VISIBLE_DEVICES is empty): exit 2, nothing written."""
    proc = subprocess.run([sys.executable, "benchmarks/gpu_table2.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
    assert not (tmp_path / "gpu_table2.json").exists()


def test_gpu_table2_budget_exhausted_skips_and_keeps_json(tmp_path):
    """A budget spent before the first stage: the data stage is recorded as skipped, exit code 1."""
    proc = subprocess.run([sys.executable, "benchmarks/gpu_table2.py", "--out", str(tmp_path), "--tiny", "--device",
                           "cpu", "--budget-s", "0", "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "gpu_table2.json").read_text())
    assert doc["data"]["skipped"] == "budget"
    assert all(v["stages"] == {} for v in doc["variants"].values())


def test_gpu_table2_rejects_unknown_variants(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_table2.py", "--out", str(tmp_path), "--tiny", "--device", "cpu",
                           "--variants", "bf16,fp8"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "--variants must be distinct names from ['bf16', 'fp32'], got 'bf16,fp8'" in proc.stderr
    assert not (tmp_path / "gpu_table2.json").exists()


def test_bench_heads_counts_fewer_operators_together(tmp_path):
    """The beta-grid benchmark runs and finds what it is for: training six heads together
    dispatches fewer operators per epoch than training them one by one."""
    proc = subprocess.run([sys.executable, "benchmarks/bench_heads.py", "--repeats", "1", "--epochs", "1", "--n-train", "20",
                           "--n-val", "6", "--archs", "small", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "heads.json").read_text())
    (r,) = doc["results"]
    assert r["arch"] == "small" and r["heads"] == 6
    assert r["aten_ops_per_epoch"]["together"] < r["aten_ops_per_epoch"]["one_by_one"]
    assert (tmp_path / "heads.md").read_text().count("| small |") == 1

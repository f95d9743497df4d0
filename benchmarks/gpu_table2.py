"""GPU benchmark: the Table 2 protocol (Sec. 5.1) at the paper's size on phantom data, with and
without mixed precision + channels-last (``docs/DECISIONS.md``, "GPU / mixed precision").

What runs is what ``table2.run(cfg)`` does, preceded by what it needs: the demo profile with
DenseNet121 at 224 px on CUDA, the BCDR-sized phantom (274 lesions, 144 benign / 130 malignant),
5 outer folds, both initialisations (the generic synthetic stand-in as "ImageNet": no download is
possible on the GPU box; and the DDSM-like pre-trained trunk), the full beta grid, the shuffled /
oracle controls and the mask-only model, with the full profile's epochs (train 50, pretrain 30);
the beta grid and the controls of a fold train together (``trunk_cache.train_heads``).
On phantom data only condition B (the calcification shortcut) is run. Variants: ``bf16`` (amp
bf16 + channels-last) first, then ``fp32`` (both off). Stages are timed separately
(``torch.cuda.synchronize`` around each): data (shared, once), generic pre-training, DDSM
pre-training, trunk caches, instrument (the Table 2 head trainings, fold by fold).

Budget (``--budget-s``, from the start of the script): a stage is skipped (``"skipped":
"budget"``) when the elapsed time plus its estimate (the same stage's time in the previous
variant; for the first variant's instrument folds, the time of its previous fold plus a reserve
for the second variant) would pass the budget; the instrument runs whole folds only, so both
variants' accuracies can be compared on the folds both ran (``common_folds``).

    PYTHONPATH=. python benchmarks/gpu_table2.py --out OUT [--work DIR] [--budget-s 520] [--variants bf16]
    PYTHONPATH=. python benchmarks/gpu_table2.py --out OUT --tiny --device cpu   # minute-long check

Writes ``OUT/gpu_table2.json`` atomically after every stage.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mammo_lib.repro import table2  # noqa: E402
from mammo_lib.repro.config import load_config  # noqa: E402
from mammo_lib.protocol.instrument import run_instrument  # noqa: E402
from mammo_lib.repro.datasets import roi_sets  # noqa: E402
from mammo_lib.repro.runtime import train_config  # noqa: E402
from mammo_lib.utils.files import write_json  # noqa: E402

VARIANTS = {"bf16": {"amp": "bf16", "channels_last": True}, "fp32": {"amp": "off", "channels_last": False}}
STAGES = ("generic_pretrain", "ddsm_pretrain", "trunk_caches", "instrument")
CONDITION = "B"


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def base_overrides(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The profile overrides shared by both variants (written to the JSON)."""
    common = {"device": args.device, "work_dir": str(work / "work"), "results_dir": str(work / "results"),
              "imagenet_weights": "none", "imagenet_fallback": "generic", "cv": {"conditions": [CONDITION]}}
    if args.tiny:
        return {**common, "arch": "small", "roi_size": 64, "workers": 2,
                "train": {"epochs": 1}, "pretrain": {"epochs": 1},
                "generic_pretrain": {"n_train": 24, "n_test": 8, "epochs": 1, "batch_size": 8},
                "phantom": {"image_shape": [384, 320], "bcdr_like": {"n_benign": 12, "n_malignant": 12},
                            "ddsm_like": {"n_train": 24, "n_test": 12}},
                "cv": {"conditions": [CONDITION], "n_splits": 2}}
    full = {**common, "arch": "densenet121", "roi_size": 224, "workers": args.workers,
            "train": {"epochs": 50, "prefetch_threads": 4}, "pretrain": {"epochs": 30}}
    if args.pretrain_epochs is not None:  # a head-training timing run: the trunks' quality does not matter
        full["pretrain"] = {"epochs": args.pretrain_epochs}
        full["generic_pretrain"] = {"epochs": args.pretrain_epochs}
    return full


def variant_config(overrides: dict[str, Any], flags: dict[str, Any]):
    ov = {**overrides, "train": {**overrides.get("train", {}), **flags}}
    return load_config("demo", overrides=ov, root=ROOT, honour_env=False)


class Recorder:
    """The JSON document, written atomically after every change."""

    def __init__(self, path: Path, doc: dict[str, Any], t0: float):
        self.path, self.doc, self.t0 = path, doc, t0
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 2)
        write_json(self.path, self.doc)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_stage(rec: Recorder, where: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]],
                estimate: Optional[float], budget: float, label: str) -> Optional[dict[str, Any]]:
    """Run ``fn`` as stage ``name`` (unless the budget forbids), store seconds, peak GPU memory, the
    extras ``fn`` returns, or the error; returns the extras (None when skipped or failed)."""
    if rec.elapsed() + (estimate or 0.0) > budget:
        where[name] = {"skipped": "budget", "estimate_s": round(estimate or 0.0, 2), "elapsed_at_skip_s": round(rec.elapsed(), 2)}
        print(f"[{rec.elapsed():7.1f}s] {label} {name}: skipped (budget; estimate {estimate or 0.0:.0f}s)", flush=True)
        rec.save()
        return None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync()
    s0 = time.perf_counter()
    try:
        extra = fn()
        _sync()
        sec = time.perf_counter() - s0
        entry = {"seconds": round(sec, 3), **(extra or {})}
        ok = True
    except Exception as err:  # recorded, never lost: the next stage or variant goes on
        sec = time.perf_counter() - s0
        entry = {"seconds": round(sec, 3), "error": {"type": type(err).__name__, "message": str(err)[:2000],
                                                     "traceback": traceback.format_exc()[-4000:]}}
        ok, extra = False, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if torch.cuda.is_available():
        entry["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    where[name] = entry
    rec.save()
    status = "ok" if ok else f"FAILED ({entry['error']['type']}: {entry['error']['message'][:200]})"
    print(f"[{rec.elapsed():7.1f}s] {label} {name}: {sec:.1f}s {status}", flush=True)
    return extra if ok else None


def accuracies(per_fold_rows: list[dict[str, Any]], folds: list[int]) -> dict[str, Any]:
    """Mean test accuracy (primary rendering) per Table 2 spec over ``folds``, and per fold."""
    import pandas as pd

    if not per_fold_rows:
        return {}
    df = pd.DataFrame(per_fold_rows)
    df = df[df["fold"].isin(folds)]
    out: dict[str, Any] = {}
    for spec, g in df.groupby("spec", sort=True):
        out[str(spec)] = {"mean": round(float(g["accuracy"].mean()), 4),
                          "per_fold": {int(k): round(float(a), 4) for k, a in zip(g["fold"], g["accuracy"])}}
    return out


def run_variant(rec: Recorder, name: str, cfg: Any, prev: Optional[dict[str, Any]], budget: float,
                reserve: Callable[[], float], max_folds: Optional[int], tiny: bool) -> None:
    v = rec.doc["variants"][name]
    st = v["stages"]

    def est(stage: str) -> Optional[float]:
        if prev is None:
            return None
        p = prev["stages"].get(stage, {})
        return float(p["seconds"]) if "seconds" in p and "error" not in p else None

    # read the shared ROI sets into this variant's in-process cache (not a timed stage)
    s0 = time.perf_counter()
    roi_sets(cfg, progress=False)
    v["data_reload_s"] = round(time.perf_counter() - s0, 3)

    def generic() -> dict[str, Any]:
        t = table2.imagenet_trunk(cfg, progress=False)
        m = t["metrics"]
        g = cfg.section("generic_pretrain")
        n_fit, ep = int(m["n_train"]), int(g.get("epochs", 20))
        return {"test_accuracy": m["test_accuracy"], "library_seconds": m["seconds"], "images_trained": n_fit * ep,
                "images_per_s": round(n_fit * ep / max(m["seconds"], 1e-9), 1),
                "note": "images_per_s = training images x epochs / library seconds (incl. task generation, validation)"}

    def ddsm() -> dict[str, Any]:
        s0 = time.perf_counter()
        t = table2.ddsm_trunk(cfg, progress=False)
        sec = time.perf_counter() - s0
        res = t["result"]
        n = len(roi_sets(cfg, progress=False).pre_train)
        ep = int(cfg.section("pretrain").get("epochs", cfg["train"]["epochs"]))
        return {"test_accuracy": t["test_accuracy"], "images_trained_upper_bound": n * ep,
                "images_per_s": round(n * ep / max(sec, 1e-9), 1), "best_epoch": res.metrics.get("best_epoch"),
                "note": "images_per_s = pre-training set (train+val) x epochs / stage seconds"}

    holder: dict[str, Any] = {}

    def caches() -> dict[str, Any]:
        data, trunks = table2.instrument_data(cfg, progress=False)
        holder["data"] = data
        n = sum(len(c) * c.features.shape[1] for per in data.caches.values() for c in per.values())
        return {"roi_forwards": int(n), "renderings": sorted(next(iter(data.caches.values())))}

    if timed_stage(rec, st, "generic_pretrain", generic, est("generic_pretrain"), budget, name) is None:
        _skip_rest(rec, st, ("ddsm_pretrain", "trunk_caches", "instrument"), name)
        return
    if timed_stage(rec, st, "ddsm_pretrain", ddsm, est("ddsm_pretrain"), budget, name) is None:
        _skip_rest(rec, st, ("trunk_caches", "instrument"), name)
        return
    if timed_stage(rec, st, "trunk_caches", caches, est("trunk_caches"), budget, name) is None:
        _skip_rest(rec, st, ("instrument",), name)
        return

    n_splits = int(cfg.section("cv")["n_splits"])
    tcfg = train_config(cfg, method="finetune")
    inst: dict[str, Any] = {"condition": CONDITION, "n_splits": n_splits, "folds_run": [], "fold_seconds": {},
                            "fold_peak_gpu_memory_mb": {}, "runs_per_fold": None, "epochs": tcfg.epochs}
    st["instrument"] = inst
    rows: list[dict[str, Any]] = []
    prev_inst = (prev or {}).get("stages", {}).get("instrument", {})
    limit = n_splits if max_folds is None else min(n_splits, max_folds)
    for k in range(limit):
        prev_k = prev_inst.get("fold_seconds", {}).get(str(k), prev_inst.get("fold_seconds", {}).get(k))
        if prev is not None:
            estimate = float(prev_k) if prev_k is not None else None
            if estimate is None:
                inst["stopped"] = f"fold {k} not run by the previous variant"
                break
            extra_reserve = 0.0
        else:
            done = list(inst["fold_seconds"].values())
            estimate = float(done[-1]) if done else None
            extra_reserve = reserve() if done else 0.0
        estimate_s = estimate or 0.0
        if rec.elapsed() + estimate_s + extra_reserve > budget:
            inst["stopped"] = (f"budget before fold {k}: elapsed {rec.elapsed():.0f}s + fold estimate {estimate_s:.0f}s"
                               f" + reserve for the next variant {extra_reserve:.0f}s > {budget:.0f}s")
            print(f"[{rec.elapsed():7.1f}s] {name} instrument: stopped before fold {k} (budget)", flush=True)
            break
        fold_entry: dict[str, Any] = {}

        def one_fold(k: int = k) -> dict[str, Any]:
            res = run_instrument(holder["data"], table2.conditions(cfg), table2.instrument_dir(cfg), tcfg,
                                 grid=table2.grid_of(cfg), n_splits=n_splits, seed=int(cfg["seed"]),
                                 shuffle_seed=int(cfg["seed"]), folds_to_run=[k], progress=False)
            pf = res.per_fold(CONDITION)
            rows.extend({"spec": str(r.spec), "fold": int(r.fold), "accuracy": float(r.accuracy)}
                        for r in pf.itertuples())
            return {"head_trainings": int(len(res.runs))}

        out = timed_stage(rec, fold_entry, "fold", one_fold, None, budget, f"{name} instrument fold {k}")
        f = fold_entry["fold"]
        inst["fold_peak_gpu_memory_mb"][str(k)] = f.get("peak_gpu_memory_mb")
        if out is None:
            inst["error"] = f.get("error")
            break
        inst["fold_seconds"][str(k)] = f["seconds"]
        inst["folds_run"].append(k)
        inst["runs_per_fold"] = out["head_trainings"]
        inst["seconds"] = round(sum(inst["fold_seconds"].values()), 3)
        inst["accuracy"] = accuracies(rows, inst["folds_run"])
        inst["rows"] = rows
        rec.save()
    if not inst["folds_run"]:
        inst.setdefault("skipped", "budget" if "stopped" in inst else "error")
    inst["seconds"] = round(sum(inst["fold_seconds"].values()), 3)
    _total(v)
    rec.save()


def _total(v: dict[str, Any]) -> None:
    """The variant's total: the sum of the stages it ran (the shared data stage not included)."""
    v["total_s"] = round(sum(float(e.get("seconds", 0.0)) for e in v["stages"].values()), 3)


def _skip_rest(rec: Recorder, st: dict[str, Any], stages: tuple[str, ...], label: str) -> None:
    for s in stages:
        st.setdefault(s, {"skipped": "an earlier stage was skipped or failed"})
    _total(rec.doc["variants"][label])
    rec.save()
    print(f"[{rec.elapsed():7.1f}s] {label}: {', '.join(stages)} not run (an earlier stage did not complete)", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_table2.json")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--budget-s", type=float, default=520.0)
    ap.add_argument("--device", default=None, help="default cuda (cpu allowed with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="small network, 64 px, smoke-sized phantom, 1 epoch")
    ap.add_argument("--workers", type=int, default=8, help="preprocessing processes")
    ap.add_argument("--fp32-factor", type=float, default=1.5,
                    help="reserve for the fp32 variant while bf16 adds folds: this x bf16's stage times")
    ap.add_argument("--max-folds", type=int, default=None, help="run at most this many outer folds per variant")
    ap.add_argument("--variants", default="bf16,fp32",
                    help="comma-separated variants to run, in this order (bf16, fp32); one variant fits a "
                         "15-minute device session better")
    ap.add_argument("--pretrain-epochs", type=int, default=None,
                    help="override both pre-trainings' epochs (timing the Table 2 head trainings alone; "
                         "accuracies are then not the protocol's)")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not names or any(v not in VARIANTS for v in names) or len(set(names)) != len(names):
        print(f"--variants must be distinct names from {list(VARIANTS)}, got {args.variants!r}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    args.device = args.device or ("cuda" if (torch.cuda.is_available() or not args.tiny) else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --tiny --device cpu for a CPU check", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_table2_"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = base_overrides(args, work)
    cuda = args.device.startswith("cuda")
    doc: dict[str, Any] = {
        "benchmark": "Table 2 protocol (table2.run) on phantom data, bf16+channels-last vs fp32",
        "tiny": bool(args.tiny), "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "python": platform.python_version(), "git_commit": git_commit(), "budget_s": args.budget_s,
        "profile": "demo", "overrides": overrides, "variants_flags": VARIANTS,
        "notes": [f"phantom data: condition {CONDITION} only (the calcification shortcut); Table 2 accuracy is "
                  "the primary (neutral) test rendering, mean over the folds run",
                  "'ImageNet' initialisation = generic synthetic pre-training (imagenet_weights none, "
                  "fallback generic): no ImageNet download on this machine",
                  "instrument = run_instrument as table2.run calls it, one outer fold at a time (folds_to_run)",
                  "seed_everything not called: cuDNN autotuning and determinism at torch's defaults"],
        "data": {}, "variants": {n: {"flags": VARIANTS[n], "stages": {}} for n in names},
    }
    rec = Recorder(args.out / "gpu_table2.json", doc, t0)
    print(f"[{rec.elapsed():7.1f}s] device {doc['device_name']}, torch {doc['torch']}, work {work}", flush=True)

    cfgs: dict[str, Any] = {}
    try:
        cfgs = {n: variant_config(overrides, VARIANTS[n]) for n in names}
    except Exception as err:
        doc["error"] = {"type": type(err).__name__, "message": str(err)}
        rec.save()
        print(f"config failed: {err}", flush=True)
        return 1

    def data() -> dict[str, Any]:
        ds = roi_sets(cfgs[names[0]], progress=False)
        return {"cv_lesions": len(ds.cv), "cv_benign": int((ds.cv.labels == 0).sum()),
                "cv_malignant": int((ds.cv.labels == 1).sum()), "pretrain_train": len(ds.pre_train),
                "pretrain_test": len(ds.pre_test), "roi_size": int(ds.cv.images.shape[-1])}

    if timed_stage(rec, doc, "data", data, None, args.budget_s, "shared") is None:
        return 1

    def reserve() -> float:
        """Time kept for the second variant while the first adds folds (none with one variant)."""
        if len(names) < 2:
            return 0.0
        st = doc["variants"][names[0]]["stages"]
        tot = sum(float(st[s]["seconds"]) for s in STAGES[:3] if "seconds" in st.get(s, {}))
        first = st.get("instrument", {}).get("fold_seconds", {}).get("0")
        return args.fp32_factor * (tot + float(first or 0.0))

    prev = None
    for name in names:
        try:
            run_variant(rec, name, cfgs[name], prev, args.budget_s, reserve, args.max_folds, args.tiny)
        except Exception as err:  # anything outside a stage: recorded, next variant
            doc["variants"][name]["error"] = {"type": type(err).__name__, "message": str(err)[:2000],
                                              "traceback": traceback.format_exc()[-4000:]}
            rec.save()
            print(f"[{rec.elapsed():7.1f}s] {name}: FAILED {type(err).__name__}: {err}", flush=True)
        prev = doc["variants"][name]

    # accuracies on the folds every variant ran
    runs = [set(doc["variants"][n]["stages"].get("instrument", {}).get("folds_run", [])) for n in names]
    common = sorted(set.intersection(*runs)) if runs else []
    doc["common_folds"] = common
    doc["accuracy_on_common_folds"] = {n: accuracies(doc["variants"][n]["stages"]["instrument"].get("rows", []), common)
                                       for n in names if common}
    doc["total_s"] = round(rec.elapsed(), 2)
    rec.save()
    print(f"[{rec.elapsed():7.1f}s] done; wrote {rec.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

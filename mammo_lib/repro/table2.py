"""Notebooks 03, 05 and 06 as library steps: the pre-trained trunks and their gate, Table 2 as a
calibrated instrument (:mod:`mammo_lib.protocol.instrument`), and the significance tests (Sec. 5.1).

Initialisations (Table 2's "pre-training" column):

- ``imagenet``: torchvision's ImageNet weights when available; otherwise, with
  ``imagenet_fallback: generic``, the stand-in of :mod:`mammo_lib.protocol.stand_in` (generic synthetic
  pre-training, said in every row), or with ``none`` a random network (not a fair stand-in: the
  teacher's maps are then nearly the same for every case).
- ``ddsm``: all layers pre-trained on the CBIS-DDSM training set (its phantom twin in the demo),
  starting from the ``imagenet`` initialisation, as in the paper.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from filelock import FileLock

from mammo_lib.repro.config import Config

#: Table 2 spec names (``<init>_<method>``).
TABLE2_SPECS = ("imagenet_finetune", "imagenet_transfer", "ddsm_finetune", "ddsm_transfer")
INIT_LABELS = {"imagenet": "ImageNet", "ddsm": "DDSM"}
#: Display names of the methods in figure titles.
_METHOD_SHORT = {"finetune": "fine-tune", "transfer": "knowledge transfer", "shuffled": "KT, shuffled teacher",
                 "oracle": "KT, oracle target"}


def lock_for(path: str | Path) -> FileLock:
    """The lock guarding a shared artefact (a folder or file) of the pipeline: ``<path>.lock``
    (``docs/DECISIONS.md``, "Table 2 as independent jobs"). Work is redone only after re-checking,
    under the lock, that no other process finished it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def spec_label(spec: str, trunks: dict[str, Any] | None = None) -> str:
    """A figure label saying what a model really started from, e.g. ``"ImageNet stand-in
    (generic synthetic), fine-tune"`` rather than ``"imagenet_finetune"``."""
    if spec == "mask_only":
        return "mask only"
    init, meth = spec.split("_", 1)
    note = (trunks or {}).get(init, {}).get("note", "")
    if init == "imagenet" and note and note != "ImageNet":
        name = "ImageNet stand-in (generic synthetic)" if "generic" in note else "ImageNet role (random)"
    elif init == "ddsm" and "generic" in note:
        name = "DDSM (from the generic stand-in)"
    else:
        name = INIT_LABELS.get(init, init)
    return f"{name}, {_METHOD_SHORT.get(meth, meth)}"


# ------------------------------------------------------------------------------------- trunks
def trunk_seeds(cfg: Config) -> list[int]:
    """The profile's trunk seeds (``cv.trunk_seeds``, offsets added to ``seed``): each pre-trains
    its own generic stand-in and its own DDSM trunk from it (``docs/DECISIONS.md``, "The instrument")."""
    return [int(t) for t in cfg.section("cv")["trunk_seeds"]]


def fold_seeds(cfg: Config) -> list[int]:
    """The profile's fold seeds (``cv.fold_seeds``, offsets added to ``seed``): repeated cross-validation."""
    return [int(f) for f in cfg.section("cv")["fold_seeds"]]


def replicates(cfg: Config) -> list[tuple[int, int]]:
    """Every (trunk seed, fold seed) pair of the design, trunk seed first."""
    return [(t, f) for t in trunk_seeds(cfg) for f in fold_seeds(cfg)]


def _trunk_seed(cfg: Config, trunk_seed: int | None) -> int:
    seeds = trunk_seeds(cfg)
    t = seeds[0] if trunk_seed is None else int(trunk_seed)
    if t not in seeds:
        raise ValueError(f"trunk seed {t} is not in cv.trunk_seeds {seeds} of profile {cfg.name!r}")
    return t


def _seed_key(t: int) -> tuple[str, ...]:
    """Cache-key extra of a trunk seed (none for 0, so the first trunk keeps its folder)."""
    return () if t == 0 else (f"trunk{t}",)


def imagenet_trunk(cfg: Config, *, trunk_seed: int | None = None, progress: bool = True) -> dict[str, Any]:
    """The ``imagenet`` initialisation of trunk seed ``trunk_seed`` (default: the first of
    ``cv.trunk_seeds``): ``{"weights": str|None, "note": str, "test_accuracy": float|None, "seed": int}``.
    Real ImageNet weights are one trunk for every seed (the seeds then vary the heads only)."""
    t = _trunk_seed(cfg, trunk_seed)
    out = _imagenet_trunk(cfg, t, progress=progress)
    out["seed"] = t
    return out


def _imagenet_trunk(cfg: Config, ts: int, *, progress: bool = True) -> dict[str, Any]:
    from mammo_lib.networks.densenet import WeightsUnavailableError, build_model
    from mammo_lib.protocol.stand_in import GENERIC_INIT_NOTE, pretrain_generic

    w = cfg["imagenet_weights"]
    fallback = cfg["imagenet_fallback"]
    if w != "none":
        try:
            build_model(cfg["arch"], weights=w)
            return {"weights": w, "note": "ImageNet", "test_accuracy": None}
        except (WeightsUnavailableError, ValueError) as err:
            if fallback == "error":
                raise WeightsUnavailableError(str(err)) from err
    if fallback == "generic" or w == "generic":
        from mammo_lib.repro.runtime import run_dir

        g, t = cfg.typed.generic_pretrain, cfg.typed.train  # defaults filled in by the profile schema
        out = run_dir(cfg, "generic", *_seed_key(ts))
        with lock_for(out):
            m = pretrain_generic(out, arch=cfg["arch"], n_train=g.n_train, n_test=g.n_test, size=int(cfg["roi_size"]),
                                 epochs=g.epochs, batch_size=g.batch_size, lr=g.lr, seed=int(cfg["seed"]) + ts,
                                 device=cfg["device"], amp=t.amp, channels_last=t.channels_last,
                                 workers=int(cfg["workers"]), progress=progress)
        return {"weights": m["checkpoint"], "note": GENERIC_INIT_NOTE, "test_accuracy": m["test_accuracy"],
                "metrics": m}
    return {"weights": None, "note": "random (ImageNet unavailable; not a fair stand-in)", "test_accuracy": None}


def ddsm_trunk(cfg: Config, *, trunk_seed: int | None = None, progress: bool = True,
               parallel: Any = None) -> dict[str, Any]:
    """The ``ddsm`` initialisation of trunk seed ``trunk_seed`` (default: the first): all layers
    trained on the pre-training set from that seed's ``imagenet`` trunk, seed ``seed + trunk_seed``
    for the validation split, the head and the batches; ``pretrain.patience`` stops it after that
    many epochs without a better validation accuracy, the best epoch kept (``parallel``: several
    processes under torchrun, see :mod:`mammo_lib.engines.distributed`)."""
    from mammo_lib.repro.datasets import roi_sets
    from mammo_lib.repro.runtime import run_dir, train_config
    from mammo_lib.protocol.cross_validation import pretrain

    t = _trunk_seed(cfg, trunk_seed)
    ds = roi_sets(cfg, progress=progress)
    im = imagenet_trunk(cfg, trunk_seed=t, progress=progress)
    p = cfg.section("pretrain")
    tcfg = train_config(cfg, epochs=int(p.get("epochs") or cfg["train"]["epochs"]),
                        trainable=p["trainable"], method="finetune",
                        lr=float(p.get("lr") or cfg["train"]["lr"]), seed=int(cfg["seed"]) + t,
                        **({"patience": int(p["patience"])} if p.get("patience") else {}))
    weights = im["weights"] or "none"
    out = run_dir(cfg, "pretrain", weights, *_seed_key(t))
    # under torchrun the ranks train together (mammo_lib.engines.distributed): a file lock would deadlock them
    with (contextlib.nullcontext() if parallel is not None else lock_for(out)):
        res = pretrain(ds.pre_train, ds.pre_test, out, arch=cfg["arch"], weights=weights, cfg=tcfg,
                       seed=int(cfg["seed"]) + t, imagenet_fallback="error", progress=progress, parallel=parallel)
    return {"weights": str(res.checkpoint), "note": f"DDSM pre-training from {im['note']}",
            "test_accuracy": float(res.metrics.get("accuracy", float("nan"))), "result": res, "seed": t}


#: Code that decides a trunk's gate row (cached next to the trunk caches).
def _gate_code() -> str:
    from mammo_lib.utils.digest import code_digest

    return code_digest("protocol.stand_in", "networks.activation", "networks.densenet")


def trunk_gate_row(cfg: Config, init: str, trunk: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """The gate of one pre-trained trunk (:func:`mammo_lib.protocol.stand_in.trunk_gate` on the
    cross-validation ROIs and masks), read back from ``gate.json`` when made for the same weights
    and code. Row keys: ``init``, ``seed``, the gate's values and ``passes``."""
    import json

    from mammo_lib.repro.datasets import roi_sets
    from mammo_lib.utils.files import to_jsonable, write_json
    from mammo_lib.networks.densenet import build_model
    from mammo_lib.repro.runtime import run_dir
    from mammo_lib.protocol.stand_in import trunk_gate

    acc = trunk["test_accuracy"] if trunk["test_accuracy"] is not None else float("nan")
    w = trunk["weights"]
    key = to_jsonable({"weights": w, "accuracy": acc, "code": _gate_code(),
                       "mtime": Path(w).stat().st_mtime_ns if w and Path(w).exists() else None})
    path = run_dir(cfg, "trunk_cache", "gate", init, w) / "gate.json"
    with lock_for(path):
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved["row"]
        ds = roi_sets(cfg, progress=progress)
        model = build_model(cfg["arch"], weights=w, seed=int(cfg["seed"]))
        row = trunk_gate(model, INIT_LABELS[init], acc if np.isfinite(acc) else 1.0, ds.cv.images, ds.cv.masks,
                         progress=False)
        row["own test accuracy"] = round(acc, 3) if np.isfinite(acc) else float("nan")
        row = {"init": init, "seed": int(trunk["seed"]), **row, "initialisation": trunk["note"]}
        write_json(path, {"key": key, "row": row})
    return to_jsonable(row)


def trunks_of(cfg: Config, trunk_seed: int | None = None, *, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Both initialisations of one trunk seed, each with its gate row under ``"gate"``."""
    t = _trunk_seed(cfg, trunk_seed)
    out = {"imagenet": imagenet_trunk(cfg, trunk_seed=t, progress=progress),
           "ddsm": ddsm_trunk(cfg, trunk_seed=t, progress=progress)}
    for init, tr in out.items():
        tr["gate"] = trunk_gate_row(cfg, init, tr, progress=progress)
    return out


def trunk_table(trunks_by_seed: dict[int, dict[str, dict[str, Any]]]) -> pd.DataFrame:
    """One row per pre-trained trunk (initialisation x trunk seed): own test accuracy, the gate's
    values and ``passes``."""
    rows = []
    for t, trunks in trunks_by_seed.items():
        for init, tr in trunks.items():
            g = dict(tr["gate"])
            rows.append({"init": init, "seed": t, "initialisation": tr["note"],
                         "own test accuracy": g.pop("own test accuracy"),
                         **{k: v for k, v in g.items() if k not in ("init", "seed", "trunk", "initialisation",
                                                                    "passes")},
                         "passes": bool(g["passes"])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- data
def renderings(cfg: Config, ds: Any) -> dict[str, Any]:
    """ROI sets by rendering name, all in the cross-validation set's case order."""
    ids = list(ds.cv.index["case_id"])
    out = {"train" if cfg.uses_phantom else "data": ds.cv}
    for name, rs in (ds.renderings or {}).items():
        out[name] = rs.by_case_ids(ids)
    return out


def conditions(cfg: Config):
    """The instrument's conditions for this profile (phantom: A and B; real data: as it is)."""
    from mammo_lib.protocol.instrument import PHANTOM_CONDITIONS, REAL_CONDITION

    if not cfg.uses_phantom:
        return (REAL_CONDITION,)
    wanted = cfg.section("cv")["conditions"]
    return tuple(c for c in PHANTOM_CONDITIONS if c.name in wanted)


def instrument_data(cfg: Config, *, trunk_seed: int | None = None, progress: bool = True):
    """Trunk caches of both initialisations of one trunk seed (default: the first), every rendering
    the conditions use, and the mask-only cache (read back from ``work_dir`` when made with the
    same settings and code); returns ``(data, trunks)``, the trunks with their gate rows."""
    from mammo_lib.repro.datasets import roi_sets
    from mammo_lib.protocol.instrument import CODE, POSITIVE_HEAD, InstrumentData
    from mammo_lib.networks.densenet import build_model
    from mammo_lib.repro.runtime import run_dir, train_config
    from mammo_lib.engines.trunk_cache import FLIPS, TrunkCache, build_cache

    ds = roi_sets(cfg, progress=progress)
    rends = renderings(cfg, ds)
    conds = conditions(cfg)
    train_r = {c.train for c in conds}
    used = train_r | {r for c in conds for r in c.tests.values()}
    trunks = trunks_of(cfg, trunk_seed, progress=progress)
    arch, seed = cfg["arch"], int(cfg["seed"])
    head = cfg.section("train")["head"]
    tcfg = train_config(cfg)
    speed = {"device": tcfg.device, "amp": tcfg.amp, "channels_last": tcfg.channels_last}

    def factory(weights: str | None, head: str = head) -> Callable[[int], Any]:
        return lambda s: build_model(arch, weights=weights, seed=s, head=head)

    caches: dict[str, dict[str, TrunkCache]] = {}
    for init, t in trunks.items():
        d = run_dir(cfg, "trunk_cache", init, t["weights"], CODE, sorted(used))
        model = factory(t["weights"])(seed)
        caches[init] = {}
        for r in sorted(used):
            path = d / f"{r}.pt"
            with lock_for(path):
                cached = TrunkCache.load_or_none(path)  # a damaged file is named in a warning and rebuilt
                if cached is not None:
                    caches[init][r] = cached
                    continue
                rs = rends[r]
                c = build_cache(model, rs.images, rs.masks, labels=rs.labels, ids=list(rs.index["case_id"]),
                                flips=FLIPS if r in train_r else ("none",), progress=progress, **speed)
                caches[init][r] = c
                c.save(path)
    mask_model = factory(trunks["imagenet"]["weights"])(seed)
    mpath = run_dir(cfg, "trunk_cache", "mask", trunks["imagenet"]["weights"], CODE) / "mask.pt"
    with lock_for(mpath):
        mcache = TrunkCache.load_or_none(mpath)
        if mcache is None:
            mcache = build_cache(mask_model, ds.cv.masks.astype(np.float32), ds.cv.masks, labels=ds.cv.labels,
                                 ids=list(ds.cv.index["case_id"]), progress=progress, **speed)
            mcache.save(mpath)
    positive = ({k: factory(t["weights"], POSITIVE_HEAD) for k, t in trunks.items()}
                if cfg.section("cv")["positive_control"] else None)
    data = InstrumentData(inits={k: factory(t["weights"]) for k, t in trunks.items()}, caches=caches,
                          labels=ds.cv.labels, groups=ds.cv.groups, ids=list(ds.cv.index["case_id"]),
                          masks=ds.cv.masks, mask_cache=mcache, mask_init=factory(trunks["imagenet"]["weights"]),
                          positive_inits=positive)
    return data, trunks


def design_data(cfg: Config, *, progress: bool = True) -> dict[int, tuple[Any, dict[str, Any]]]:
    """:func:`instrument_data` of every trunk seed (``{seed: (data, trunks)}``); then writes the
    marker that :func:`mammo_lib.repro.jobs.collect` waits for."""
    from mammo_lib.protocol.instrument import CODE
    from mammo_lib.utils.files import write_json

    out = {t: instrument_data(cfg, trunk_seed=t, progress=progress) for t in trunk_seeds(cfg)}
    write_json(prepared_marker(cfg), {"trunks": {f"{k}@{t}": {"weights": tr["weights"], "note": tr["note"]}
                                                 for t, (_, trunks) in out.items() for k, tr in trunks.items()},
                                      "code": CODE})
    return out


def prepared_marker(cfg: Config) -> Path:
    """Written by :func:`design_data` once the shared preconditions of the instrument (ROI
    sets, the trunks of every seed, the trunk caches) exist: :func:`mammo_lib.repro.jobs.collect` reads
    runs back only then, so that collecting never trains."""
    d = instrument_dir(cfg)
    return d.parent / f"{d.name}.prepared.json"


def primary_point(cfg: Config):
    """The pre-specified primary beta (``cv.primary_beta`` in the form ``cv.primary_form``) as a grid point."""
    from mammo_lib.protocol.instrument import BetaPoint

    cv = cfg.section("cv")
    return BetaPoint(str(cv["primary_form"]), float(cv["primary_beta"]))


def replicate_dir(cfg: Config, trunk_seed: int, fold_seed: int) -> Path:
    """The instrument folder of one replicate of the design (trunk seed, fold seed)."""
    return instrument_dir(cfg) / f"trunk{trunk_seed}_folds{fold_seed}"


def instruments(cfg: Config, datas: dict[int, tuple[Any, dict[str, Any]]]) -> list[Any]:
    """One :class:`~mammo_lib.protocol.instrument.Instrument` per replicate (trunk seed t, fold seed f):
    folds and inner splits from ``seed + f``, head seeds ``seed + 1000 t + k`` in fold k, rows
    and run keys tagged ``trunk_seed`` / ``fold_seed``, folders :func:`replicate_dir`."""
    from mammo_lib.protocol.instrument import Instrument
    from mammo_lib.repro.runtime import train_config

    cv = cfg.section("cv")
    seed = int(cfg["seed"])
    out = []
    for t, f in replicates(cfg):
        data = datas[t][0]
        out.append(Instrument(data, conditions(cfg), replicate_dir(cfg, t, f),
                              train_config(cfg, method="finetune", seed=seed + 1000 * t), grid=grid_of(cfg),
                              n_splits=int(cv["n_splits"]), seed=seed + f, shuffle_seed=seed,
                              tags={"trunk_seed": t, "fold_seed": f}, controls=tuple(cv["controls"]),
                              control_point=primary_point(cfg), positive=bool(cv["positive_control"])))
    return out


def grid_of(cfg: Config):
    from mammo_lib.protocol.instrument import beta_grid

    cv = cfg.section("cv")
    return beta_grid(cv["beta_grid"], cv["beta_grid_at"])


def instrument_dir(cfg: Config) -> Path:
    from mammo_lib.repro.runtime import run_dir

    return run_dir(cfg, "instrument")


@dataclass
class Design:
    """Every replicate of Table 2's design: ``result`` (all runs, tagged ``trunk_seed`` and
    ``fold_seed``), ``trunks`` (``{seed: {init: trunk}}``, gate rows included) and the
    ``default`` replicate (the first trunk seed whose trunks pass their gates, the first fold
    seed) that single-model steps (Figs. 7-9) use."""

    result: Any
    trunks: dict[int, dict[str, dict[str, Any]]]
    default: tuple[int, int]
    patients: dict[str, Any] = None  # type: ignore[assignment]  # case id -> patient (cluster bootstrap)
    datas: dict[int, tuple[Any, dict[str, Any]]] = None  # type: ignore[assignment]  # design_data's output

    def default_result(self) -> Any:
        t, f = self.default
        return self.result.select(trunk_seed=t, fold_seed=f)


def default_replicate(cfg: Config, trunks: dict[int, dict[str, dict[str, Any]]]) -> tuple[int, int]:
    """The first trunk seed whose trunks all pass their gates (else the first), the first fold seed."""
    ok = [t for t in trunk_seeds(cfg) if all(tr["gate"]["passes"] for tr in trunks[t].values())]
    return (ok or trunk_seeds(cfg))[0], fold_seeds(cfg)[0]


_RUNS: dict[tuple[str, str], Design] = {}


def remember_design(cfg: Config, design: Design) -> None:
    """Make ``design`` the one :func:`run_design` returns for ``cfg`` in this process (a design
    assembled elsewhere, e.g. from collected jobs: :func:`mammo_lib.repro.jobs.collect`)."""
    _RUNS[(str(cfg.root), cfg.digest())] = design


def run_design(cfg: Config, *, progress: bool = True) -> Design:
    """Run (or read back) every replicate of the instrument (:func:`instruments`): each unit's
    runs resume from their ``result.json``. Within one process the design is reused."""
    from mammo_lib.protocol.instrument import concat_results
    from mammo_lib.utils.progress import tqdm

    key = (str(cfg.root), cfg.digest())
    if key in _RUNS:
        return _RUNS[key]
    datas = design_data(cfg, progress=progress)
    insts = instruments(cfg, datas)
    n = sum(i.n_runs() for i in insts)
    bar = tqdm(total=n, disable=not progress, desc="Table 2 instrument (runs)")
    results = []
    for inst in insts:
        parts = [inst.unit(c, i, k, bar=bar) for c, i, k in inst.units()]
        if inst.has_mask:
            parts += [inst.mask_unit(c, k, bar=bar) for c in inst.conditions for k in range(inst.n_splits)]
        results.append(inst.merge(parts))
    bar.close()
    trunks = {t: tr for t, (_, tr) in datas.items()}
    data0 = next(iter(datas.values()))[0]
    patients = dict(zip(data0.ids, data0.groups if data0.groups is not None else data0.ids))
    design = Design(concat_results(results), trunks, default_replicate(cfg, trunks), patients, datas)
    _RUNS[key] = design
    return design


def run(cfg: Config, *, progress: bool = True):
    """The default replicate of the design (:class:`Design`): ``(result, trunks)`` as the
    single-model steps use them."""
    d = run_design(cfg, progress=progress)
    return d.default_result(), d.trunks[d.default[0]]


def summary(res: Any, condition: str, trunks: dict[str, Any]) -> pd.DataFrame:
    """Per spec: mean +- std of primary-test accuracy over folds, summed confusion, other renderings."""
    r = res.runs[(res.runs["condition"] == condition) & (res.runs["spec"] != "")]
    rows = []
    for spec, g in r.groupby("spec", sort=False):
        init = spec.split("_")[0] if spec != "mask_only" else "imagenet"
        row = {"spec": spec, "init_used": trunks.get(init, {}).get("note", "") if spec != "mask_only" else "mask input",
               "n_folds": len(g), "acc_mean": g["accuracy"].mean(), "acc_std": g["accuracy"].std(ddof=1),
               **{c: int(g[c].sum()) for c in ("tn", "fp", "fn", "tp")}, "n_test": int(g["n_test"].sum()),
               "beta per fold": ", ".join(f"{b:g}" for b in g["beta"]) if spec.endswith(("transfer", "shuffled", "oracle", "uniform", "rolled", "ownkt", "nselkt")) else ""}
        for c in g.columns:
            if c.startswith("acc ") or c in ("flip rate", "energy share on mass", "d4 (test)"):
                row[c] = g[c].mean()
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- the design's analysis
#: Outcomes per condition (``docs/DECISIONS.md``, "The instrument, second revision"): label, column
#: of the run rows, direction (+1: higher is better, -1: lower is better). Condition B has three
#: co-primary outcomes.
OUTCOMES: dict[str, tuple[tuple[str, str, int], ...]] = {
    "A": (("accuracy", "acc in distribution", 1),),
    "B": (("neutral accuracy", "acc neutral", 1), ("flip rate", "flip rate", -1),
          ("reversed-rendering accuracy", "acc reversed", 1)),
    "real": (("accuracy", "acc test", 1),),
}
#: The rendering (test name) whose predictions an accuracy outcome counts.
_OUTCOME_TEST = {"acc in distribution": "in distribution", "acc neutral": "neutral", "acc reversed": "reversed",
                 "acc test": "test"}
#: The paper's knowledge transfer minus fine-tune (points; Table 2).
PAPER_GAIN = {"imagenet": 68.2 - 51.5, "ddsm": 86.1 - 67.9}
#: Columns of ``table2_primary``.
PRIMARY_COLUMNS = ("family", "analysis", "condition", "init", "outcome", "comparison", "difference", "ci_lo", "ci_hi",
                   "p_corrected", "p_nadeau_bengio", "p_paired_t (paper-comparable)", "mde", "n", "n_trunks",
                   "trunk seeds", "boot_lo (patients)", "boot_hi (patients)", "favours KT")


def _arm_select(runs: pd.DataFrame, init: str, arm: str, point: Any, finetune_run: str) -> pd.DataFrame:
    """Rows of one arm: ``finetune`` (grid beta 0), ``kt`` (grid point ``point``), ``selected``
    (beta chosen on the inner split), a control target, ``ownft`` / ``ownkt`` (positive control)."""
    if arm == "finetune":
        return runs[(runs["init"] == init) & (runs["run"] == finetune_run)]
    if arm == "kt":
        return runs[(runs["init"] == init) & (runs["run"] == f"grid:{point.name}")]
    spec = f"{init}_transfer" if arm == "selected" else f"{init}_{arm}"
    return runs[runs["spec"] == spec]


_UNIT = ["trunk_seed", "fold_seed", "fold"]


def _paired(runs: pd.DataFrame, init: str, a: str, b: str, col: str, point: Any, finetune_run: str) -> pd.DataFrame:
    """Per unit (trunk seed, fold seed, fold): the outcome of arms ``a`` and ``b`` and the sizes."""
    ra = _arm_select(runs, init, a, point, finetune_run)
    rb = _arm_select(runs, init, b, point, finetune_run)
    keep = _UNIT + [col, "n_train", "n_val", "n_test"]
    if col not in runs.columns or ra.empty or rb.empty:
        return pd.DataFrame(columns=_UNIT + ["a", "b", "n_train", "n_val", "n_test"])
    m = ra[keep].merge(rb[_UNIT + [col]], on=_UNIT, suffixes=("_a", "_b"), validate="one_to_one")
    return m.rename(columns={f"{col}_a": "a", f"{col}_b": "b"})


def _t_row(d: np.ndarray, n_train: float, n_test: float) -> dict[str, Any]:
    """Nadeau-Bengio and plain paired t, 95 % CI (corrected) and the minimum detectable effect."""
    from scipy import stats as sps

    from mammo_lib.metrics.stats import corrected_resampled_t, min_detectable_effect, paired_t

    n = int(d.size)
    out = {"difference": float(d.mean()) if n else np.nan, "n": n}
    if n < 2:
        return {**out, "ci_lo": np.nan, "ci_hi": np.nan, "p_nadeau_bengio": np.nan,
                "p_paired_t (paper-comparable)": np.nan, "mde": np.nan}
    nb = corrected_resampled_t(d, max(1, int(round(n_train))), max(1, int(round(n_test))))
    plain = paired_t(d)
    half = float(sps.t.ppf(0.975, n - 1)) * nb["se"]
    sd = float(np.std(d, ddof=1))
    try:  # noncentral t with df = 1 (two units) has no usable power curve: no MDE then
        mde = min_detectable_effect(sd, n, correction=1.0 + n * n_test / n_train) if n >= 3 else np.nan
    except ValueError:
        mde = np.nan
    return {**out, "ci_lo": out["difference"] - half, "ci_hi": out["difference"] + half,
            "p_nadeau_bengio": nb["p"], "p_paired_t (paper-comparable)": plain["p"], "mde": mde}


def _cluster_ci(preds: pd.DataFrame, init: str, a: str, b: str, test: str, point: Any, finetune_run: str,
                seeds: list[int], patients: dict[str, Any], seed: int) -> tuple[float, float]:
    """Patient-cluster bootstrap 95 % CI (points) of accuracy(a) - accuracy(b) over the pooled test
    predictions of the trunk seeds ``seeds`` (every replicate's cases; a patient is one cluster)."""
    from mammo_lib.metrics.stats import cluster_bootstrap_diff

    p = preds[(preds["test"] == test) & (preds["trunk_seed"].isin(seeds))]
    if p.empty:
        return np.nan, np.nan
    pa = _arm_select(p, init, a, point, finetune_run)
    pb = _arm_select(p, init, b, point, finetune_run)
    key = ["trunk_seed", "fold_seed", "case_id"]
    m = pa[key + ["pred", "label"]].merge(pb[key + ["pred"]], on=key, suffixes=("_a", "_b"))
    if m.empty:
        return np.nan, np.nan
    r = cluster_bootstrap_diff((m["pred_a"] == m["label"]).to_numpy(), (m["pred_b"] == m["label"]).to_numpy(),
                               m["case_id"].map(lambda c: patients.get(c, c)).to_numpy(), n_boot=2000, seed=seed)
    return 100 * r["lo"], 100 * r["hi"]


def usable_trunks(trunk_tab: pd.DataFrame, init: str) -> list[int]:
    """Trunk seeds of ``init`` whose trunk gate and calibration gate both pass (``table2_trunks``)."""
    t = trunk_tab[trunk_tab["init"] == init]
    ok = t["passes"].astype(bool)
    if "calibrated" in t.columns:
        ok &= t["calibrated"].astype(bool)
    return [int(s) for s in t.loc[ok, "seed"]]


def _comparisons(controls: Sequence[str], positive: bool) -> list[tuple[str, str, str, str, str]]:
    """(family, analysis, a, b, label) of every comparison of the design."""
    out = [("primary", "fixed beta", "kt", "finetune", "KT (primary beta) - fine-tune")]
    out += [("secondary", "beta chosen on the inner split (the paper's procedure)", "selected", "finetune",
             "KT (chosen beta) - fine-tune")]
    for t in controls:
        out.append(("controls", f"vs {t} target" if t != "shuffled" else "vs shuffled teacher", "kt", t,
                    f"KT (primary beta) - KT with {t} target"))
    if positive:
        out.append(("controls", "positive control (own channels)", "ownkt", "ownft",
                    "own-channel KT - own-channel fine-tune"))
    out.append(("oracle", "oracle: epoch and beta selected on the neutral rendering of the inner split",
                "nselkt", "nselft", "KT (oracle-selected beta and epoch) - fine-tune (oracle-selected epoch)"))
    return out


def primary_analysis(cfg: Config, design: Design, trunk_tab: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pre-specified analysis (``docs/DECISIONS.md``): per condition, initialisation and outcome,
    knowledge transfer at the primary beta minus fine-tuning and the trend over the grid (per-unit
    slope on log2(1 + beta), family ``primary``, Holm over its cells); the paper's per-fold choice
    (``secondary``); knowledge transfer against every null and the positive control
    (``controls``). Differences in points (outcome x 100), pooled over the units (folds x fold
    seeds) of the trunks that pass both gates; ``p_corrected`` is the Nadeau-Bengio p Holm-adjusted
    within its family, ``p_paired_t (paper-comparable)`` the plain paired t. Returns
    ``(table2_primary, table2_per_trunk)``."""
    from mammo_lib.protocol.instrument import CONTROL_TARGETS
    from mammo_lib.metrics.stats import corrected_resampled_t, holm, trend_test

    res = design.result
    runs, preds = res.runs, res.predictions
    cv = cfg.section("cv")
    point = primary_point(cfg)
    grid = grid_of(cfg)
    ft_run = f"grid:{next(p for p in grid if p.is_finetune).name}"
    controls = [c for c in cv["controls"] if c in CONTROL_TARGETS]
    comps = _comparisons([c for c in controls if c != "oracle"] + (["oracle"] if "oracle" in controls else []),
                         bool(cv["positive_control"]))
    rows, per_trunk = [], []
    for c in res.conditions:
        rc = runs[runs["condition"] == c.name]
        pc = preds[preds["condition"] == c.name] if len(preds) else preds
        for init in [i for i in INIT_LABELS if i in set(rc["init"])]:
            seeds = usable_trunks(trunk_tab, init)
            pool = rc[rc["trunk_seed"].isin(seeds)]
            for label, col, sign in OUTCOMES.get(c.name, ()):
                if col not in rc.columns:
                    continue
                for fam, analysis, a, b, comp in comps:
                    m = _paired(pool, init, a, b, col, point, ft_run)
                    if fam == "oracle" and m.empty:  # a condition without a neutral inner split (A)
                        continue
                    d = 100 * (m["a"].to_numpy(float) - m["b"].to_numpy(float))
                    n_tr = float((m["n_train"] + m["n_val"]).mean()) if len(m) else np.nan
                    row = {"family": fam, "analysis": analysis, "condition": c.name, "init": init, "outcome": label,
                           "comparison": comp, **_t_row(d, n_tr, float(m["n_test"].mean()) if len(m) else np.nan),
                           "n_trunks": len(seeds), "trunk seeds": " ".join(map(str, seeds))}
                    lo = hi = np.nan
                    if col in _OUTCOME_TEST and fam == "primary" and len(m):
                        lo, hi = _cluster_ci(pc, init, a, b, _OUTCOME_TEST[col], point, ft_run, seeds,
                                             design.patients, int(cfg["seed"]))
                    row.update({"boot_lo (patients)": lo, "boot_hi (patients)": hi})
                    row["favours KT"] = bool(np.isfinite(row["difference"]) and sign * row["difference"] > 0)
                    rows.append(row)
                    if fam == "primary":  # per trunk (every trunk, passing or not) and pooled
                        for t in sorted(set(rc["trunk_seed"])):
                            mt = _paired(rc[rc["trunk_seed"] == t], init, a, b, col, point, ft_run)
                            dt = 100 * (mt["a"].to_numpy(float) - mt["b"].to_numpy(float))
                            r = _t_row(dt, float((mt["n_train"] + mt["n_val"]).mean()) if len(mt) else np.nan,
                                       float(mt["n_test"].mean()) if len(mt) else np.nan)
                            per_trunk.append({"condition": c.name, "init": init, "outcome": label, "trunk seed": str(t),
                                              "used in verdict": t in seeds, **r})
                        per_trunk.append({"condition": c.name, "init": init, "outcome": label,
                                          "trunk seed": "pooled (used trunks)", "used in verdict": True,
                                          **{k: row[k] for k in ("difference", "n", "ci_lo", "ci_hi", "p_nadeau_bengio",
                                                                 "p_paired_t (paper-comparable)", "mde")}})
                # the trend over the grid (Eq. 4 form): per-unit slope on log2(1 + beta)
                g = pool[(pool["init"] == init) & pool["run"].str.startswith("grid:") & (pool["form"] == point.form)]
                row = {"family": "primary", "analysis": "trend over the grid", "condition": c.name, "init": init,
                       "outcome": label, "comparison": "slope per doubling of 1 + beta",
                       "n_trunks": len(seeds), "trunk seeds": " ".join(map(str, seeds)),
                       "boot_lo (patients)": np.nan, "boot_hi (patients)": np.nan}
                if g["beta"].nunique() >= 2 and len(g):
                    g = g.assign(unit=g["trunk_seed"].astype(str) + "/" + g["fold_seed"].astype(str) + "/"
                                 + g["fold"].astype(str), y=100 * g[col].astype(float))
                    slopes = np.array([np.polyfit(np.log2(1 + u["beta"].to_numpy(float)), u["y"].to_numpy(), 1)[0]
                                       for _, u in g.groupby("unit", sort=True)])
                    tr = trend_test(g, "y", beta_col="beta", fold_col="unit") if len(slopes) >= 2 else None
                    r = _t_row(slopes, float((g["n_train"] + g["n_val"]).mean()), float(g["n_test"].mean()))
                    if tr is not None:
                        r["p_paired_t (paper-comparable)"] = tr["p"]
                        r["p_nadeau_bengio"] = corrected_resampled_t(
                            slopes, max(1, int(round(float((g["n_train"] + g["n_val"]).mean())))),
                            max(1, int(round(float(g["n_test"].mean())))))["p"]
                    row.update(r)
                else:
                    row.update(_t_row(np.array([]), np.nan, np.nan))
                row["favours KT"] = bool(np.isfinite(row["difference"]) and sign * row["difference"] > 0)
                rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=list(PRIMARY_COLUMNS)), pd.DataFrame(per_trunk)
    table["p_corrected"] = np.nan
    for fam, idx in table.groupby("family").groups.items():
        table.loc[idx, "p_corrected"] = holm(table.loc[idx, "p_nadeau_bengio"].to_numpy(float))
    order = {"primary": 0, "controls": 1, "secondary": 2, "oracle": 3}
    table = table.sort_values("family", key=lambda s: s.map(order), kind="mergesort").reset_index(drop=True)
    return table[list(PRIMARY_COLUMNS)], pd.DataFrame(per_trunk)


def _significant(r: Any) -> bool:
    """Holm-adjusted Nadeau-Bengio p < 0.05 and the difference in knowledge transfer's favour."""
    return bool(np.isfinite(r["p_corrected"]) and r["p_corrected"] < 0.05 and r["favours KT"])


def _fmt_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def design_verdict(cfg: Config, trunk_tab: pd.DataFrame, primary: pd.DataFrame, conds: Sequence[Any]) -> list[str]:
    """Plain sentences that follow from ``table2_trunks`` and ``table2_primary``: the gates of every
    trunk first; per condition and initialisation either "no conclusion" (fewer than
    ``cv.min_passing_trunks`` trunks pass both gates) or, per outcome, knowledge transfer at the
    primary beta minus fine-tuning with its corrected test, CI and minimum detectable effect, the
    trend, and whether it beats every null. Knowledge transfer "helps" only where it beats
    fine-tuning and every null (Holm-adjusted Nadeau-Bengio p < 0.05, in its favour)."""
    cv = cfg.section("cv")
    need = int(cv["min_passing_trunks"])
    beta = primary_point(cfg)
    lines = []
    if not any(str(c).startswith("calibration:") for c in trunk_tab.columns):
        lines.append("No calibration gate on real data (no known confounder); the verdict below is the plain "
                     "comparison, with the trunk gates enforced.")
    parts = []
    for _, r in trunk_tab.iterrows():
        bad = [] if r["passes"] else [trunk_gate_failures(dict(r))]
        if "calibrated" in trunk_tab.columns and not r["calibrated"]:
            bad.append("calibration gate not passed")
        parts.append(f"{INIT_LABELS.get(r['init'], r['init'])} seed {r['seed']} "
                     + ("passed" if not bad else f"NOT passed ({'; '.join(b for b in bad if b)})"))
    lines.append("**Gates of every trunk (checked before any verdict; a trunk that fails is left out):** "
                 + "; ".join(parts) + ".")
    lines.append(f"**Pre-specified primary analysis** (declared in the profile before any run): knowledge "
                 f"transfer at beta = {beta.beta:g} ({beta.form} form of Eq. 4) minus fine-tuning, and the trend over "
                 f"the grid; differences in points pooled over folds x fold seeds x passing trunks; p_corrected = "
                 f"Nadeau-Bengio corrected resampled t, Holm-adjusted over the cells of the table.")
    for c in conds:
        for init in INIT_LABELS:
            sub = primary[(primary["condition"] == c.name) & (primary["init"] == init)]
            if sub.empty:
                continue
            used = usable_trunks(trunk_tab, init)
            total = int((trunk_tab["init"] == init).sum())
            head = f"- Condition {c.name} ({c.description}), {INIT_LABELS[init]} trunks: {len(used)} of {total} pass"
            if len(used) < need:
                lines.append(head + f" (at least {need} needed): **no conclusion** is drawn.")
                continue
            out = []
            helps_any = False
            for label, _, sign in OUTCOMES.get(c.name, ()):
                o = sub[sub["outcome"] == label]
                p = o[(o["family"] == "primary") & (o["analysis"] == "fixed beta")]
                if p.empty:
                    continue
                p = p.iloc[0]
                tr = o[o["analysis"] == "trend over the grid"]
                nulls = o[(o["family"] == "controls") & o["analysis"].str.startswith("vs ")
                          & ~o["analysis"].str.contains("oracle")]
                beats_ft = _significant(p)
                beats_nulls = len(nulls) > 0 and all(_significant(r) for _, r in nulls.iterrows())
                helps = beats_ft and beats_nulls
                helps_any |= helps
                txt = (f"{label}: {p['difference']:+.1f} points (95 % CI [{p['ci_lo']:+.1f}, {p['ci_hi']:+.1f}]; "
                       f"p_corrected = {_fmt_p(p['p_corrected'])}; plain paired t p = "
                       f"{_fmt_p(p['p_paired_t (paper-comparable)'])}, the test comparable to the paper's; "
                       f"n = {p['n']})")
                if not beats_ft:
                    txt += (f"; no effect of {p['mde']:.1f} points or more detected" if np.isfinite(p["mde"]) else "")
                    if label.endswith("accuracy") and np.isfinite(p["ci_hi"]):
                        gain = PAPER_GAIN[init]
                        inside = p["ci_lo"] <= gain <= p["ci_hi"]
                        txt += f"; the paper's +{gain:.1f} lies {'inside' if inside else 'outside'} the CI"
                if len(tr) and np.isfinite(tr.iloc[0]["difference"]):
                    t0 = tr.iloc[0]
                    txt += (f"; trend {t0['difference']:+.2f} points per doubling of 1 + beta "
                            f"(p_corrected = {_fmt_p(t0['p_corrected'])})")
                if len(nulls):
                    txt += "; vs the nulls " + ", ".join(
                        f"{r['analysis'][3:]} {r['difference']:+.1f} (p_corrected = {_fmt_p(r['p_corrected'])})"
                        for _, r in nulls.iterrows())
                txt += (" -> **helps**" if helps else " -> beats fine-tune but not every null" if beats_ft
                        else "")
                out.append(txt)
            pos = sub[sub["analysis"].str.startswith("positive control")]
            if len(pos):
                out.append("positive control (classifier on group 4's own channels), KT - fine-tune: " + ", ".join(
                    f"{r['outcome']} {r['difference']:+.1f} (p_corrected = {_fmt_p(r['p_corrected'])})"
                    for _, r in pos.iterrows()))
            orc = sub[sub["family"] == "oracle"]
            if len(orc):
                out.append("oracle analysis (epoch and beta selected on the neutral inner split, not a result), KT - "
                           "fine-tune: " + ", ".join(
                               f"{r['outcome']} {r['difference']:+.1f} (p_corrected = {_fmt_p(r['p_corrected'])})"
                               for _, r in orc.iterrows()))
            verdict = ("**Knowledge transfer helps here** (it beats fine-tuning and every null)." if helps_any else
                       "**No effect of knowledge transfer detected here** beyond fine-tuning and the nulls.")
            lines.append(head + f" ({int(sub.iloc[0]['n'])} units = folds x fold seeds x trunks). "
                         + "; ".join(out) + ". " + verdict)
    return lines


def calibration_table(cfg: Config, design: Design) -> pd.DataFrame:
    """The calibration gate (:func:`~mammo_lib.protocol.instrument.calibration_gate`, condition B) of every
    trunk seed, pooled over its fold seeds and folds; column ``seed``."""
    from mammo_lib.protocol.instrument import calibration_gate

    if not cfg.uses_phantom:
        return pd.DataFrame()
    parts = [calibration_gate(design.result.select(trunk_seed=t), "B").assign(seed=t) for t in design.trunks]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def trunks_with_calibration(trunk_tab: pd.DataFrame, gate: pd.DataFrame) -> pd.DataFrame:
    """``table2_trunks``: one row per trunk (init, seed, own accuracy, trunk gate ``passes``) with
    its calibration-gate values (fine-tune in-distribution accuracy, flip rate, mask-only accuracy)
    and ``calibrated``; ``used in verdict`` = both gates pass."""
    out = trunk_tab.copy()
    if len(gate):
        short = {"fine-tune (beta 0), in-distribution accuracy": "calibration: fine-tune in-distribution accuracy",
                 "fine-tune (beta 0), predictions flipped by the reversed rendering": "calibration: fine-tune flip rate",
                 "mask-only model, accuracy": "calibration: mask-only accuracy"}
        for i, r in out.iterrows():
            g = gate[(gate["seed"] == r["seed"]) & gate["init"].isin([r["init"], ""])]
            for _, gr in g.iterrows():
                out.loc[i, short.get(gr["check"], gr["check"])] = round(float(gr["value"]), 3)
            out.loc[i, "calibrated"] = bool(len(g)) and bool(g["passes"].astype(bool).all())
        out["calibrated"] = out["calibrated"].astype(bool)
    else:
        out["calibrated"] = True
    out["used in verdict"] = out["passes"].astype(bool) & out["calibrated"]
    return out


def write_text_note(results_dir: Path, name: str, text: str) -> None:
    """Add ``text`` to ``tables/<name>.notes.md``, the note the report prints under that table
    (a paragraph already there stays first; the same text is not added twice)."""
    from mammo_lib.utils.files import write_text

    path = Path(results_dir) / "tables" / f"{name}.notes.md"
    old = path.read_text().rstrip("\n") if path.exists() else ""
    if text in old:
        return
    write_text(path, (old + "\n\n" if old else "") + text + "\n")


def run_model(cfg: Config, design: Design, replicate: tuple[int, int], condition: str, init: str, fold: int,
              run_name: str):
    """The trained network of one run (e.g. ``"grid:b32"``, ``"positive:b0"``) of a replicate:
    its initialisation's trunk with the run's ``head.pt`` loaded."""
    from mammo_lib.protocol.instrument import POSITIVE_HEAD, load_head
    from mammo_lib.networks.densenet import build_model

    t, f = replicate
    head = POSITIVE_HEAD if run_name.startswith("positive:") else cfg.section("train")["head"]
    model = build_model(cfg["arch"], weights=design.trunks[t][init]["weights"],
                        seed=int(cfg["seed"]) + 1000 * t + fold, head=head)
    path = replicate_dir(cfg, t, f) / condition / init / f"fold_{fold}" / run_name.replace(":", "_") / "head.pt"
    return load_head(model, path)


def mechanism(cfg: Config, design: Design, *, progress: bool = True) -> dict[str, Any] | None:
    """Why the shortcut survives (:mod:`mammo_lib.protocol.mechanism`): on the default replicate, condition B,
    per initialisation and arm (fine-tune, knowledge transfer at the primary beta, the uniform
    null, the positive control's two arms), the calcification's effect on the logit margin split
    exactly into the pass-through and group 4's own channels, the classifier's |w| on each half and
    the own-channel energy on the calcification's cells. Each case's pair of renderings (one with a
    calcification, one without) comes from its test fold's model; rows pool the folds weighted by
    their cases. ``None`` on real data (no known confounder). Returns ``{"table", "figure"}``."""
    from mammo_lib.repro import figures
    from mammo_lib.protocol.mechanism import MECHANISM_COLUMNS, MechanismArm, contrast_pairs, mechanism_table, pair_caches, pair_masks
    from mammo_lib.repro.datasets import roi_sets
    from mammo_lib.protocol.cross_validation import make_folds

    cond = next((c for c in conditions(cfg) if c.name == "B"), None)
    if not cfg.uses_phantom or cond is None:
        return None
    t, f = design.default
    data = (design.datas or {}).get(t, (None,))[0] or instrument_data(cfg, trunk_seed=t, progress=progress)[0]
    ds = roi_sets(cfg, progress=False)
    rends = renderings(cfg, ds)
    names = list(dict.fromkeys([cond.train, *cond.tests.values()]))
    conf = {r: rends[r].confounders for r in names}
    if any(v is None for v in conf.values()):
        return None
    pairs = contrast_pairs(conf)
    if pairs.empty:
        return None
    masks = pair_masks(conf, pairs)
    folds = make_folds(data.labels, data.groups, n_splits=int(cfg.section("cv")["n_splits"]), seed=int(cfg["seed"]) + f)
    pt = primary_point(cfg)
    cv = cfg.section("cv")
    arms = [("fine-tune", "grid:b0"), (f"knowledge transfer (beta {pt.beta:g})", f"grid:{pt.name}")]
    if "uniform" in cv["controls"]:
        arms.append(("KT, uniform target", f"control:uniform:{pt.name}"))
    if cv["positive_control"]:
        arms += [("positive control, fine-tune", "positive:b0"), ("positive control, KT", f"positive:{pt.name}")]
    rows = []
    pos = pairs["position"].to_numpy()
    for init in data.caches:
        with_c, without = pair_caches(data.caches[init], pairs)
        for k in range(int(cv["n_splits"])):
            cases = np.flatnonzero(folds[pos] == k)
            if not len(cases):
                continue
            models = {name: MechanismArm(run_model(cfg, design, (t, f), cond.name, init, k, run), with_c, without)
                      for name, run in arms}
            rows.append(mechanism_table(models, masks, cases=cases).assign(init=init, fold=k))
    if not rows:
        return None
    per_fold = pd.concat(rows, ignore_index=True)
    num = [c for c in MECHANISM_COLUMNS if c not in ("arm", "head", "n_cases")]
    out = []
    for (init, arm), g in per_fold.groupby(["init", "arm"], sort=False):
        w = g["n_cases"].to_numpy(float)
        row = {"init": init, "arm": arm, "head": g["head"].iloc[0], "n_cases": int(w.sum())}
        for c in num:
            v = g[c].to_numpy(float)
            ok = np.isfinite(v)
            row[c] = float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
        out.append(row)
    table = pd.DataFrame(out)
    main = "ddsm" if "ddsm" in set(table["init"]) else table["init"].iloc[0]
    fig = figures.mechanism_figure(table[table["init"] == main],
                                   title=f"Condition B, {INIT_LABELS.get(main, main)} trunk seed {t}: the calcification's "
                                         f"effect on the logit margin")
    return {"table": table, "figure": fig, "per_fold": per_fold}


def verdict_lines(cfg: Config, res: Any, gate: pd.DataFrame, summaries: dict[str, pd.DataFrame],
                  trunks: dict[str, Any]) -> list[str]:
    """Plain sentences: the gate first, then per condition and initialisation what KT did."""
    from mammo_lib.protocol.instrument import gate_passes
    from mammo_lib.metrics.stats import compare

    lines = []
    trunk_fail = {i: t["gate"] for i, t in trunks.items() if t.get("gate") is not None and not t["gate"]["passes"]}
    if trunk_fail:
        lines.append("**Trunk gate (checked first):** " + "; ".join(
            f"{INIT_LABELS.get(i, i)} trunk NOT passed ({trunk_gate_failures(g)})" for i, g in trunk_fail.items())
            + ": its rows get no verdict.")
    if len(gate):
        ok = {i: gate_passes(gate, i) for i in trunks}
        lines.append("**Calibration gate (condition B, checked before any verdict):** " + "; ".join(
            f"{INIT_LABELS[i]} trunk {'passed' if v else 'NOT passed'}" for i, v in ok.items()) + ". "
            + "; ".join(f"{r['check']}{' (' + INIT_LABELS.get(r['init'], r['init']) + ')' if r['init'] else ''}: "
                        f"{r['value']:.3f} ({r['threshold']})" for _, r in gate.iterrows()) + ".")
    else:
        ok = {i: True for i in trunks}
        lines.append("No calibration gate on real data (no known confounder); the verdict below is the plain comparison.")
    for c in res.conditions:
        s = summaries[c.name].set_index("spec")
        cvr = res.cv_result(c.name)
        for init in trunks:
            ft, kt, sh = f"{init}_finetune", f"{init}_transfer", f"{init}_shuffled"
            if ft not in s.index or kt not in s.index:
                continue
            if init in trunk_fail:
                lines.append(f"- Condition {c.name}, {INIT_LABELS[init]} rows: **trunk gate not passed** "
                             f"({trunk_gate_failures(trunk_fail[init])}), so no conclusion is drawn from them. "
                             f"Their numbers are in the tables below for reference.")
                continue
            if not ok.get(init, False):
                failed = gate[(gate["init"].isin([init, ""])) & ~gate["passes"].astype(bool)]["check"].tolist()
                lines.append(f"- Condition {c.name}, {INIT_LABELS[init]} rows: **not calibrated** (failed: "
                             f"{'; '.join(failed)}), so no conclusion is drawn from them. Their numbers are in "
                             f"the tables below for reference.")
                continue
            cmp = compare(cvr, kt, ft, seed=int(cfg["seed"]))
            cmp_sh = compare(cvr, kt, sh, seed=int(cfg["seed"])) if sh in s.index else None
            d = 100 * cmp["mean_diff"]
            ch = res.choices
            betas = (ch[(ch["condition"] == c.name) & (ch["init"] == init)]["beta"]
                     if {"condition", "init", "beta"} <= set(ch.columns) else pd.Series(dtype=float))
            t_text = (f"paired t-test p = {cmp['t_p']:.3g}" if np.isfinite(cmp["t_p"]) else
                      "paired t-test p undefined: " + ("beta 0 was chosen in every fold, so the two arms are the "
                                                       "same model" if len(betas) and (betas == 0).all() else
                                                       "the two arms have the same accuracy in every fold"))
            helps = cmp["t_p"] < 0.05 and d > 0 and cmp_sh is not None and cmp_sh["mean_diff"] > 0 and cmp_sh["t_p"] < 0.05
            lines.append(
                f"- Condition {c.name} ({c.description}), {INIT_LABELS[init]} rows, test = {c.primary}: knowledge "
                f"transfer {100 * s.loc[kt, 'acc_mean']:.1f} % vs fine-tune {100 * s.loc[ft, 'acc_mean']:.1f} % "
                f"({d:+.1f} points over folds, {t_text}, McNemar p = {cmp['mcnemar_p']:.3g}, "
                f"bootstrap 95 % CI [{100 * cmp['boot_lo']:+.1f}, {100 * cmp['boot_hi']:+.1f}])"
                + (f"; vs the shuffled teacher {100 * cmp_sh['mean_diff']:+.1f} points (p = {cmp_sh['t_p']:.3g})" if cmp_sh else "")
                + f". Energy share on the mass {s.loc[kt, 'energy share on mass']:.3f} vs {s.loc[ft, 'energy share on mass']:.3f}"
                + (f"; predictions flipped by the confounder change {s.loc[kt, 'flip rate']:.3f} vs {s.loc[ft, 'flip rate']:.3f}"
                   if "flip rate" in s.columns else "")
                + (f"; accuracy on the reversed rendering {100 * s.loc[kt, 'acc reversed']:.1f} % vs "
                   f"{100 * s.loc[ft, 'acc reversed']:.1f} %" if "acc reversed" in s.columns and
                   pd.notna(s.loc[kt, "acc reversed"]) else "") + ". "
                + ("**Knowledge transfer helps here.**" if helps else "**No effect of knowledge transfer on accuracy here.**"))
    return lines


def trunk_gate_failures(row: dict[str, Any]) -> str:
    """The checks a trunk's gate row (:func:`~mammo_lib.protocol.stand_in.trunk_gate`) failed, in words,
    e.g. ``"own test accuracy 0.675 < 0.70"``; ``""`` when it passes."""
    from mammo_lib.protocol.stand_in import GATE_MIN_ACCURACY, GATE_MIN_ENERGY_RATIO

    out = []
    acc = row.get("own test accuracy")
    if isinstance(acc, (int, float)) and np.isfinite(acc) and acc < GATE_MIN_ACCURACY:
        out.append(f"own test accuracy {acc:.3f} < {GATE_MIN_ACCURACY:.2f}")
    ratio = row.get("energy ratio")
    if isinstance(ratio, (int, float)) and ratio < GATE_MIN_ENERGY_RATIO:
        out.append(f"teacher energy ratio {ratio:.2f} < {GATE_MIN_ENERGY_RATIO:.1f}")
    return "; ".join(out) or ("gate not passed" if not row.get("passes", True) else "")


# ------------------------------------------------------------------------------------- significance


def fold_model(cfg: Config, spec: str, fold: int, condition: str | None = None, *,
               replicate: tuple[int, int] | None = None):
    """The model selected on the inner validation split for ``spec`` (e.g. ``"ddsm_transfer"``) and
    ``fold`` in ``condition`` (default: the profile's last condition, B on the phantom), in
    ``replicate`` (trunk seed, fold seed; default: :attr:`Design.default`)."""
    from mammo_lib.protocol.instrument import POSITIVE_HEAD, load_head

    d = run_design(cfg, progress=False)
    t, f = replicate or d.default
    res, trunks = d.result.select(trunk_seed=t, fold_seed=f), d.trunks[t]
    cond = condition or res.conditions[-1].name
    row = res.runs[(res.runs["condition"] == cond) & (res.runs["spec"] == spec) & (res.runs["fold"] == fold)]
    if row.empty:
        raise KeyError(f"no run {spec!r} in fold {fold} of condition {cond!r} (trunk seed {t}, fold seed {f})")
    run_name = row.iloc[0]["run"]
    if run_name.startswith("transfer("):
        run_name = run_name[len("transfer("):-1]
    init = "imagenet" if spec == "mask_only" else spec.split("_")[0]
    init_dir = "mask" if spec == "mask_only" else init
    path = replicate_dir(cfg, t, f) / cond / init_dir / f"fold_{fold}" / run_name.replace(":", "_") / "head.pt"
    from mammo_lib.networks.densenet import build_model
    head = POSITIVE_HEAD if spec.endswith(("_ownft", "_ownkt")) else cfg.section("train")["head"]
    model = build_model(cfg["arch"], weights=trunks[init]["weights"], seed=int(cfg["seed"]) + 1000 * t + fold,
                        head=head)
    return load_head(model, path)


def ddsm_checkpoint(cfg: Config, *, progress: bool = True) -> Path:
    """The DDSM pre-trained checkpoint of the profile (pre-trains first when absent)."""
    from mammo_lib.repro.table2 import ddsm_trunk

    return Path(ddsm_trunk(cfg, progress=progress)["weights"])


def initial_network(cfg: Config, spec: str):
    """The network ``spec``'s runs start from (the pre-trained trunk, its group 4 not yet trained for
    the task; the teacher of knowledge transfer), built as :func:`mammo_lib.repro.table2.fold_model` builds
    a run's model before loading its trained head."""
    from mammo_lib.networks.densenet import build_model

    _, trunks = run(cfg, progress=False)
    init = "imagenet" if spec == "mask_only" else spec.split("_")[0]
    return build_model(cfg["arch"], weights=trunks[init]["weights"], seed=int(cfg["seed"]),
                       head=cfg.section("train")["head"])

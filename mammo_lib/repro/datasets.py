"""Data assembly of a profile: the datasets' records and their ROI sets (Sec. 3.1-3.2).

The cross-validation set (BCDR, or its phantom twin with its renderings) and the pre-training set
(CBIS-DDSM, or its phantom twin) split into its official train and test parts; real data are
checked against ``data_manifest.csv`` first. Every step of :mod:`mammo_lib.repro.steps` starts here.

>>> from mammo_lib.repro.config import load_config
>>> from mammo_lib.repro.datasets import dataset_table, roi_sets
>>> ds = roi_sets(load_config("smoke"), progress=False)       # doctest: +SKIP
>>> dataset_table(ds)[["set", "masses"]]                      # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.data.records import LoadResult
from mammo_lib.repro.report import write_table


@dataclass
class Datasets:
    """ROI sets of one profile: the cross-validation set (BCDR or its phantom twin), an optional
    shifted rendering of it for the test folds (phantom only), and the pre-training set split
    into its official train and test parts (CBIS-DDSM or its phantom twin)."""

    cv: Any
    cv_test: Any | None
    pre_train: Any
    pre_test: Any
    exclusions: pd.DataFrame
    sources: dict[str, LoadResult] = field(default_factory=dict)
    variant: str = "mass_centred"
    #: further renderings of the cross-validation cases by name (phantom: ``shifted`` and extras).
    renderings: dict[str, Any] = field(default_factory=dict)


def _phantom_records(cfg: Config, *, progress: bool) -> dict[str, LoadResult]:
    from mammo_lib.data.generic_csv import load_generic
    from mammo_lib.data.phantom import PhantomConfig, generate_phantom

    from mammo_lib.data.phantom import extra_renderings

    ph = cfg.section("phantom")
    seed = ph.get("seed")  # None (the declared default): the profile's seed
    common = {"seed": int(cfg["seed"] if seed is None else seed), "image_shape": tuple(ph["image_shape"]),
              **dict(ph.get("config") or {})}
    bl = {**common, **dict(ph.get("bcdr_like") or {})}
    dl = {**common, **dict(ph.get("ddsm_like") or {})}
    base = cfg.work_dir / "phantom"
    bcfg = PhantomConfig(**_tuples(bl))
    bdir = generate_phantom(base / "bcdr_like", bcfg, kind="bcdr_like", progress=progress)
    ddir = generate_phantom(base / "ddsm_like", PhantomConfig(**_tuples(dl)), kind="ddsm_like", progress=progress)
    out = {
        "bcdr_like": load_generic(bdir / "cases.csv"),
        "bcdr_like_shifted": load_generic(bdir / "cases_shifted.csv"),
        **{f"bcdr_like_{e}": load_generic(bdir / f"cases_{e}.csv") for e in extra_renderings(bcfg)},
        "ddsm_like": load_generic(ddir / "cases.csv"),
    }
    for name, res in out.items():
        for r in res.records:
            r.dataset = f"phantom-{name}"
    return out


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """YAML lists to the tuples :class:`~mammo_lib.data.phantom.PhantomConfig` expects (ranges, shape)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _real_records(cfg: Config) -> dict[str, LoadResult]:
    from mammo_lib.data.bcdr import balanced_draw, load_bcdr
    from mammo_lib.data.cbis_ddsm import load_cbis_ddsm

    rd = cfg.section("real_data")
    root = cfg.data_root
    assert root is not None  # guarded by Config.uses_phantom
    cb = rd["cbis_ddsm"]
    cbis = load_cbis_ddsm([root / p for p in cb["csv"]], root / cb["dicom_root"], on_error="skip")
    d01 = rd["bcdr_d01"]
    f01 = rd["bcdr_f01"]
    bd = load_bcdr(root / d01["outlines"], root / d01["images"], subset="D01", on_error="skip")
    bf = load_bcdr(root / f01["outlines"], root / f01["images"], subset="F01", on_error="skip")
    draw = cfg.typed.real_data.bcdr_f01.draw   # defaults declared in the profile schema
    bf_drawn = balanced_draw(bf, n_benign=draw.n_benign, n_malignant=draw.n_malignant, seed=draw.seed)
    # bf_drawn carries bf's exclusions and records every F01 mass not drawn, with its reason.
    bcdr = LoadResult(list(bd.records) + list(bf_drawn.records), list(bd.exclusions) + list(bf_drawn.exclusions))
    return {"bcdr": bcdr, "cbis_ddsm": cbis}


def verify_data(cfg: Config) -> pd.DataFrame:
    """Check the real datasets against ``data_manifest.csv`` (one row per file: ok, missing,
    altered or unchecked) and raise :class:`~mammo_lib.data.records.DataError` naming every missing or
    altered file. Each manifest dataset is checked in the folder the profile reads it from."""
    from mammo_lib.data.manifest import verify_manifest

    if cfg.uses_phantom:
        return pd.DataFrame(columns=["dataset", "file", "status", "reason"])
    rd = cfg.section("real_data")
    root = cfg.data_root
    folders = {"CBIS-DDSM": Path(rd["cbis_ddsm"]["csv"][0]).parent,
               "BCDR-D01": Path(rd["bcdr_d01"]["outlines"]).parent,
               "BCDR-F01": Path(rd["bcdr_f01"]["outlines"]).parent}
    rows, reports = [], []
    for dataset, folder in folders.items():
        rep = verify_manifest(cfg.root / "data_manifest.csv", root / folder, dataset=dataset)
        reports.append(rep)
        for status in ("ok", "missing", "altered", "unchecked"):
            rows += [{"dataset": dataset, "file": f, "status": status, "reason": rep.reasons.get(f, "")}
                     for f in getattr(rep, status)]
    table = pd.DataFrame(rows, columns=["dataset", "file", "status", "reason"])
    write_table(table, "data_verification", cfg.results_dir)
    for rep in reports:
        rep.raise_if_bad()
    return table


def load_sources(cfg: Config, *, progress: bool = True) -> dict[str, LoadResult]:
    """Records of every dataset the profile uses (phantom generated on first use)."""
    return _real_records(cfg) if not cfg.uses_phantom else _phantom_records(cfg, progress=progress)


_ROI_SETS: dict[tuple[str, ...], Datasets] = {}


def roi_sets(cfg: Config, *, variant: str = "mass_centred", progress: bool = True,
             sources: dict[str, LoadResult] | None = None, pretraining: bool = True,
             size: int | None = None) -> Datasets:
    """Preprocess every dataset of the profile into ROI sets (cached under ``work_dir/cache``).

    ``pretraining=False`` leaves out the pre-training set (``pre_train``/``pre_test`` are None).
    Within one process the result is reused: a step and the steps it depends on share one load."""
    key = (str(cfg.root), cfg.digest(), variant, str(pretraining), str(size))
    if sources is None and key in _ROI_SETS:
        return _ROI_SETS[key]
    ds = _roi_sets(cfg, variant=variant, progress=progress, sources=sources, pretraining=pretraining, size=size)
    if sources is None:
        _ROI_SETS[key] = ds
    return ds


def _roi_sets(cfg: Config, *, variant: str, progress: bool, sources: dict[str, LoadResult] | None,
              pretraining: bool, size: int | None = None) -> Datasets:
    from mammo_lib.data.preprocess import preprocess

    sources = sources or load_sources(cfg, progress=progress)
    kw = dict(variant=variant, size=int(size or cfg["roi_size"]), min_context=int(cfg["min_context"]),
              seed=int(cfg["seed"]), intensity=cfg["intensity"],
              workers=int(cfg["workers"]), on_error="skip", progress=progress)
    cache = cfg.work_dir / "cache"
    if cfg.uses_phantom:
        cv = preprocess(sources["bcdr_like"].records, cache, **kw)
        # Test folds see the shifted rendering; a random crop variant is evaluated on the plain box.
        test_kw = dict(kw, variant="original" if variant == "overlap_0.9" else variant)
        cv_test = preprocess(sources["bcdr_like_shifted"].records, cache, **test_kw)
        pre = preprocess(sources["ddsm_like"].records, cache, **kw) if pretraining else None
        extra = {name[len("bcdr_like_"):]: preprocess(res.records, cache, **test_kw)
                 for name, res in sources.items() if name.startswith("bcdr_like_")}
    else:
        cv = preprocess(sources["bcdr"].records, cache, **kw)
        cv_test = None
        if variant == "overlap_0.9":
            cv_test = preprocess(sources["bcdr"].records, cache, **dict(kw, variant="original"))
        pre = preprocess(sources["cbis_ddsm"].records, cache, **kw) if pretraining else None
        extra = {}
    pre_train = pre_test = None
    if pre is not None:
        split = pre.index["split"].astype(str).str.lower().to_numpy()
        pre_train = pre.subset(np.flatnonzero(split == "train"))
        pre_test = pre.subset(np.flatnonzero(split == "test"))
    excl = [res.exclusions_frame().assign(dataset=name) for name, res in sources.items()]
    for name, rs in (("cv", cv), ("cv_test", cv_test), ("pretrain", pre)):
        if rs is not None and len(rs.exclusions):
            excl.append(rs.exclusions.assign(dataset=name))
    exclusions = pd.concat([e for e in excl if len(e)], ignore_index=True) if any(len(e) for e in excl) else \
        pd.DataFrame(columns=["source_file", "source_row", "reason", "case_id", "stage", "dataset"])
    return Datasets(cv=cv, cv_test=cv_test, pre_train=pre_train, pre_test=pre_test,
                    exclusions=exclusions, sources=sources, variant=variant, renderings=extra)


def dataset_table(ds: Datasets) -> pd.DataFrame:
    """Counts per dataset, split and class (what the paper's Sec. 3.1 reports)."""
    rows = []
    for name, rs in (("cross-validation set", ds.cv), ("pre-training train", ds.pre_train),
                     ("pre-training test", ds.pre_test)):
        idx = rs.index
        rows.append({"set": name, "dataset": ", ".join(sorted(idx["dataset"].astype(str).unique())),
                     "masses": len(idx), "benign": int((idx["label"] == 0).sum()),
                     "malignant": int((idx["label"] == 1).sum()), "patients": idx["patient_id"].nunique(),
                     "padded ROIs": int(idx["padded"].sum()) if "padded" in idx else 0})
    return pd.DataFrame(rows)


"""End to end across modules: the phantom written as a CBIS-DDSM DICOM tree read back by the
CBIS-DDSM loader and preprocessed; the command line's explain, train and verify-data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from support.bcdr import write_bcdr_folder

from mammo_lib.data.cbis_ddsm import load_cbis_ddsm
from mammo_lib.cli import main
from mammo_lib.data.images import load_record
from mammo_lib.data.phantom import PhantomConfig, generate_phantom, write_cbis_tree
from mammo_lib.data.preprocess import preprocess

SMALL = PhantomConfig(seed=7, image_shape=(256, 224), n_benign=6, n_malignant=6, n_train=6, n_test=4)


@pytest.fixture(scope="module")
def cbis_tree(tmp_path_factory) -> Path:
    return write_cbis_tree(tmp_path_factory.mktemp("cbis"), SMALL, n_cases=8, renamed=True, seed=3)


def test_cbis_tree_round_trip(cbis_tree: Path, tmp_path: Path):
    csvs = sorted(cbis_tree.glob("mass_case_description_*_set.csv"))
    res = load_cbis_ddsm(csvs, cbis_tree)
    truth = json.loads((cbis_tree / "phantom_cbis_tree.json").read_text())
    assert len(res.records) == len(truth["rows"]) and not res.exclusions
    # Renamed folders and 000000.dcm masks: every record resolves to the mask the phantom wrote.
    notes = []
    for rec in res.records:
        case = load_record(rec)
        assert case.mask.shape == case.image.shape and case.mask.any()
        assert set(np.unique(case.mask)) <= {0, 1}
        notes += case.notes
    assert any("mask resized" in n for n in notes)  # the one mask written a few pixels off
    rois = preprocess(res.records, tmp_path / "cache", size=64, workers=1, progress=False)
    assert rois.images.shape == (len(res.records), 64, 64)
    assert set(rois.index["split"]) == {"train", "test"}
    assert rois.index["case_id"].is_unique


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("ph") / "bcdr_like", SMALL, kind="bcdr_like", progress=False)


def test_cli_explain_writes_json_and_figure(phantom_dir: Path, tmp_path: Path):
    from mammo_lib.networks.densenet import build_model

    model = build_model("small", seed=0)
    ckpt = tmp_path / "model.pt"
    torch.save({"model_state": model.state_dict()}, ckpt)
    img = phantom_dir / "images" / "train" / "M0000.png"
    mask = phantom_dir / "masks" / "M0000.png"
    out = tmp_path / "expl"
    rc = main(["explain", "--checkpoint", str(ckpt), "--arch", "small", "--image", str(img),
               "--mask", str(mask), "--size", "64", "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "explanation.json").read_text())
    assert d["grid"] == 2 and np.asarray(d["dis_lesion"]).shape == (2, 2)
    assert (out / "explanation.png").exists()


def test_cli_verify_data_on_the_fixtures(capsys):
    root = Path(__file__).resolve().parents[1] / "fixtures" / "cbis_ddsm"
    manifest = Path(__file__).parents[2] / "data_manifest.csv"
    assert main(["verify-data", "--root", str(root), "--manifest", str(manifest), "--dataset", "CBIS-DDSM"]) == 0
    assert "ok" in capsys.readouterr().out


def test_cli_reports_bad_input_with_file(tmp_path: Path, capsys):
    bad = tmp_path / "cases.csv"
    bad.write_text("image_path,mask_path,label,patient_id\nmissing.png,missing_mask.png,benign,p1\n")
    rc = main(["explain", "--checkpoint", str(tmp_path / "absent.pt"), "--arch", "small",
               "--image", str(tmp_path / "absent.png"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "absent.pt" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The real-data path of the reproduction (full profile) on a fake data root with the real layout
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    write_cbis_tree(root / "CBIS-DDSM", SMALL, n_cases=8, renamed=True, seed=5)
    write_bcdr_folder(root / "BCDR" / "BCDR-D01_dataset", "bcdr_d01_outlines.csv", 6, 1)
    write_bcdr_folder(root / "BCDR" / "BCDR-F01_dataset", "bcdr_f01_outlines.csv", 8, 2)
    return root


def _full_cfg(real_root: Path, tmp_path: Path):
    from mammo_lib.repro.config import load_config

    return load_config("full", {"data_root": str(real_root), "work_dir": str(tmp_path / "w"),
                                "results_dir": str(tmp_path / "r"), "arch": "small", "roi_size": 64,
                                "device": "cpu", "workers": 1,
                                "real_data": {"bcdr_f01": {"draw": {"n_benign": 3, "n_malignant": 3}}}},
                       root=Path(__file__).parents[2], honour_env=False)


def test_full_profile_reads_real_layouts(real_root: Path, tmp_path: Path):
    from mammo_lib.repro import datasets

    cfg = _full_cfg(real_root, tmp_path)
    ds = datasets.roi_sets(cfg, progress=False)
    assert len(ds.cv) == 6 + 6                       # all of D01 + the balanced F01 draw
    assert ds.cv.index["case_id"].str.startswith("bcdrD01_").sum() == 6
    assert ds.cv_test is None                          # real data: test folds are the same ROIs
    truth = json.loads((real_root / "CBIS-DDSM" / "phantom_cbis_tree.json").read_text())["rows"]
    assert len(ds.pre_train) + len(ds.pre_test) == len(truth) == 8
    assert set(ds.pre_train.index["split"]) == {"train"} and set(ds.pre_test.index["split"]) == {"test"}
    # the two F01 masses not drawn are recorded, not dropped
    assert (ds.exclusions["stage"] == "balanced_draw").sum() == 2


def test_verify_data_names_missing_files(real_root: Path, tmp_path: Path):
    from mammo_lib.repro import datasets
    from mammo_lib.data.records import DataError

    cfg = _full_cfg(real_root, tmp_path)
    # The fake CBIS-DDSM CSVs differ from the real ones: the manifest says they are altered.
    with pytest.raises(DataError, match="altered"):
        datasets.verify_data(cfg)
    table = pd.read_csv(tmp_path / "r" / "tables" / "data_verification.csv")
    assert set(table.loc[table["dataset"] == "CBIS-DDSM", "status"]) == {"altered"}
    assert "missing" in set(table.loc[table["dataset"] == "BCDR-D01", "status"])  # bcdr_d01_img.csv


def test_cli_train_on_a_generic_csv(tmp_path: Path, capsys):
    cfg = PhantomConfig(seed=8, image_shape=(256, 224), n_benign=14, n_malignant=14)
    phantom = generate_phantom(tmp_path / "ph", cfg, kind="bcdr_like", progress=False)
    out = tmp_path / "mine"
    rc = main(["train", "--csv", str(phantom / "cases.csv"), "--out", str(out), "--method", "transfer",
               "--arch", "small", "--weights", "none", "--size", "64", "--epochs", "1", "--folds", "2",
               "--batch-size", "4", "--workers", "1", "--intensity", "dtype"])
    assert rc == 0
    per_fold = pd.read_csv(out / "transfer" / "fold_0" / "predictions.csv")
    assert len(per_fold) > 0 and set(per_fold["label"]) <= {0, 1}
    assert (out / "transfer" / "fold_1" / "best.pt").exists()
    assert "transfer" in capsys.readouterr().out
    assert pd.read_csv(out / "exclusions.csv").empty


@pytest.fixture(scope="module")
def real_root_cv(tmp_path_factory) -> Path:
    """A fake real-data root big enough for 2 outer folds with an 80:20 inner split."""
    root = tmp_path_factory.mktemp("real_cv")
    write_cbis_tree(root / "CBIS-DDSM", PhantomConfig(seed=6, image_shape=(256, 224), benign_radius_px=(12.0, 30.0),
                                                      malignant_radius_px=(12.0, 30.0)), n_cases=40, renamed=True, seed=6)
    write_bcdr_folder(root / "BCDR" / "BCDR-D01_dataset", "bcdr_d01_outlines.csv", 16, 3)
    write_bcdr_folder(root / "BCDR" / "BCDR-F01_dataset", "bcdr_f01_outlines.csv", 16, 4)
    return root


def test_full_profile_table2_instrument_on_real_layouts(real_root_cv: Path, tmp_path: Path):
    """The full profile's Table 2 path (one 'as it is' condition, no gate, cached trunk, beta per
    fold) runs on real layouts, with the generic stand-in since ImageNet weights are absent."""
    from mammo_lib.repro import steps
    from mammo_lib.repro.config import load_config

    cfg = load_config("full", {
        "data_root": str(real_root_cv), "work_dir": str(tmp_path / "w"), "results_dir": str(tmp_path / "r"),
        "arch": "small", "roi_size": 64, "device": "cpu", "workers": 1, "imagenet_fallback": "generic",
        "generic_pretrain": {"n_train": 16, "n_test": 8, "epochs": 1, "batch_size": 8},
        "train": {"epochs": 1, "batch_size": 8}, "pretrain": {"epochs": 1},
        "cv": {"n_splits": 2, "beta_grid": [0, 8], "beta_grid_at": [], "primary_beta": 8, "trunk_seeds": [0],
               "fold_seeds": [0], "min_passing_trunks": 1, "controls": ["shuffled", "oracle"],
               "positive_control": False},
        "real_data": {"bcdr_f01": {"draw": {"n_benign": 8, "n_malignant": 8}}}},
        root=Path(__file__).parents[2], honour_env=False)
    out = steps.step_table2(cfg, progress=False)
    assert out["gate"].empty                                   # no calibration gate on real data
    assert "No calibration gate on real data" in out["verdict"][0]
    res = out["result"]
    assert [c.name for c in res.conditions] == ["real"]
    pf = res.per_fold("real")
    assert set(pf["spec"]) == {"imagenet_finetune", "imagenet_transfer", "imagenet_shuffled", "imagenet_oracle",
                               "ddsm_finetune", "ddsm_transfer", "ddsm_shuffled", "ddsm_oracle", "mask_only"}
    assert (pf.groupby("spec")["n_test"].sum() == 32).all()  # every case tested once per spec
    comp = pd.read_csv(tmp_path / "r" / "tables" / "table2_comparison.csv")
    assert set(comp["condition"]) == {"real"}
    assert comp["init used"].str.contains("generic synthetic pre-training").any()


# (explain options, expected exit status, text expected in stdout or stderr)
ROI_SPEC_CASES = [
    ([], 0, "size 64 px, intensity dtype (recorded in the checkpoint)"),
    (["--size", "64"], 0, "size 64 px"),
    (["--size", "224"], 2, "--size 224 (the checkpoint was made with 64)"),
    (["--intensity", "percentile"], 2, "--intensity percentile (the checkpoint was made with dtype)"),
    (["--size", "224", "--ignore-roi-spec"], 0, "size 224 px"),
]


@pytest.mark.parametrize("opts,rc,text", ROI_SPEC_CASES)
def test_cli_explain_uses_the_checkpoints_roi_spec(phantom_dir: Path, tmp_path: Path, capsys, opts, rc, text):
    from mammo_lib.networks.densenet import build_model

    ckpt = tmp_path / "model.pt"
    torch.save({"model_state": build_model("small", seed=0).state_dict(), "arch": "small",
                "roi_spec": {"size": 64, "min_context": 224, "intensity": "dtype", "variant": "mass_centred"}}, ckpt)
    out = tmp_path / "expl"
    got = main(["explain", "--checkpoint", str(ckpt), "--image", str(phantom_dir / "images" / "train" / "M0000.png"),
                "--mask", str(phantom_dir / "masks" / "M0000.png"), "--out", str(out), *opts])
    cap = capsys.readouterr()
    assert got == rc and text in (cap.out + cap.err)
    if rc == 0:
        grid = json.loads((out / "explanation.json").read_text())["grid"]
        assert grid == (2 if "--ignore-roi-spec" not in opts else 7)


def test_cv_checkpoints_record_arch_and_roi_spec(tmp_path: Path):
    from mammo_lib.networks.densenet import checkpoint_meta
    from mammo_lib.data.preprocess import RoiSet
    from mammo_lib.protocol.cross_validation import RunSpec, run_cv
    from mammo_lib.engines.training import TrainConfig

    rng = np.random.default_rng(0)
    n = 20
    idx = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                        "label": np.arange(n) % 2})
    masks = np.zeros((n, 32, 32), np.uint8)
    masks[:, 8:20, 8:20] = 1
    rs = RoiSet(index=idx, images=rng.random((n, 32, 32), dtype=np.float32), masks=masks,
                params={"size": 32, "min_context": 224, "intensity": "dtype", "variant": "mass_centred"})
    run_cv(rs, [RunSpec("ft", "none", TrainConfig(epochs=1, batch_size=4, augment=()))], tmp_path, arch="small",
           n_splits=2, progress=False)
    meta = checkpoint_meta(tmp_path / "ft" / "fold_0" / "best.pt")
    assert meta == {"arch": "small", "roi_spec": {"size": 32, "min_context": 224, "intensity": "dtype",
                                                  "variant": "mass_centred"}}

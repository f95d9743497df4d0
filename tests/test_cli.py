"""The command line as a user meets it: ``python -m mammo_lib.cli`` in a subprocess, one-line errors
(``mammo-kt: error: ...``, exit 2 for bad input, 1 for a failure while running), ``--debug`` for
the traceback, checks before any work, exclusions of every stage, data-root layouts, pinned DICOMs."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammo_lib.phantom import PhantomConfig, generate_phantom, write_cbis_tree

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_CSVS = ROOT / "tests" / "fixtures" / "cbis_ddsm"
TINY = ["--arch", "small", "--size", "64", "--epochs", "1", "--folds", "2", "--batch-size", "4", "--workers", "1",
        "--intensity", "dtype"]

# (name, arguments ({ph} generic phantom, {root} data root with CBIS-DDSM only, {vroot} data root with
#  the real CBIS-DDSM CSVs, {ckpt}/{bad_ckpt} checkpoints, {img} image, {tmp} a fresh folder),
#  expected exit status, fragment of stderr)
ERROR_CASES = [
    ("imagenet_weights_absent", ["train", "--csv", "{ph}/cases.csv", "--out", "{tmp}/o"], 2,
     "mammo-kt: error: ImageNet weights for DenseNet121 not found at {hub}/hub/checkpoints/densenet121-a639ec97.pth "
     "(nothing is downloaded): copy torchvision's densenet121-a639ec97.pth there (or set TORCH_HOME to a folder "
     "holding hub/checkpoints/densenet121-a639ec97.pth), or pass --weights FILE (that file or one of our checkpoints) "
     "or --weights none (random initialisation)"),
    ("imagenet_for_small", ["train", "--csv", "{ph}/cases.csv", "--out", "{tmp}/o", "--arch", "small",
                            "--weights", "imagenet"], 2,
     "mammo-kt: error: --weights imagenet: torchvision has ImageNet weights for --arch densenet121 only, not 'small'"),
    ("weights_file_absent", ["train", "--csv", "{ph}/cases.csv", "--out", "{tmp}/o", "--arch", "small",
                             "--weights", "{tmp}/nope.pth"], 2, "mammo-kt: error: --weights file not found: {tmp}/nope.pth"),
    ("weights_file_damaged", ["train", "--csv", "{ph}/cases.csv", "--out", "{tmp}/o", "--arch", "small",
                              "--weights", "{bad_ckpt}"], 2, "damaged.pt: cannot be read as a weights-only torch file"),
    ("csv_and_dataset", ["train", "--csv", "{ph}/cases.csv", "--dataset", "cbis-ddsm", "--root", "{root}",
                         "--out", "{tmp}/o"], 2, "mammo-kt: error: give exactly one of --csv FILE"),
    ("neither_csv_nor_dataset", ["train", "--out", "{tmp}/o"], 2, "mammo-kt: error: give exactly one of --csv FILE"),
    ("dataset_without_root", ["train", "--dataset", "bcdr", "--out", "{tmp}/o"], 2,
     "mammo-kt: error: --dataset bcdr needs --root DATA_ROOT"),
    ("unknown_dataset", ["train", "--dataset", "inbreast", "--root", "{root}", "--out", "{tmp}/o", "--arch", "small"],
     2, "mammo-kt: error: unknown dataset 'inbreast': use one of BCDR, BCDR-D01, BCDR-F01, CBIS-DDSM"),
    ("bcdr_absent", ["train", "--dataset", "bcdr", "--root", "{root}", "--out", "{tmp}/o", "--arch", "small"], 2,
     "mammo-kt: error: {root}: BCDR-D01 missing at {root}/BCDR/BCDR-D01_dataset/bcdr_d01_outlines.csv; BCDR-F01 "
     "missing at {root}/BCDR/BCDR-F01_dataset/bcdr_f01_outlines.csv"),
    ("out_under_a_file", ["train", "--csv", "{ph}/cases.csv", "--out", "{ph}/cases.csv/run", "--arch", "small"], 1,
     "mammo-kt: error: cannot write to --out {ph}/cases.csv/run: Not a directory"),
    ("bad_choice_is_usage", ["train", "--csv", "{ph}/cases.csv", "--out", "{tmp}/o", "--arch", "vgg"], 2,
     "invalid choice: 'vgg'"),
    ("damaged_checkpoint", ["explain", "--checkpoint", "{bad_ckpt}", "--image", "{img}", "--out", "{tmp}/e"], 2,
     "mammo-kt: error: {bad_ckpt}: cannot be read as a torch checkpoint (RuntimeError)"),
    ("mask_unreadable", ["explain", "--checkpoint", "{ckpt}", "--image", "{img}", "--mask", "{files}/garbage.png",
                         "--out", "{tmp}/e"], 2, "mammo-kt: error: {files}/garbage.png: --mask cannot be used:"),
    ("mask_other_shape", ["explain", "--checkpoint", "{ckpt}", "--image", "{img}", "--mask", "{files}/small_mask.png",
                          "--out", "{tmp}/e"], 2,
     "mammo-kt: error: {files}/small_mask.png: mask shape (100, 80) differs from the shape (256, 224) of the image"),
    ("mask_empty", ["explain", "--checkpoint", "{ckpt}", "--image", "{img}", "--mask", "{files}/empty.png",
                    "--out", "{tmp}/e"], 2, "mammo-kt: error: {files}/empty.png: empty mask: no pixel > 0"),
    ("verify_unknown_dataset", ["verify-data", "--root", "{vroot}", "--dataset", "inbreast"], 2,
     "mammo-kt: error: unknown dataset 'inbreast': use one of BCDR-D01, BCDR-F01, CBIS-DDSM, phantom"),
    ("verify_manifest_absent", ["verify-data", "--root", "{vroot}", "--manifest", "{tmp}/absent.csv"], 2,
     "mammo-kt: error: {tmp}/absent.csv: manifest not found"),
    ("verify_root_absent", ["verify-data", "--root", "{tmp}/nowhere"], 2,
     "mammo-kt: error: {tmp}/nowhere: data root folder not found (--root)"),
    ("verify_bcdr_missing", ["verify-data", "--root", "{vroot}"], 1,
     "mammo-kt: error: 4 file(s) missing and 0 altered under {vroot} (listed above)"),
    ("reproduce_full_without_bcdr", ["reproduce", "--profile", "full", "--data-root", "{root}"], 2,
     "mammo-kt: error: BCDR-D01 missing at {root}/BCDR/BCDR-D01_dataset/bcdr_d01_outlines.csv; BCDR-F01 missing at "
     "{root}/BCDR/BCDR-F01_dataset/bcdr_f01_outlines.csv: Table 2 needs BCDR-D01 and BCDR-F01; CBIS-DDSM present: "
     "only pre-training could run"),
    ("reproduce_full_without_cbis", ["reproduce", "--profile", "full", "--data-root", "{bcdr_root}"], 2,
     "CBIS-DDSM missing at {bcdr_root}/CBIS-DDSM/mass_case_description_train_set.csv: the DDSM pre-training needs "
     "CBIS-DDSM; BCDR present: only the ImageNet-initialised rows of Table 2 could run"),
    ("reproduce_full_root_absent", ["reproduce", "--profile", "full", "--data-root", "{tmp}/nowhere"], 2,
     "mammo-kt: error: {tmp}/nowhere: data root folder not found (--data-root)"),
    ("reproduce_full_without_root", ["reproduce", "--profile", "full"], 2,
     "mammo-kt: error: the full profile needs real data: pass --data-root"),
]

# (--dataset spelling accepted by verify-data and train)
SPELLINGS = ["cbis-ddsm", "CBIS-DDSM", "cbis_ddsm"]

# (name, exception given to describe_error, expected exit status, expected message)
DESCRIBE_CASES = [
    ("read_only_out", PermissionError(13, "Permission denied", "/data/out"), 1, "Permission denied: /data/out"),
    ("disk_full", OSError(28, "No space left on device", "/data/out/x.npz"), 1,
     "No space left on device: /data/out/x.npz"),
    ("missing_file", FileNotFoundError(2, "No such file or directory", "/a/b.png"), 2, "file not found: /a/b.png"),
    ("library_message", FileNotFoundError("checkpoint not found: c.pt"), 2, "checkpoint not found: c.pt"),
    ("multi_line", ValueError("first\nsecond"), 2, "first second"),
    ("unexpected", TypeError("boom"), 1, "TypeError: boom (unexpected; run again with --debug for the traceback)"),
]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, umask: int | None = None
        ) -> subprocess.CompletedProcess:
    """``python -m mammo_lib.cli ARGS`` with this checkout's package, as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "mammo_lib.cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600, preexec_fn=pre)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A generic phantom CSV, a data root with CBIS-DDSM only, one with the real CSVs, one with BCDR."""
    from PIL import Image

    from mammo_lib.model import build_model
    from test_integration import _bcdr

    base = tmp_path_factory.mktemp("cli")
    ph = generate_phantom(base / "ph", PhantomConfig(seed=8, image_shape=(256, 224), n_benign=14, n_malignant=14),
                          kind="bcdr_like", progress=False)
    root = base / "data"
    write_cbis_tree(root / "CBIS-DDSM", PhantomConfig(seed=6, image_shape=(256, 224), benign_radius_px=(12.0, 30.0),
                                                      malignant_radius_px=(12.0, 30.0)), n_cases=24, seed=6)
    vroot = base / "vdata"
    shutil.copytree(FIXTURE_CSVS, vroot / "CBIS-DDSM")
    bcdr_root = base / "bcdr"
    _bcdr(bcdr_root / "BCDR" / "BCDR-D01_dataset", "bcdr_d01_outlines.csv", 16, 3)
    _bcdr(bcdr_root / "BCDR" / "BCDR-F01_dataset", "bcdr_f01_outlines.csv", 16, 4)
    ckpt = base / "small.pt"
    torch.save({"model_state": build_model("small", seed=0).state_dict(), "arch": "small",
                "roi_spec": {"size": 64, "min_context": 224, "intensity": "dtype", "variant": "mass_centred"}}, ckpt)
    bad = base / "damaged.pt"
    bad.write_bytes(ckpt.read_bytes()[:2000])
    (base / "garbage.png").write_bytes(b"not a png at all")
    Image.fromarray(np.full((100, 80), 255, np.uint8)).save(base / "small_mask.png")
    Image.fromarray(np.zeros((256, 224), np.uint8)).save(base / "empty.png")
    return {"ph": ph, "root": root, "vroot": vroot, "bcdr_root": bcdr_root, "ckpt": ckpt, "bad_ckpt": bad,
            "img": ph / "images" / "train" / "M0000.png", "mask": ph / "masks" / "M0000.png", "files": base}


def _fill(items: list[str], world: dict[str, Path], **extra: Path) -> list[str]:
    names = {k: str(v) for k, v in {**world, **extra}.items()}
    return [s.format(**names) for s in items]


@pytest.mark.parametrize("name,args,rc,fragment", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_are_one_line_with_the_exit_status(world, tmp_path, name, args, rc, fragment):
    hub = tmp_path / "torch_home"  # an empty torch hub: no ImageNet weights
    tmp = tmp_path / "t"
    got = cli(*_fill(args, world, tmp=tmp), env={"TORCH_HOME": str(hub)})
    assert got.returncode == rc, got.stderr
    assert _fill([fragment], world, tmp=tmp, hub=hub)[0] in got.stderr
    assert "Traceback" not in got.stderr
    assert len([ln for ln in got.stderr.splitlines() if "error" in ln]) == 1
    if name.startswith("imagenet") or name.startswith("weights"):
        assert not (tmp / "o").exists()  # checked before any work: no ROI cache, not even the folder
    if name.startswith("reproduce"):
        assert not (ROOT / "runs" / "full").exists()  # checked before the work folder is made


def test_debug_shows_the_traceback(world, tmp_path):
    args = ["explain", "--checkpoint", str(world["bad_ckpt"]), "--image", str(world["img"]), "--out", str(tmp_path)]
    quiet, loud = cli(*args), cli("--debug", *args)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ValueError" in loud.stderr
    assert cli(*args, "--debug").returncode == 1  # after the sub-command too


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    got = cli("train", "--csv", str(world["ph"] / "cases.csv"), "--out", str(ro / "run"), *TINY)
    assert got.returncode == 1 and f"mammo-kt: error: cannot write to --out {ro / 'run'}: Permission denied" in got.stderr


@pytest.mark.parametrize("name,err,rc,msg", DESCRIBE_CASES, ids=[c[0] for c in DESCRIBE_CASES])
def test_describe_error(name, err, rc, msg):
    from mammo_lib.cli import describe_error

    assert describe_error(err) == (rc, msg)


def test_weights_auto():
    from mammo_lib.cli import build_parser, resolve_weights

    assert build_parser().parse_args(["train", "--csv", "c", "--out", "o"]).weights == "auto"
    assert resolve_weights("small", "auto") == "none" and resolve_weights("small", "None") == "none"
    assert "auto (default: imagenet for densenet121, none for small" in " ".join(
        cli("train", "--help").stdout.split())


def test_train_reports_exclusions_of_every_stage(world, tmp_path):
    """Two rows fail at loading (missing image, unknown label), one at the ROI stage (empty mask)."""
    import csv

    ph = tmp_path / "ph"
    shutil.copytree(world["ph"], ph)
    rows = list(csv.reader((ph / "cases.csv").open()))
    rows[1][1] = "images/train/NOPE.png"
    rows[2][2] = "masks/empty.png"
    rows[3][3] = "weird"
    with (ph / "cases.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    shutil.copy(world["files"] / "empty.png", ph / "masks" / "empty.png")
    out = tmp_path / "run"
    got = cli("train", "--csv", str(ph / "cases.csv"), "--out", str(out), *TINY)
    assert got.returncode == 0, got.stderr
    assert (f"3 of 28 rows excluded: 2 at stage 'load', 1 at stage 'roi' (each with its file, row and reason in "
            f"{out / 'exclusions.csv'})") in got.stdout
    assert "training on 25 cases" in got.stdout
    ex = pd.read_csv(out / "exclusions.csv")
    assert list(ex.columns) == ["stage", "file", "row", "reason", "case_id"]
    assert list(zip(ex["stage"], ex["row"])) == [("load", 2), ("load", 4), ("roi", 3)]
    assert set(ex["file"]) == {str(ph / "cases.csv")}
    assert "image_path file not found" in ex["reason"][0] and "unknown label 'weird'" in ex["reason"][1]
    assert "empty mask" in ex["reason"][2]
    assert pd.read_csv(out / "transfer" / "fold_1" / "predictions.csv").shape[0] > 0


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_verify_data_from_the_data_root_any_spelling(world, tmp_path, spelling):
    # run from another folder: the manifest is found beside the package, not in the working directory
    got = cli("verify-data", "--root", str(world["vroot"]), "--dataset", spelling, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert f"manifest {ROOT / 'data_manifest.csv'}" in got.stdout
    lines = got.stdout.splitlines()
    header = lines[1].split()
    assert header[:3] == ["dataset", "folder", "ok"]
    assert lines[2].split()[:4] == ["CBIS-DDSM", str(world["vroot"] / "CBIS-DDSM"), "2", "0"]
    assert "ok: every file listed is present and unaltered" in got.stdout and "VerifyReport(" not in got.stdout


def test_verify_data_table_names_where_a_missing_dataset_belongs(world):
    got = cli("verify-data", "--root", str(world["vroot"]))
    assert got.returncode == 1
    text = " ".join(got.stdout.split())
    assert f"BCDR-D01 {world['vroot'] / 'BCDR' / 'BCDR-D01_dataset'} 0 2 0 0" in text
    assert "BCDR-F01 bcdr_f01_outlines.csv missing" in text and "VerifyReport(" not in text


def test_default_manifest_absent_is_a_clear_error(tmp_path, monkeypatch):
    from mammo_lib import manifest
    from mammo_lib.records import DataError

    monkeypatch.setattr(manifest, "__file__", str(tmp_path / "site-packages" / "mammo_lib" / "manifest.py"))
    with pytest.raises(DataError, match="no data_manifest.csv beside the mammo_lib package .* pass --manifest"):
        manifest.default_manifest_path()


def test_pin_data_pins_every_dicom_and_verify_catches_a_changed_one(world, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(world["root"] / "CBIS-DDSM", root / "CBIS-DDSM")
    mine = tmp_path / "mine.csv"
    got = cli("pin-data", "--root", str(root), "--dataset", "cbis_ddsm", "--source", "TCIA", "--licence", "CC BY 3.0",
              "--out", str(mine))
    assert got.returncode == 0, got.stderr
    files = sorted(p for p in (root / "CBIS-DDSM").rglob("*") if p.is_file())
    dicoms = [p for p in files if p.suffix == ".dcm"]
    df = pd.read_csv(mine, dtype=str)
    assert len(df) == len(files) and len(dicoms) >= 24 and set(df["dataset"]) == {"CBIS-DDSM"}
    by_path = df.set_index("relative_path")
    first = dicoms[0].relative_to(root / "CBIS-DDSM").as_posix()
    assert by_path.loc[first, "size_bytes"] == str(dicoms[0].stat().st_size)
    import hashlib

    assert by_path.loc[first, "sha256"] == hashlib.sha256(dicoms[0].read_bytes()).hexdigest()
    ok = cli("verify-data", "--root", str(root), "--manifest", str(mine))
    assert ok.returncode == 0 and f"CBIS-DDSM {root / 'CBIS-DDSM'} {len(files)} 0 0 0" in " ".join(ok.stdout.split())
    data = bytearray(dicoms[0].read_bytes())
    data[-1] ^= 0xFF  # same size, one pixel byte changed
    dicoms[0].write_bytes(bytes(data))
    bad = cli("verify-data", "--root", str(root), "--manifest", str(mine), "--dataset", "CBIS-DDSM")
    assert bad.returncode == 1
    assert f"CBIS-DDSM {first} altered sha256 differs" in " ".join(bad.stdout.split())
    assert "0 file(s) missing and 1 altered" in bad.stderr


def test_train_on_cbis_ddsm_from_the_data_root(world, tmp_path):
    out = tmp_path / "run"
    got = cli("train", "--dataset", "CBIS-DDSM", "--root", str(world["root"]), "--out", str(out), *TINY)
    assert got.returncode == 0, got.stderr
    assert f"24 cases read from CBIS-DDSM in {world['root'] / 'CBIS-DDSM'}" in got.stdout
    assert "training on 24 cases" in got.stdout
    pred = pd.concat(pd.read_csv(out / "transfer" / f"fold_{k}" / "predictions.csv") for k in range(2))
    assert len(pred) == 24 and (out / "transfer" / "fold_0" / "best.pt").is_file()
    assert pd.read_csv(out / "exclusions.csv").empty


def test_train_on_bcdr_from_the_data_root(world, tmp_path):
    out = tmp_path / "run"
    got = cli("train", "--dataset", "bcdr", "--root", str(world["bcdr_root"]), "--out", str(out), *TINY)
    assert got.returncode == 0, got.stderr
    d01, f01 = (world["bcdr_root"] / "BCDR" / f"BCDR-{s}_dataset" for s in ("D01", "F01"))
    assert f"32 cases read from BCDR-D01 in {d01}, BCDR-F01 in {f01}" in got.stdout
    pred = pd.concat(pd.read_csv(out / "transfer" / f"fold_{k}" / "predictions.csv") for k in range(2))
    assert len(pred) == 32


def test_explain_writes_where_the_readme_says_readable_by_the_group(world, tmp_path):
    out = tmp_path / "explanation"
    got = cli("explain", "--checkpoint", str(world["ckpt"]), "--image", str(world["img"]), "--mask",
              str(world["mask"]), "--out", str(out), umask=0o027)
    assert got.returncode == 0, got.stderr
    assert sorted(p.name for p in out.iterdir()) == ["explanation.json", "explanation.png"]
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640  # 0o666 less the umask, as open() would give
    readme = (ROOT / "README.md").read_text()
    assert "`explanation.json`" in readme and "`explanation.png`" in readme and "in `--out`" in readme

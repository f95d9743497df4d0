"""The command line as a user meets it: ``python -m mammo_lib.cli`` in a subprocess, one-line errors
(``mammo-kt: error: ...``, exit 2 for bad input, 1 for a failure while running), ``--debug`` for
the traceback, checks before any work, exclusions of every stage, data-root layouts, pinned DICOMs."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammo_lib.data.phantom import PhantomConfig, generate_phantom, write_cbis_tree

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

    from mammo_lib.networks.densenet import build_model
    from support.bcdr import write_bcdr_folder

    base = tmp_path_factory.mktemp("cli")
    ph = generate_phantom(base / "ph", PhantomConfig(seed=8, image_shape=(256, 224), n_benign=14, n_malignant=14),
                          kind="bcdr_like", progress=False)
    root = base / "data"
    write_cbis_tree(root / "CBIS-DDSM", PhantomConfig(seed=6, image_shape=(256, 224), benign_radius_px=(12.0, 30.0),
                                                      malignant_radius_px=(12.0, 30.0)), n_cases=24, seed=6)
    vroot = base / "vdata"
    shutil.copytree(FIXTURE_CSVS, vroot / "CBIS-DDSM")
    bcdr_root = base / "bcdr"
    write_bcdr_folder(bcdr_root / "BCDR" / "BCDR-D01_dataset", "bcdr_d01_outlines.csv", 16, 3)
    write_bcdr_folder(bcdr_root / "BCDR" / "BCDR-F01_dataset", "bcdr_f01_outlines.csv", 16, 4)
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
    assert "auto (imagenet for densenet121, none for small, which has no ImageNet weights)" in " ".join(
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
    assert list(ex.columns) == ["action", "stage", "file", "row", "line", "reason", "case_id"]
    assert list(zip(ex["action"], ex["stage"], ex["row"])) == [("excluded", "load", 2), ("excluded", "load", 4),
                                                               ("excluded", "roi", 3)]
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
    from mammo_lib.data import manifest
    from mammo_lib.data.records import DataError

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
    ex = pd.read_csv(out / "exclusions.csv")  # nothing left out; the phantom's one oversized mask is a note
    assert list(zip(ex["action"], ex["reason"])) == [("note", "mask resized from 259x226 to 256x224 (nearest)")]
    assert (f"1 note(s) on 1 case(s) kept: 'mask resized from 259x226 to 256x224 (nearest)' (each with its file, row "
            f"and reason in {out / 'exclusions.csv'})") in got.stdout.splitlines()


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


# ================================================================================================
# Issue 21 (robustness, third round) and the command-line part of issue 22, as a user meets them.
# Each case: the exact one-line message and the exit status.
# ================================================================================================
def _error_line(got: subprocess.CompletedProcess) -> str:
    """The one ``mammo-kt: error:`` line of stderr (and no traceback, no second error line)."""
    lines = [ln for ln in got.stderr.splitlines() if ln.startswith("mammo-kt: error:")]
    assert len(lines) == 1 and "Traceback" not in got.stderr, got.stderr
    return lines[0]


def _warning_lines(got: subprocess.CompletedProcess) -> list[str]:
    """Every ``mammo-kt: warning:`` line of stderr (progress bars written with carriage returns cut off)."""
    return re.findall(r"mammo-kt: warning: [^\r\n]*", got.stderr)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A generic phantom of 12 cases, 8 benign and 4 malignant (3 malignant patients)."""
    ph = tmp_path_factory.mktemp("small") / "ph"
    generate_phantom(ph, PhantomConfig(seed=8, image_shape=(256, 224), n_benign=8, n_malignant=4),
                     kind="bcdr_like", progress=False)
    return ph


SEE = " (see: mammo-kt train --help)"
# (id, options added after TINY, the exact error line); exit status 2, nothing written
OPTION_CASES = [
    ("epochs_-1", ["--epochs", "-1"], "mammo-kt: error: mammo-kt train: argument --epochs: must be >= 1, got -1" + SEE),
    ("batch_size_0", ["--batch-size", "0"], "mammo-kt: error: mammo-kt train: argument --batch-size: must be >= 2 "
     "(BatchNorm in training mode needs two samples a batch), got 0" + SEE),
    ("lr_-1", ["--lr", "-1"], "mammo-kt: error: mammo-kt train: argument --lr: must be > 0, got -1" + SEE),
    ("beta_nan", ["--beta", "nan"], "mammo-kt: error: mammo-kt train: argument --beta: must be a finite number, "
     "got 'nan'" + SEE),
    ("folds_1", ["--folds", "1"], "mammo-kt: error: mammo-kt train: argument --folds: must be >= 2 (k-fold "
     "cross-validation needs a test fold and a training part), got 1" + SEE),
    ("size_100000", ["--size", "100000"], "mammo-kt: error: mammo-kt train: argument --size: must be in [32, 2048] "
     "(MIN_ROI_SIZE: the networks halve the ROI 5 times; MAX_ROI_SIZE: 9 times the paper's 224 px, 20 MiB of cache "
     "a case), got 100000" + SEE),
    ("device_gpu", ["--device", "gpu"], "mammo-kt: error: mammo-kt train: argument --device: 'gpu' is not a device: "
     "use cpu, cuda or cuda:N" + SEE),
    ("folds_100", ["--folds", "100"], "mammo-kt: error: before any image is read: 14 benign and 14 malignant case(s) "
     "are too few for --folds 100: each class needs at least 100 (100 for the test folds, and 2 left in every "
     "training part for its train/validation split); use --folds 14 (0 row(s) of {ph}/cases.csv excluded, listed "
     "in {tmp}/o/exclusions.csv)"),
]


@pytest.mark.parametrize("name,extra,line", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_options_are_checked_before_any_work(world, tmp_path, name, extra, line):
    tmp = tmp_path / "t"
    got = cli("train", "--csv", str(world["ph"] / "cases.csv"), "--out", str(tmp / "o"), *TINY, *extra)
    assert got.returncode == 2
    assert _error_line(got) == _fill([line], world, tmp=tmp)[0]
    assert not (tmp / "o" / "cache").exists()  # no image read, no ROI computed


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_at_once(world, tmp_path):
    expected = (f"--device cuda: no CUDA GPU is available to torch on this machine (torch.cuda.is_available() is "
                f"False; torch {torch.__version__}); use cpu")
    got = cli("train", "--csv", str(world["ph"] / "cases.csv"), "--out", str(tmp_path / "o"), *TINY, "--device", "cuda")
    assert got.returncode == 2 and _error_line(got) == f"mammo-kt: error: {expected}"
    assert not (tmp_path / "o").exists()
    got = cli("explain", "--checkpoint", str(world["ckpt"]), "--image", str(world["img"]), "--out",
              str(tmp_path / "e"), "--device", "cuda")
    assert got.returncode == 2 and _error_line(got) == f"mammo-kt: error: {expected}"
    # the library: a clear ValueError, not a torch error deep in training
    from mammo_lib.engines.training import TrainConfig

    with pytest.raises(ValueError, match=re.escape(expected.replace("--device", "TrainConfig.device"))):
        TrainConfig(device="cuda")
    with pytest.raises(ValueError, match=re.escape("TrainConfig.device: 'gpu' is not a device")):
        TrainConfig(device="gpu")


def test_profile_values_the_library_refuses_are_refused_by_the_schema(tmp_path):
    import yaml

    from mammo_lib.repro.config import profile_path

    base = yaml.safe_load(profile_path("smoke").read_text())
    cases = [({"cv": {**base.get("cv", {}), "beta_grid": [0, -8]}},
              "cv.beta_grid.1: Input should be greater than or equal to 0 (got -8)"),
             ({"roi_size": 16}, "roi_size: Input should be greater than or equal to 32 (got 16)")]
    for patch, fragment in cases:
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**base, **patch}))
        got = cli("collect", "--profile", str(bad))
        assert got.returncode == 2
        assert _error_line(got) == f"mammo-kt: error: profile '{bad}': invalid value: {fragment}"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_pin_data_checks_its_output_before_hashing(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    got = cli("pin-data", "--root", str(world["root"]), "--dataset", "cbis-ddsm", "--out", str(ro / "m.csv"))
    assert got.returncode == 1
    assert _error_line(got) == f"mammo-kt: error: cannot write to --out (its folder) {ro}: Permission denied"
    assert "hashing" not in got.stderr  # refused before the first file is hashed


def test_pin_data_output_under_a_file_is_refused_before_hashing(world, tmp_path):
    """The same check as above, where root (who writes into read-only folders) meets it too."""
    got = cli("pin-data", "--root", str(world["root"]), "--dataset", "cbis-ddsm", "--out",
              str(world["ph"] / "cases.csv" / "m.csv"))
    assert got.returncode == 1
    folder = world["ph"] / "cases.csv"
    assert _error_line(got) == f"mammo-kt: error: cannot write to --out (its folder) {folder}: File exists"
    assert "hashing" not in got.stderr


def test_help_is_fast_plain_and_complete():
    import time

    t0 = time.perf_counter()
    got = cli("--help")
    assert got.returncode == 0 and time.perf_counter() - t0 < 1.0 + 0.5  # + the interpreter's own start
    assert "``" not in got.stdout and "mammo-kt collect --profile" in got.stdout
    code = "import sys, mammo_lib.cli; print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout == "[]\n"
    from mammo_lib.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name in ("verify-data", "pin-data", "train", "collect", "explain"):
        for action in subs.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings}: no help text"
    text = " ".join(cli("train", "--help").stdout.split())
    assert "(default: 30)" in text and "(default: 0.0001)" in text and "(default: transfer)" in text


# --- small data trains, or is refused before any work with the numbers --------------------------------
def test_twelve_cases_four_malignant_train_with_two_folds(small, tmp_path):
    out = tmp_path / "run"
    got = cli("train", "--csv", str(small / "cases.csv"), "--out", str(out), *TINY)
    assert got.returncode == 0, got.stderr
    assert "training on 12 cases" in got.stdout
    pred = pd.concat(pd.read_csv(out / "transfer" / f"fold_{k}" / "predictions.csv") for k in range(2))
    assert len(pred) == 12
    # 4 malignant cases from 3 patients: the inner split of a fold goes by case, and says so
    warned = _warning_lines(got)
    assert any("inner train/validation split by case, not by patient" in w for w in warned), got.stderr

    # a damaged result.json of a finished fold: warned with its path, the fold trained again
    done = out / "transfer" / "fold_0" / "result.json"
    done.write_text("{\n")
    again = cli("train", "--csv", str(small / "cases.csv"), "--out", str(out), *TINY)
    assert again.returncode == 0, again.stderr
    assert (f"mammo-kt: warning: damaged fold result {done} (JSONDecodeError: Expecting property name enclosed in "
            f"double quotes: line 2 column 1 (char 2)); training it again") in _warning_lines(again)
    assert json.loads(done.read_text())["row"]["n_test"] > 0


def test_too_small_data_is_refused_before_any_image_with_the_counts(small, tmp_path):
    rows = (small / "cases.csv").read_text().splitlines()
    keep = [rows[0]] + [r for r in rows[1:] if not r.startswith(("M0002", "M0003"))]  # 8 benign, 2 malignant
    csv_path = small / "too_small.csv"
    csv_path.write_text("\n".join(keep) + "\n")
    got = cli("train", "--csv", str(csv_path), "--out", str(tmp_path / "o"), *TINY)
    assert got.returncode == 2
    assert _error_line(got) == (
        "mammo-kt: error: before any image is read: 8 benign and 2 malignant case(s) are too few for --folds 2: each "
        "class needs at least 4 (2 for the test folds, and 2 left in every training part for its train/validation "
        f"split); add cases: at least 4 of each class are needed for the smallest, 2-fold, cross-validation (0 row(s) "
        f"of {csv_path} excluded, listed in {tmp_path / 'o' / 'exclusions.csv'})")
    assert not (tmp_path / "o" / "cache").exists()


# --- errors that name the file ------------------------------------------------------------------
def test_roi_cache_and_partial_file_with_wrong_members_are_named_and_rebuilt(small, tmp_path):
    out = tmp_path / "run"
    assert cli("train", "--csv", str(small / "cases.csv"), "--out", str(out), *TINY).returncode == 0
    (final,) = [p for p in (out / "cache").iterdir() if not p.name.startswith(".")]
    np.savez(final / "arrays.npz", other=np.zeros(3))            # a complete archive, other members
    partial = out / "cache" / f".partial-{final.name}"
    partial.mkdir()
    np.savez(partial / "000000.npz", foo=np.zeros(2))
    got = cli("train", "--csv", str(small / "cases.csv"), "--out", str(out), *TINY)
    assert got.returncode == 0, got.stderr
    assert _warning_lines(got) == [
        f"mammo-kt: warning: damaged ROI cache {final} (DamagedCacheError: damaged file {final / 'arrays.npz'} "
        f"(KeyError: 'images is not a file in the archive')); rebuilding it",
        f"mammo-kt: warning: damaged partial ROI file {partial / '000000.npz'} (KeyError: \"members ['image', "
        f"'mask', 'meta'] absent (has ['foo'])\"); recomputing it"]


def _tmpfs_cli(mount: Path, size: str, *args: str, then: str = "") -> subprocess.CompletedProcess:
    """``cli(*args)`` with a ``size`` tmpfs on ``mount`` (a user namespace: a full disk without root);
    ``then``: shell commands run after mounting."""
    import shlex

    mount.mkdir(parents=True, exist_ok=True)
    inner = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} && {then or 'true'} && exec "
             + shlex.join([sys.executable, "-m", "mammo_lib.cli", *args]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", inner], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _can_mount_tmpfs(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {tmp}"],
                          capture_output=True).returncode == 0


FULL = (r"mammo-kt: error: the disk is full: could not write {where} \({why}; \d+ bytes free there\); free some "
        r"space and run again \(finished work is kept\)")


def test_disk_full_names_the_file(small, tmp_path):
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("cannot mount a small tmpfs here (unshare -rm)")
    disk = tmp_path / "disk"
    got = _tmpfs_cli(disk, "64k", "train", "--csv", str(small / "cases.csv"), "--out", str(disk / "o"), *TINY)
    assert got.returncode == 1
    where = re.escape(str(disk / "o" / "cache")) + r"/\.partial-mass_centred-64-[0-9a-f]{16}/\d{6}\.npz"
    assert re.fullmatch(FULL.format(where=where, why="No space left on device"), _error_line(got)), got.stderr
    # the ROI cache elsewhere (a link): now the first checkpoint does not fit
    disk2 = tmp_path / "disk2"
    (tmp_path / "cache").mkdir()
    got = _tmpfs_cli(disk2, "100k", "train", "--csv", str(small / "cases.csv"), "--out", str(disk2 / "o"), *TINY,
                     then=f"mkdir -p {disk2}/o && ln -s {tmp_path / 'cache'} {disk2}/o/cache")
    assert got.returncode == 1
    where = re.escape(str(disk2 / "o" / "transfer" / "fold_0")) + r"/(last|best)\.pt"
    assert re.fullmatch(FULL.format(where=where, why=r"[^;]*"), _error_line(got)), got.stderr


def test_binary_manifest_is_named(world, tmp_path):
    m = tmp_path / "manifest.csv"
    m.write_bytes(bytes(range(256)) * 4)
    got = cli("verify-data", "--root", str(world["vroot"]), "--manifest", str(m))
    assert got.returncode == 2
    assert _error_line(got) == (
        f"mammo-kt: error: {m}: not a manifest CSV (UTF-8 text with the columns dataset, relative_path, size_bytes, "
        "sha256, source, licence, notes): byte 0x80 at offset 128 is not UTF-8 text")


def test_explain_on_a_nan_image_names_it(world, tmp_path):
    import tifffile

    img = tmp_path / "nan.tif"
    arr = np.full((256, 224), 0.5, np.float32)
    arr[3, 4] = np.nan
    tifffile.imwrite(img, arr)
    got = cli("explain", "--checkpoint", str(world["ckpt"]), "--image", str(img), "--out", str(tmp_path / "e"))
    assert got.returncode == 2
    assert _error_line(got) == f"mammo-kt: error: {img}: image holds NaN or infinite values"


def test_cbis_exclusions_keep_the_row_and_the_line(world, tmp_path):
    import csv

    root = tmp_path / "data"
    shutil.copytree(world["root"] / "CBIS-DDSM", root / "CBIS-DDSM")
    path = root / "CBIS-DDSM" / "mass_case_description_train_set.csv"
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    col = rows[0].index("pathology")
    rows[11][col] = "UNSURE"                                     # spreadsheet row 12
    with path.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows(rows)
    out = tmp_path / "run"
    got = cli("train", "--dataset", "cbis-ddsm", "--root", str(root), "--out", str(out), *TINY)
    assert got.returncode == 0, got.stderr
    ex = pd.read_csv(out / "exclusions.csv")
    assert list(ex.columns) == ["action", "stage", "file", "row", "line", "reason", "case_id"]
    (bad,) = ex[ex["action"] == "excluded"].to_dict("records")
    assert list(ex.loc[ex["action"] == "note", "reason"]) == ["mask resized from 259x226 to 256x224 (nearest)"]
    assert (bad["action"], bad["stage"], bad["file"]) == ("excluded", "load", str(path))
    assert (bad["row"], bad["line"]) == (12, 22)                 # the spreadsheet row and the line it starts on
    assert bad["reason"].startswith("unknown pathology 'UNSURE'")


# --- input that is silently wrong -----------------------------------------------------------------
def test_wrong_input_is_refused_or_noted_in_the_csv_and_the_summary(world, tmp_path):
    """Rows 2-6 of a 28-case CSV: a CT DICOM (note), a PALETTE COLOR DICOM (excluded), a mask in the
    air (note), a mask 8 rows larger than its image with the lesion only in those rows (excluded),
    a mask over 97 % of the image (note)."""
    import csv

    import pydicom
    from PIL import Image

    from support.images import write_dicom

    ph = tmp_path / "ph"
    shutil.copytree(world["ph"], ph)
    with (ph / "cases.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    head = rows[0]
    img_col, mask_col = head.index("image_path"), head.index("mask_path")

    def image(r: int) -> np.ndarray:
        return np.array(Image.open(ph / rows[r - 1][img_col]))

    ct = write_dicom(ph / "ct.dcm", image(2).astype(np.uint16))
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct)
    rows[1][img_col] = "ct.dcm"
    rows[2][img_col] = str(write_dicom(ph / "palette.dcm", image(3).astype(np.uint16), photometric="PALETTE COLOR"))
    air = np.zeros((256, 224), np.uint8)
    im4 = image(4)
    y0, x0 = next((y, x) for y in range(0, 240, 8) for x in range(0, 208, 8)
                  if (im4[y:y + 16, x:x + 16] == im4.min()).all())
    air[y0:y0 + 16, x0:x0 + 16] = 255                                 # 16 x 16 pixels at the darkest level
    Image.fromarray(air).save(ph / "air.png")
    rows[3][mask_col] = "air.png"
    beyond = np.zeros((264, 224), np.uint8)
    beyond[258:263, 100:120] = 255
    Image.fromarray(beyond).save(ph / "beyond.png")
    rows[4][mask_col] = "beyond.png"
    full = np.full((256, 224), 255, np.uint8)
    full.flat[: int(0.03 * full.size)] = 0
    Image.fromarray(full).save(ph / "full.png")
    rows[5][mask_col] = "full.png"
    with (ph / "cases.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = tmp_path / "run"
    got = cli("train", "--csv", str(ph / "cases.csv"), "--out", str(out), *TINY)
    assert got.returncode == 0, got.stderr
    ct_note = "DICOM Modality is CT, not MG (mammography): is this a mammogram?"
    air_note = ("no tissue under the mask: its pixels are all at the image's darkest level (mask in the air outside "
                "the breast?)")
    full_note = "mask covers 97.0% of the image (inverted mask?)"
    assert (f"2 of 28 rows excluded: 2 at stage 'roi'; 3 note(s) on 3 case(s) kept: {ct_note!r}; {air_note!r}; "
            f"{full_note!r} (each with its file, row and reason in {out / 'exclusions.csv'})"
            ) in got.stdout.splitlines()
    ex = pd.read_csv(out / "exclusions.csv")
    assert list(zip(ex["action"], ex["row"])) == [("excluded", 3), ("excluded", 5), ("note", 2), ("note", 4),
                                                  ("note", 6)]
    assert ex["reason"][0] == ("DataError: PhotometricInterpretation PALETTE COLOR: the stored values are indices "
                               "into a colour table, not grey levels; expected one of ('MONOCHROME1', 'MONOCHROME2') "
                               f"(not read as greyscale) [{ph / 'palette.dcm'}]")
    assert ex["reason"][1] == ("DataError: mask size 264x224 is larger than the image 256x224 and 100 of its "
                               "foreground pixel(s) lie beyond the image's last row or column: resizing would move "
                               f"them onto the image (a mask outside the image is an error) [{ph / 'beyond.png'}]")
    assert list(ex["reason"][2:]) == [ct_note, air_note, full_note]
    # explain says it too
    got = cli("explain", "--checkpoint", str(world["ckpt"]), "--image", str(ct), "--out", str(tmp_path / "e"))
    assert got.returncode == 0, got.stderr
    assert f"note: {ct}: {ct_note}" in got.stdout.splitlines()


def test_verify_data_says_what_it_checked_and_what_not(world, tmp_path):
    import hashlib

    root = tmp_path / "data"
    shutil.copytree(world["root"] / "CBIS-DDSM", root / "CBIS-DDSM")
    csvs = sorted((root / "CBIS-DDSM").glob("*.csv"))
    rows = [{"dataset": "CBIS-DDSM", "relative_path": p.name, "size_bytes": p.stat().st_size,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "source": "s", "licence": "l", "notes": ""}
            for p in csvs]
    m = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    files = [p for p in (root / "CBIS-DDSM").rglob("*") if p.is_file()]
    n_dcm = sum(p.suffix == ".dcm" for p in files)
    got = cli("verify-data", "--root", str(root), "--manifest", str(m))
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert "checked (size and sha256): CBIS-DDSM: 2 CSV" in lines
    assert (f"not checked: {len(files) - 2} file(s) under the dataset folders that the manifest does not list "
            f"(CBIS-DDSM: {n_dcm} image(s), {len(files) - 2 - n_dcm} other); pin-data your copy to pin them") in lines
    assert lines[-1] == "ok: every file listed is present and unaltered"


def test_library_checks_before_any_work(tmp_path):
    from mammo_lib.cli import describe_error
    from mammo_lib.data.generic_csv import load_generic

    with pytest.raises(ValueError, match=r"^on_error must be 'raise' or 'skip', got 'ignore'$"):
        load_generic(tmp_path / "absent.csv", on_error="ignore")
    status, msg = describe_error(MemoryError("Unable to allocate 37.3 GiB for an array with shape (1, 100000, "
                                             "100000) and data type float32"))
    assert status == 1 and msg == (
        "out of memory (Unable to allocate 37.3 GiB for an array with shape (1, 100000, 100000) and data type "
        "float32): the ROIs (--size squared, 5 bytes a pixel, for every case in the cache), a training batch "
        "(--batch-size ROIs through the network) and the --workers processes share the memory; lower whichever "
        "is large")

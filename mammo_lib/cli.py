"""mammo-kt: the command line of the mammo-kt reproduction package.

  mammo-kt reproduce [--profile demo|smoke|full] [--data-root DIR] [--device cpu|cuda] [--fresh]
  mammo-kt verify-data --root DATA_ROOT [--dataset cbis-ddsm] [--manifest data_manifest.csv]
  mammo-kt pin-data --root DATA_ROOT --dataset NAME --source TEXT --licence TEXT --out my_manifest.csv
  mammo-kt train (--csv cases.csv | --dataset cbis-ddsm|bcdr --root DATA_ROOT) --out runs/mine
                 [--method transfer] [--arch densenet121] [--weights auto|imagenet|none|FILE] ...
  mammo-kt train --profile demo|full --spec NAME --fold K      (one Table 2 job)
  mammo-kt collect --profile demo|full                          (merge the Table 2 jobs done)
  mammo-kt explain --checkpoint best.pt --image mammogram.dcm --mask mask.png --out explanation/
                   [--background-rule soft|otsu|subtract_clip]

DATA_ROOT is laid out as the README's "Real data" says (CBIS-DDSM/..., BCDR/BCDR-D01_dataset/...).
Every option is checked before any image is read. An error is one line on stderr,
"mammo-kt: error: ...", with exit status 2 for bad input (options, files, data) and 1 for a
failure while running (a folder that cannot be written, a full disk, a failed notebook); --debug
(anywhere on the line) shows the traceback instead. "mammo-kt COMMAND --help" lists a command's
options with their defaults.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from mammo_lib.utils.options import (BACKGROUND_RULE_ALIASES, BACKGROUND_RULES, DEFAULT_BACKGROUND_RULE, DEFAULT_INTENSITY,
                      INTENSITY_MODES, MAX_ROI_SIZE, MIN_ROI_SIZE, parse_device)
from mammo_lib.data.records import DataError, Exclusion, LoadResult

#: ``train --dataset`` names (any case; ``-``/``_`` alike) and the manifest datasets each reads.
TRAIN_DATASETS = {"CBIS-DDSM": ("CBIS-DDSM",), "BCDR": ("BCDR-D01", "BCDR-F01"), "BCDR-D01": ("BCDR-D01",),
                  "BCDR-F01": ("BCDR-F01",)}
#: Columns of ``<out>/exclusions.csv``: every row left out (``action`` "excluded") and every note on a
#: case kept (``action`` "note"), with its stage, file, spreadsheet row, physical line and reason.
EXCLUSIONS_COLUMNS = ["action", "stage", "file", "row", "line", "reason", "case_id"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``mammo-kt: error: ...``, exit 2) like every other."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"mammo-kt: error: {self.prog}: {message} (see: {self.prog} --help)\n")
        sys.exit(2)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help text with each option's default (ArgumentDefaultsHelpFormatter's rule, but a default of
    None or False, which means "not given", is not shown)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" not in text and action.option_strings and action.default is not None
                and action.default is not False and action.default is not argparse.SUPPRESS and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def _bounded(kind: Callable[[str], Any], name: str, *, low: float | None = None, high: float | None = None,
             low_open: bool = False, why: str = "") -> Callable[[str], Any]:
    """An argparse ``type`` converting with ``kind`` and checking ``low <= value <= high``
    (``low < value`` when ``low_open``) and finiteness; the message says the bound and why."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        bad_low = low is not None and (value <= low if low_open else value < low)
        if bad_low or (high is not None and value > high):
            rng = (f"> {low:g}" if low_open else f">= {low:g}") if low is not None else ""
            if high is not None:
                rng = f"in [{low:g}, {high:g}]" if low is not None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"must be {rng}{why}, got {text}")
        return value

    convert.__name__ = name
    return convert


_EPOCHS = _bounded(int, "epochs", low=1)
_BATCH = _bounded(int, "batch size", low=2, why=" (BatchNorm in training mode needs two samples a batch)")
_LR = _bounded(float, "learning rate", low=0, low_open=True)
_BETA = _bounded(float, "beta", low=0, why=" (the weight of the Eq. 5 transfer loss)")
_FOLDS = _bounded(int, "folds", low=2, why=" (k-fold cross-validation needs a test fold and a training part)")
_SEED = _bounded(int, "seed", low=0, why=" (NumPy and torch seeds are non-negative)")
_WORKERS = _bounded(int, "workers", low=1)
_SIZE = _bounded(int, "size", low=MIN_ROI_SIZE, high=MAX_ROI_SIZE,
                 why=f" (MIN_ROI_SIZE: the networks halve the ROI 5 times; MAX_ROI_SIZE: 9 times the paper's "
                     f"224 px, {MAX_ROI_SIZE ** 2 * 5 // 2 ** 20} MiB of cache a case)")
_FOLD = _bounded(int, "fold", low=0)


def _device(text: str) -> str:
    try:
        return parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_device.__name__ = "device"


def _check_device(device: str) -> str:
    """``--device`` checked against this machine (a CUDA GPU present) before any work."""
    from mammo_lib.engines.training import check_device

    return check_device(device, "--device")


def _writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` and check a file can be written in it, before any work (OSError naming it)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OSError(err.errno, f"cannot write to {option} {path}: {err.strerror or err}") from err
    return path


def _data_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root folder not found (--root)", root)
    return root


#: Suffixes counted as images in verify-data's account of what it checked.
_IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".pgm", ""}


def _kinds(paths: Sequence[str | Path]) -> str:
    """``"2 CSV, 3 image(s)"`` for a list of files (kinds with none left out)."""
    n_csv = sum(Path(p).suffix.lower() == ".csv" for p in paths)
    n_img = sum(Path(p).suffix.lower() in _IMAGE_SUFFIXES for p in paths)
    counts = {"CSV": n_csv, "image(s)": n_img, "other": len(paths) - n_csv - n_img}
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)


def _verify(a: argparse.Namespace) -> int:
    import pandas as pd

    from mammo_lib.data.manifest import (canonical_dataset, dataset_folder, default_manifest_path, read_manifest,
                                         verify_manifest)
    from mammo_lib.repro.config import data_layout

    manifest = Path(a.manifest) if a.manifest else default_manifest_path()
    df = read_manifest(manifest)
    root = _data_root(a.root)
    layout = data_layout()
    if a.dataset:
        names = [canonical_dataset(a.dataset, sorted(set(df["dataset"])))]
    else:
        names = list(dict.fromkeys(df.loc[df["relative_path"] != "", "dataset"]))
    summary, problems, checked, unlisted = [], [], [], []
    for name in names:
        folder = dataset_folder(root, name, layout)
        rep = verify_manifest(manifest, folder, dataset=name, progress=int((df["dataset"] == name).sum()) > 50)
        if not (rep.ok or rep.altered or rep.unchecked) and name in layout:
            folder = root / layout[name]  # nothing found: say where the README's layout expects it
        summary.append({"dataset": name, "folder": str(folder), "ok": len(rep.ok), "missing": len(rep.missing),
                        "altered": len(rep.altered), "unchecked (no sha256)": len(rep.unchecked)})
        table = rep.to_frame()
        problems += [{"dataset": name, **r} for r in table[table["status"] != "ok"].to_dict("records")]
        listed = set(df.loc[(df["dataset"] == name) & (df["relative_path"] != ""), "relative_path"])
        if rep.ok or rep.altered:
            checked.append(f"{name}: {_kinds(rep.ok + rep.altered)}")
        if folder.is_dir():
            others = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in listed]
            if others:
                unlisted.append((name, others))
    print(f"manifest {manifest}, data root {root}")
    print(pd.DataFrame(summary).to_string(index=False))
    if problems:
        print()
        print(pd.DataFrame(problems, columns=["dataset", "file", "status", "reason"]).to_string(index=False))
    print("checked (size and sha256): " + ("; ".join(checked) if checked else "no file"))
    if unlisted:
        print(f"not checked: {sum(len(o) for _, o in unlisted)} file(s) under the dataset folders that the manifest "
              f"does not list ({'; '.join(f'{n}: {_kinds(o)}' for n, o in unlisted)}); pin-data your copy to pin "
              "them")
    else:
        print("not checked: no other file under the dataset folders")
    n_missing = sum(s["missing"] for s in summary)
    n_altered = sum(s["altered"] for s in summary)
    if n_missing or n_altered:
        print(f"mammo-kt: error: {n_missing} file(s) missing and {n_altered} altered under {root} "
              f"(listed above)", file=sys.stderr)
        return 1
    n_unchecked = sum(s["unchecked (no sha256)"] for s in summary)
    print("ok: every file listed is present and unaltered"
          + (f" ({n_unchecked} present but without a pinned sha256: pin-data your copy)" if n_unchecked else ""))
    return 0


def _writable_file(path: str | Path, option: str = "--out") -> Path:
    """Check that the file ``path`` can be written (its folder made, a file created there) before any work."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give the manifest file to write, e.g. {path / 'manifest.csv'}")
    _writable_dir(path.parent if str(path.parent) else Path("."), option=f"{option} (its folder)")
    return path


def _pin(a: argparse.Namespace) -> int:
    from mammo_lib.data.manifest import canonical_dataset, dataset_folder, generate_manifest
    from mammo_lib.repro.config import data_layout

    root = _data_root(a.root)
    out = _writable_file(a.out)
    name = a.dataset
    layout = data_layout()
    try:
        name = canonical_dataset(name, list(layout))
    except ValueError:
        pass  # a lab's own dataset: its name as given, its files under --root
    folder = dataset_folder(root, name, layout)
    df = generate_manifest(folder, name, a.source, a.licence, out_csv=out)
    print(f"pinned {len(df)} files of {name} in {folder} (size, sha256) in {out}")
    return 0


def resolve_weights(arch: str, weights: str) -> str:
    """The initialisation ``train --weights`` names, checked before any work (docs/DECISIONS.md).

    ``auto`` is ImageNet for ``densenet121`` (the paper's, Sec. 4.1) and ``none`` for the small
    test net, which has no ImageNet weights. ImageNet weights are never downloaded: when absent
    from the torch hub cache the error says where to put them and names ``--weights``.

    >>> resolve_weights("small", "auto")
    'none'
    """
    from mammo_lib.networks.densenet import WeightsUnavailableError, build_model, imagenet_weights_path

    key = weights.strip().lower()
    if key == "auto":
        key = "imagenet" if arch == "densenet121" else "none"
    if key == "none":
        return "none"
    if key == "imagenet":
        if arch != "densenet121":
            raise ValueError(f"--weights imagenet: torchvision has ImageNet weights for --arch densenet121 only, "
                             f"not {arch!r}; use --weights none (the default for {arch!r}) or --weights FILE")
        path = imagenet_weights_path()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"ImageNet weights for DenseNet121 not found at {path} (nothing is downloaded): copy torchvision's "
                f"{path.name} there (or set TORCH_HOME to a folder holding hub/checkpoints/{path.name}), or pass "
                f"--weights FILE (that file or one of our checkpoints) or --weights none (random initialisation)")
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights file not found: {path} (--weights takes auto, imagenet, none or a file)")
    build_model(arch, weights=path)  # a file that does not fit the net fails here, naming its keys
    return str(path)


def _load_dataset(a: argparse.Namespace) -> tuple[LoadResult, str]:
    """Records of ``--csv`` or of ``--dataset`` under the data root ``--root`` (exclusions recorded)."""
    from mammo_lib.data.bcdr import load_bcdr
    from mammo_lib.data.cbis_ddsm import load_cbis_ddsm
    from mammo_lib.data.generic_csv import load_generic
    from mammo_lib.data.manifest import canonical_dataset, dataset_folder
    from mammo_lib.repro.config import data_layout

    if a.csv:
        return load_generic(a.csv, on_error="skip"), str(a.csv)
    name = canonical_dataset(a.dataset, list(TRAIN_DATASETS))
    root = _data_root(a.root)
    layout = data_layout()
    if name == "CBIS-DDSM":
        folder = dataset_folder(root, name, layout)
        csvs = sorted(folder.glob("mass_case_description_*_set.csv"))
        if not csvs:
            raise DataError(f"no CBIS-DDSM mass description CSV (mass_case_description_train_set.csv, "
                            f"mass_case_description_test_set.csv) in {folder}", root)
        return load_cbis_ddsm(csvs, folder, on_error="skip"), f"CBIS-DDSM in {folder}"
    result, used, absent = LoadResult(), [], []
    for sub in TRAIN_DATASETS[name]:
        folder = dataset_folder(root, sub, layout)
        outlines = folder / f"bcdr_{sub[-3:].lower()}_outlines.csv"
        if outlines.is_file():
            result.extend(load_bcdr(outlines, folder, subset=sub[-3:], on_error="skip"))
            used.append(f"{sub} in {folder}")
        else:  # name the place the README's layout puts it
            absent.append(f"{sub} missing at {root / layout[sub] / outlines.name}")
    if not used:
        raise DataError("; ".join(absent), root)
    for line in absent:
        print(f"note: {line}; training on {', '.join(used)}")
    return result, ", ".join(used)


def _exclusion_rows(exclusions: Sequence[Exclusion]) -> list[dict]:
    """Rows of ``exclusions.csv`` for rows left out at loading: spreadsheet row and physical line."""
    return [{"action": "excluded", "stage": e.stage, "file": e.source_file, "row": e.source_row,
             "line": e.source_line, "reason": e.reason, "case_id": e.case_id} for e in exclusions]


def _roi_rows(rois: Any, lines: dict[str, int]) -> list[dict]:
    """Rows of ``exclusions.csv`` from the ROI stage: cases left out, then every note on a case kept
    (``index.notes``, ``;``-separated), each with the line its record starts on (``lines``)."""
    rows = [{"action": "excluded", "stage": r["stage"], "file": r["source_file"], "row": r["source_row"],
             "line": lines.get(str(r["case_id"])), "reason": r["reason"], "case_id": r["case_id"]}
            for r in rois.exclusions.to_dict("records")]
    for r in rois.index.to_dict("records"):
        notes = r.get("notes")
        if not isinstance(notes, str) or not notes:
            continue
        rows += [{"action": "note", "stage": "load", "file": r["source_file"], "row": r["source_row"],
                  "line": lines.get(str(r["case_id"])), "reason": note, "case_id": r["case_id"]}
                 for note in notes.split(";") if note]
    return rows


def _summary(rows: list[dict], n_rows: int, csv_path: Path) -> str:
    """The one summary line of ``exclusions.csv``: exclusions by stage, notes with their text."""
    from collections import Counter

    excluded = [r for r in rows if r["action"] == "excluded"]
    notes = [r for r in rows if r["action"] == "note"]
    parts = []
    if excluded:
        by_stage = Counter(r["stage"] for r in excluded)
        parts.append(f"{len(excluded)} of {n_rows} rows excluded: "
                     + ", ".join(f"{n} at stage {stage!r}" for stage, n in by_stage.items()))
    if notes:
        kinds = Counter(r["reason"] for r in notes)
        shown = "; ".join(f"{reason!r}" + (f" x{n}" if n > 1 else "") for reason, n in list(kinds.items())[:3])
        more = f"; {len(kinds) - 3} more" if len(kinds) > 3 else ""
        parts.append(f"{len(notes)} note(s) on {len({r['case_id'] for r in notes})} case(s) kept: {shown}{more}")
    return "; ".join(parts) + f" (each with its file, row and reason in {csv_path})"


def _train(a: argparse.Namespace) -> int:
    import pandas as pd

    if a.device is not None:
        a.device = _check_device(a.device)
    if a.spec is not None or a.fold is not None or a.profile is not None:
        return _train_job(a)
    if not a.out:
        raise ValueError("--out is required (or --profile P --spec S --fold K for one Table 2 job)")
    a.device = a.device or "cpu"
    if bool(a.csv) == bool(a.dataset):
        raise ValueError("give exactly one of --csv FILE (your own cases) or --dataset cbis-ddsm|bcdr with --root")
    if a.dataset and not a.root:
        raise ValueError(f"--dataset {a.dataset} needs --root DATA_ROOT (the folder holding CBIS-DDSM/, BCDR/)")
    if a.root and not a.dataset:
        raise ValueError("--root is the data root of --dataset; a --csv names its files itself")
    from mammo_lib.utils.files import write_csv
    from mammo_lib.data.preprocess import preprocess
    from mammo_lib.protocol.cross_validation import RunSpec, check_cv_sizes, run_cv
    from mammo_lib.engines.training import TrainConfig

    cfg = TrainConfig(method=a.method, epochs=a.epochs, beta=a.beta, batch_size=a.batch_size, lr=a.lr,
                      device=a.device, seed=a.seed)
    weights = resolve_weights(a.arch, a.weights)
    out = _writable_dir(a.out)
    res, source = _load_dataset(a)
    n_rows = len(res.records) + len(res.exclusions)
    print(f"{len(res.records)} cases read from {source}")
    rows = _exclusion_rows(res.exclusions)
    csv_path = out / "exclusions.csv"
    if res.records:  # what can be known of the data before any image is read: the classes against --folds
        try:
            check_cv_sizes([r.label for r in res.records], a.folds, [r.patient_id for r in res.records],
                           what="--folds")
        except ValueError as err:
            write_csv(csv_path, pd.DataFrame(rows, columns=EXCLUSIONS_COLUMNS))
            raise ValueError(f"before any image is read: {err} ({len(res.exclusions)} row(s) of {source} excluded, "
                             f"listed in {csv_path})") from None
    rois = None
    if res.records:
        rois = preprocess(res.records, out / "cache", size=a.size, intensity=a.intensity, on_error="skip",
                          workers=a.workers)
        lines = {r.case_id: r.meta["source_line"] for r in res.records if r.meta.get("source_line")}
        rows += _roi_rows(rois, lines)
    excl = pd.DataFrame(rows, columns=EXCLUSIONS_COLUMNS).astype({"row": "Int64", "line": "Int64"})
    write_csv(csv_path, excl)
    if rows:
        print(_summary(rows, n_rows, csv_path))
    n_out = sum(r["action"] == "excluded" for r in rows)
    if rois is None or len(rois.index) == 0:
        raise DataError(f"no usable case left ({n_out} of {n_rows} excluded; see {csv_path})")
    try:
        check_cv_sizes(rois.labels, a.folds, rois.groups, what="--folds")
    except ValueError as err:
        raise ValueError(f"after the ROI stage: {err} ({n_out} of {n_rows} rows excluded, listed in {csv_path})"
                         ) from None
    print(f"training on {len(rois.index)} cases")
    spec = RunSpec(a.method, weights, cfg)
    result = run_cv(rois, [spec], out, arch=a.arch, n_splits=a.folds, seed=a.seed,
                    imagenet_fallback="error")
    print(result.summary().to_string(index=False))
    print(f"per-fold checkpoints: {out / a.method}/fold_*/best.pt")
    return 0


def _train_job(a: argparse.Namespace) -> int:
    """``train --profile P --spec S --fold K``: one Table 2 job (:func:`mammo_lib.repro.jobs.run_job`)."""
    from mammo_lib.repro.jobs import cli_run_job

    if a.profile is None or a.spec is None or a.fold is None:
        raise ValueError("one Table 2 job needs all of --profile P --spec S --fold K (see: mammo-kt collect)")
    clash = [f"--{k.replace('_', '-')}" for k in ("csv", "dataset", "root", "out") if getattr(a, k)]
    if clash:
        raise ValueError(f"{', '.join(clash)}: not used by a Table 2 job (its data and folders come from "
                         f"--profile {a.profile})")
    return cli_run_job(a)


def _collect(a: argparse.Namespace) -> int:
    """``collect --profile P``: merge the finished Table 2 jobs, name the missing ones."""
    from mammo_lib.repro.jobs import cli_collect

    if a.device is not None:
        a.device = _check_device(a.device)
    return cli_collect(a)


def _explain(a: argparse.Namespace) -> int:
    import numpy as np

    a.device = _check_device(a.device)
    from mammo_lib.explain.eq6 import explain_roi
    from mammo_lib.data.images import image_notes, read_image, read_unit_float
    from mammo_lib.utils.files import save_figure
    from mammo_lib.networks.densenet import build_model, checkpoint_meta
    from mammo_lib.data.roi import extract_roi

    if not Path(a.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {a.checkpoint}")
    meta = checkpoint_meta(a.checkpoint)
    spec = dict(meta.get("roi_spec") or {})
    asked = {"arch": a.arch, "size": a.size, "intensity": a.intensity}
    recorded = {"arch": meta.get("arch"), "size": spec.get("size"), "intensity": spec.get("intensity")}
    clash = {k: (asked[k], recorded[k]) for k in asked if asked[k] is not None and recorded[k] is not None
             and asked[k] != recorded[k]}
    if clash and not a.ignore_roi_spec:
        said = ", ".join(f"--{k} {v[0]} (the checkpoint was made with {v[1]})" for k, v in clash.items())
        raise ValueError(f"{a.checkpoint}: {said}; leave the option out to use the recorded value, or pass "
                         f"--ignore-roi-spec to override")
    a.arch = a.arch or recorded["arch"] or "densenet121"
    a.size = a.size or recorded["size"] or 224
    a.intensity = a.intensity or recorded["intensity"] or DEFAULT_INTENSITY
    used = "recorded in the checkpoint" if spec else "defaults (the checkpoint records no ROI spec)"
    print(f"ROI spec: arch {a.arch}, size {a.size} px, intensity {a.intensity} ({used})")
    out = _writable_dir(a.out)
    model = build_model(a.arch, weights=a.checkpoint)
    image = read_unit_float(a.image, a.intensity)  # a DataError naming the file (NaN, colour, ...)
    for note in image_notes(a.image, image):
        print(f"note: {a.image}: {note}")
    if a.mask:
        try:
            mask = (read_image(a.mask) > 0).astype(np.uint8)
        except DataError as err:
            raise DataError(f"--mask cannot be used: {err.reason}", a.mask) from err
        if mask.shape != image.shape:
            raise DataError(f"mask shape {mask.shape} differs from the shape {image.shape} of the image {a.image}",
                            a.mask)
        if not mask.any():
            raise DataError("empty mask: no pixel > 0, so there is no mass to centre the ROI on", a.mask)
        for note in image_notes(a.image, image, mask):
            if "mask" in note:
                print(f"note: {a.mask}: {note}")
        try:
            cut = extract_roi(image, mask, size=a.size)
        except ValueError as err:
            raise DataError(f"no ROI from this mask: {err}", a.mask) from err
        roi, mask_roi = cut.image, cut.mask
    else:
        from skimage.transform import resize

        roi = resize(image, (a.size, a.size), order=3, anti_aliasing=True).astype(np.float32).clip(0, 1)
        mask_roi = None
    expl = explain_roi(model, roi, device=a.device, background_rule=a.background_rule)
    expl.to_json(out / "explanation.json")  # params["background_rule"], sanity["pixel_change_agreement"]
    # atomic, with the mode a plain open() would give (io.default_file_mode)
    from mammo_lib.visualize import plot_explanation

    save_figure(plot_explanation(expl, roi, mask=mask_roi), out / "explanation.png")
    names = ["benign", "malignant"]
    lesion = float(np.mean(np.asarray(expl.cell_labels) == "Lesion"))
    print(f"prediction: {names[expl.prediction]} (p = {float(np.max(expl.probabilities)):.3f}); "
          f"{100 * lesion:.0f}% of the {expl.grid}x{expl.grid} cells read as Lesion "
          f"(background rule {expl.params['background_rule']})")
    agreement = expl.sanity.get("pixel_change_agreement", float("nan"))
    print(f"pixel-change agreement: {100 * agreement:.0f}% of the cells are labelled as the replacement "
          f"that changes fewer pixels would predict (near 100% means the labels say little about the model)")
    print(f"wrote {out / 'explanation.json'} and {out / 'explanation.png'}")
    return 0


def _reproduce(argv: Sequence[str]) -> int:
    """``mammo-kt reproduce`` (also ``python -m mammo_lib.reproduce``): every notebook in order
    (:func:`mammo_lib.repro.runner.run_all`); exit status 1 names the failing notebook and cell. Other
    errors (e.g. a missing dataset, :func:`mammo_lib.repro.runner.check_real_data`) reach :func:`main`."""
    from mammo_lib.repro import runner

    ap = argparse.ArgumentParser(prog="mammo-kt reproduce", description=runner.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", help="smoke | demo | full | path to a YAML profile (default: demo)")
    ap.add_argument("--data-root", default="", help="folder with the real datasets (full profile)")
    ap.add_argument("--device", default="", help="cpu | cuda (default: the profile's)")
    ap.add_argument("--force", action="store_true",
                    help="re-execute every notebook even when unchanged (over the library's caches: same numbers)")
    ap.add_argument("--fresh", action="store_true",
                    help="delete the profile's caches and result files first: recompute everything from scratch")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names start with these, e.g. 05 06")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        runner.run_all(a.profile, data_root=a.data_root, device=a.device, force=a.force, fresh=a.fresh,
                       only=a.only, progress=not a.no_progress)
    except runner.NotebookFailed as err:
        print(f"mammo-kt: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mammo-kt`` argument parser (``reproduce`` is delegated to :mod:`mammo_lib.repro.runner`).
    Imports nothing heavy (NumPy, torch): ``mammo-kt --help`` answers at once."""
    ap = _Parser(prog="mammo-kt", description=__doc__, formatter_class=_Help)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (any position)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            parser_class=_Parser)
    sub.add_parser("reproduce", help="run all notebooks (see: mammo-kt reproduce --help)", add_help=False)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_Help)

    v = command("verify-data", "check a local copy of the datasets against data_manifest.csv")
    v.add_argument("--root", required=True,
                   help="the data root (CBIS-DDSM/, BCDR/BCDR-D01_dataset/, ... as in the README), "
                        "or one dataset's own folder")
    v.add_argument("--manifest", default=None,
                   help="the manifest to check against; default: data_manifest.csv of the project folder this "
                        "package lives in (it pins the description CSVs only, not the images)")
    v.add_argument("--dataset", default=None,
                   help="only this dataset, e.g. cbis-ddsm, bcdr-d01, bcdr-f01 (any case, - or _); default: all")
    v.set_defaults(func=_verify)

    p = command("pin-data", "write a manifest (size, sha256 of every file, DICOMs included) of a lab's own copy")
    p.add_argument("--root", required=True, help="the data root (or the dataset's own folder)")
    p.add_argument("--dataset", required=True,
                   help="cbis-ddsm, bcdr-d01, bcdr-f01 (pins its folder under the data root) or your own name")
    p.add_argument("--source", default="", help="where the copy came from (written in the manifest's source column)")
    p.add_argument("--licence", default="", help="its licence (written in the manifest's licence column)")
    p.add_argument("--out", required=True,
                   help="the manifest CSV to write (checked writable before any file is hashed; rows of other "
                        "datasets already in it are kept)")
    p.set_defaults(func=_pin)

    t = command("train", "k-fold train/evaluate the method on your CSV or on CBIS-DDSM/BCDR")
    t.add_argument("--csv", default=None, help="your own cases: columns image_path, mask_path, label, patient_id")
    t.add_argument("--dataset", default=None,
                   help="a public dataset under --root: cbis-ddsm, bcdr (D01 + F01), bcdr-d01 or bcdr-f01")
    t.add_argument("--root", default=None, help="data root of --dataset (CBIS-DDSM/, BCDR/ as in the README)")
    t.add_argument("--out", default=None,
                   help="output folder: cache/, exclusions.csv (rows left out and notes), <method>/fold_K/ "
                        "(required unless running one Table 2 job)")
    t.add_argument("--method", choices=("transfer", "finetune"), default="transfer",
                   help="transfer: fine-tuning plus the Eq. 5 activation-map loss (the paper's method); "
                        "finetune: cross-entropy only")
    t.add_argument("--arch", choices=("densenet121", "small"), default="densenet121",
                   help="densenet121 (the paper's, Sec. 4.1) or a small test net")
    t.add_argument("--weights", default="auto",
                   help="auto (imagenet for densenet121, none for small, which has no ImageNet weights) "
                        "| imagenet (torchvision's file in the torch hub cache; never downloaded) | none | "
                        "path to a .pth/.pt file")
    t.add_argument("--size", type=_SIZE, default=224, metavar="PX",
                   help=f"ROI side in pixels after resizing (Sec. 3.2), {MIN_ROI_SIZE} .. {MAX_ROI_SIZE}")
    t.add_argument("--epochs", type=_EPOCHS, default=30, metavar="N", help="training epochs per fold, >= 1")
    t.add_argument("--batch-size", type=_BATCH, default=16, metavar="N", help="training batch size, >= 2")
    t.add_argument("--lr", type=_LR, default=1e-4, help="learning rate of Adam, > 0")
    t.add_argument("--beta", type=_BETA, default=1.0,
                   help="weight of the Eq. 5 transfer loss, >= 0 (--method transfer)")
    t.add_argument("--folds", type=_FOLDS, default=5, metavar="K",
                   help="outer cross-validation folds, >= 2; each class needs K cases for the test folds and 2 "
                        "left in every training part for its train/validation split (K = 2: 4 of each class)")
    t.add_argument("--seed", type=_SEED, default=0, help="seed of the folds, initialisation and batch order")
    t.add_argument("--workers", type=_WORKERS, default=None, metavar="N",
                   help="processes extracting ROIs; default: one per CPU core")
    t.add_argument("--device", type=_device, default=None,
                   help="cpu (default) | cuda | cuda:N, checked before any work; a Table 2 job: the profile's")
    t.add_argument("--intensity", choices=INTENSITY_MODES, default=DEFAULT_INTENSITY,
                   help="intensity scaling of each image to [0, 1] (docs/DECISIONS.md)")
    j = t.add_argument_group("one Table 2 job (README: spreading Table 2 over GPUs or a cluster)")
    j.add_argument("--profile", default=None, help="profile of the reproduction (demo, full, or a YAML file)")
    j.add_argument("--spec", default=None, metavar="NAME",
                   help="imagenet_finetune | imagenet_transfer | ddsm_finetune | ddsm_transfer | mask_only")
    j.add_argument("--fold", type=_FOLD, default=None, help="outer fold, 0 .. cv.n_splits - 1")
    j.add_argument("--data-root", default=None, help="real data root (full profile)")
    j.add_argument("--no-wait", action="store_true",
                   help="exit with status 3 instead of waiting when another process holds a run's lock")
    t.set_defaults(func=_train)

    c = command("collect", "merge the finished Table 2 jobs of a profile and name the missing ones")
    c.add_argument("--profile", required=True, help="profile of the reproduction (demo, full, or a YAML file)")
    c.add_argument("--data-root", default=None, help="real data root (full profile)")
    c.add_argument("--device", type=_device, default=None, help="cpu | cuda | cuda:N; default: the profile's")
    c.set_defaults(func=_collect)

    e = command("explain", "Lesion/Background explanation (Eq. 6) of one ROI")
    e.add_argument("--checkpoint", required=True, help="a best.pt of train (or any of our checkpoints)")
    e.add_argument("--arch", choices=("densenet121", "small"), default=None,
                   help="default: the checkpoint's, else densenet121")
    e.add_argument("--image", required=True, help="full image (with --mask) or a ready ROI")
    e.add_argument("--mask", default=None, help="binary mass mask at the image's size: the mass-centred ROI is cut")
    e.add_argument("--size", type=_SIZE, default=None, metavar="PX",
                   help="ROI side; default: the checkpoint's, else 224")
    e.add_argument("--ignore-roi-spec", action="store_true",
                   help="use --arch/--size/--intensity even where the checkpoint records other values")
    e.add_argument("--device", type=_device, default="cpu", help="cpu | cuda | cuda:N, checked before any work")
    e.add_argument("--intensity", choices=INTENSITY_MODES, default=None,
                   help=f"intensity scaling; default: the checkpoint's, else {DEFAULT_INTENSITY}")
    e.add_argument("--background-rule", choices=BACKGROUND_RULES + tuple(BACKGROUND_RULE_ALIASES),
                   default=DEFAULT_BACKGROUND_RULE,
                   help="how the ROI splits into Lesion and Background (Sec. 4.2; docs/DECISIONS.md)")
    e.add_argument("--out", required=True, help="folder for explanation.json and explanation.png")
    e.set_defaults(func=_explain)
    return ap


def describe_error(err: BaseException) -> tuple[int, str]:
    """Exit status and one-line message for an error reaching :func:`main`: 2 for bad input (the
    library's :class:`DataError`/ValueError, a missing file or weights), 1 for a failure while
    running (a folder that cannot be written, a full disk, a failed notebook, anything unexpected).

    >>> describe_error(PermissionError(13, "Permission denied", "/data/out"))
    (1, 'Permission denied: /data/out')
    """
    from mammo_lib.networks.densenet import WeightsUnavailableError

    if isinstance(err, FileNotFoundError) and err.filename is not None:
        status, msg = 2, f"file not found: {err.filename}"
    elif isinstance(err, OSError) and err.strerror is not None:
        where = "" if err.filename is None else f": {err.filename}"
        status, msg = 1, f"{err.strerror}{where}"
    elif isinstance(err, (ValueError, FileNotFoundError, WeightsUnavailableError, KeyError)):
        status, msg = 2, str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    elif isinstance(err, MemoryError):
        said = f" ({err})" if str(err) else ""
        status, msg = 1, (f"out of memory{said}: the ROIs (--size squared, 5 bytes a pixel, for every case in the "
                          f"cache), a training batch (--batch-size ROIs through the network) and the --workers "
                          f"processes share the memory; lower whichever is large")
    else:
        from mammo_lib.repro.runner import NotebookFailed

        expected = isinstance(err, (NotebookFailed, OSError))
        status, msg = 1, str(err) if expected else (f"{type(err).__name__}: {err} (unexpected; run again with "
                                                    f"--debug for the traceback)")
    return status, " ".join(msg.split())


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """Warnings (a damaged cache or result rebuilt, ...) as one line ``mammo-kt: warning: ...``."""
    text = f"mammo-kt: warning: {' '.join(str(message).split())}"
    try:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr if file is None else file)  # on a line of its own, above progress bars
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(text, file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit status 0, or one line ``mammo-kt: error: ...`` on stderr with status 2
    (bad input: file and row named) or 1 (failure while running); ``--debug`` re-raises.

    >>> main(["verify-data", "--root", "tests/fixtures/cbis_ddsm", "--dataset", "cbis-ddsm"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [x for x in argv if x != "--debug"]
    shown = warnings.showwarning
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        if argv and argv[0] == "reproduce":
            return _reproduce(argv[1:])
        a = build_parser().parse_args(argv)
        return a.func(a)
    except KeyboardInterrupt:
        if debug:
            raise
        print("mammo-kt: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the front door: one line, the traceback with --debug
        if debug:
            raise
        status, msg = describe_error(err)
        print(f"mammo-kt: error: {msg}", file=sys.stderr)
        return status
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())

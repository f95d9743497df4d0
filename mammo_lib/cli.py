"""``mammo-kt``: the command line.

    mammo-kt reproduce [--profile demo|smoke|full] [--data-root DIR] [--device cpu|cuda]
    mammo-kt verify-data --root DIR [--dataset cbis-ddsm] [--manifest data_manifest.csv]
    mammo-kt pin-data --root DIR --dataset NAME --source TEXT --licence TEXT --out my_manifest.csv
    mammo-kt train --csv cases.csv --out runs/mine [--method transfer] [--arch densenet121] ...
    mammo-kt explain --checkpoint best.pt --image mammogram.dcm --mask mask.png --out explanation/
                     [--background-rule soft|otsu|subtract_clip]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .records import DataError


def _verify(a: argparse.Namespace) -> int:
    from .manifest import verify_manifest

    report = verify_manifest(a.manifest, a.root, dataset=a.dataset)
    print(report.to_frame().to_string(index=False) if hasattr(report, "to_frame") else report)
    report.raise_if_bad()
    print("ok: every file listed is present and unaltered")
    return 0


def _pin(a: argparse.Namespace) -> int:
    from .manifest import generate_manifest

    df = generate_manifest(a.root, a.dataset, a.source, a.licence, out_csv=a.out)
    print(f"pinned {len(df)} files of {a.root} in {a.out}")
    return 0


def _train(a: argparse.Namespace) -> int:
    from .generic import load_generic
    from .io import write_csv
    from .preprocess import preprocess
    from .protocol import RunSpec, run_cv
    from .training import TrainConfig

    out = Path(a.out)
    res = load_generic(a.csv, on_error="skip")
    if res.exclusions:
        print(f"{len(res.exclusions)} rows excluded (see {out / 'exclusions.csv'})")
    write_csv(out / "exclusions.csv", res.exclusions_frame())
    rois = preprocess(res.records, out / "cache", size=a.size, intensity=a.intensity, on_error="skip",
                      workers=a.workers)
    cfg = TrainConfig(method=a.method, epochs=a.epochs, beta=a.beta, batch_size=a.batch_size, lr=a.lr,
                      device=a.device, seed=a.seed)
    spec = RunSpec(a.method, a.weights, cfg)
    result = run_cv(rois, [spec], out, arch=a.arch, n_splits=a.folds, seed=a.seed,
                    imagenet_fallback="error")
    print(result.summary().to_string(index=False))
    print(f"per-fold checkpoints: {out / a.method}/fold_*/best.pt")
    return 0


def _explain(a: argparse.Namespace) -> int:
    import numpy as np

    from .explain import explain_roi
    from .imageio import DEFAULT_INTENSITY, read_image, to_unit_float
    from .model import build_model
    from .report import save_figure
    from .roi import extract_roi

    from .model import checkpoint_meta

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
    model = build_model(a.arch, weights=a.checkpoint)
    image = to_unit_float(read_image(a.image), a.intensity)
    if a.mask:
        mask = (read_image(a.mask) > 0).astype(np.uint8)
        if mask.shape != image.shape:
            raise DataError(f"mask shape {mask.shape} differs from the image's {image.shape}", a.mask)
        cut = extract_roi(image, mask, size=a.size)
        roi, mask_roi = cut.image, cut.mask
    else:
        from skimage.transform import resize

        roi = resize(image, (a.size, a.size), order=3, anti_aliasing=True).astype(np.float32).clip(0, 1)
        mask_roi = None
    expl = explain_roi(model, roi, device=a.device, background_rule=a.background_rule)
    out = Path(a.out)
    expl.to_json(out / "explanation.json")  # params["background_rule"], sanity["pixel_change_agreement"]
    save_figure(expl.plot(roi, mask=mask_roi), "explanation", out.parent if out.name == "figures" else out)
    names = ["benign", "malignant"]
    lesion = float(np.mean(np.asarray(expl.cell_labels) == "Lesion"))
    print(f"prediction: {names[expl.prediction]} (p = {float(np.max(expl.probabilities)):.3f}); "
          f"{100 * lesion:.0f}% of the {expl.grid}x{expl.grid} cells read as Lesion "
          f"(background rule {expl.params['background_rule']})")
    agreement = expl.sanity.get("pixel_change_agreement", float("nan"))
    print(f"pixel-change agreement: {100 * agreement:.0f}% of the cells are labelled as the replacement "
          f"that changes fewer pixels would predict (near 100% means the labels say little about the model)")
    print(f"wrote {out / 'explanation.json'} and the figure")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mammo-kt`` argument parser (``reproduce`` is delegated to :mod:`mammo_lib.reproduce`)."""
    from .explain import BACKGROUND_RULE_ALIASES, BACKGROUND_RULES, DEFAULT_BACKGROUND_RULE
    from .imageio import DEFAULT_INTENSITY, INTENSITY_MODES

    ap = argparse.ArgumentParser(prog="mammo-kt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("reproduce", help="run all notebooks (see: mammo-kt reproduce --help)", add_help=False)

    v = sub.add_parser("verify-data", help="check a local copy of a dataset against data_manifest.csv")
    v.add_argument("--root", required=True)
    v.add_argument("--manifest", default="data_manifest.csv")
    v.add_argument("--dataset", default=None)
    v.set_defaults(func=_verify)

    p = sub.add_parser("pin-data", help="write a manifest (sizes, sha256) of a lab's own copy")
    p.add_argument("--root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--source", default="")
    p.add_argument("--licence", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_pin)

    t = sub.add_parser("train", help="k-fold train/evaluate the method on a generic CSV of your own data")
    t.add_argument("--csv", required=True, help="columns image_path, mask_path, label, patient_id")
    t.add_argument("--out", required=True)
    t.add_argument("--method", choices=("transfer", "finetune"), default="transfer")
    t.add_argument("--arch", choices=("densenet121", "small"), default="densenet121")
    t.add_argument("--weights", default="imagenet", help="imagenet | none | path to a .pth checkpoint")
    t.add_argument("--size", type=int, default=224)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--beta", type=float, default=1.0)
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=None)
    t.add_argument("--device", default="cpu")
    t.add_argument("--intensity", choices=INTENSITY_MODES, default=DEFAULT_INTENSITY)
    t.set_defaults(func=_train)

    e = sub.add_parser("explain", help="Lesion/Background explanation (Eq. 6) of one ROI")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--arch", choices=("densenet121", "small"), default=None,
                   help="default: the checkpoint's, else densenet121")
    e.add_argument("--image", required=True, help="full image (with --mask) or a ready ROI")
    e.add_argument("--mask", default=None, help="binary mass mask at the image's size: the mass-centred ROI is cut")
    e.add_argument("--size", type=int, default=None, help="ROI side; default: the checkpoint's, else 224")
    e.add_argument("--ignore-roi-spec", action="store_true",
                   help="use --arch/--size/--intensity even where the checkpoint records other values")
    e.add_argument("--device", default="cpu")
    e.add_argument("--intensity", choices=INTENSITY_MODES, default=None,
                   help=f"intensity scaling; default: the checkpoint's, else {DEFAULT_INTENSITY}")
    e.add_argument("--background-rule", choices=BACKGROUND_RULES + tuple(BACKGROUND_RULE_ALIASES),
                   default=DEFAULT_BACKGROUND_RULE,
                   help="how the ROI splits into Lesion and Background (Sec. 4.2; docs/DECISIONS.md); "
                        "default %(default)s")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_explain)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 2 with a one-line error for bad input (file and row named)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "reproduce":
        from .reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

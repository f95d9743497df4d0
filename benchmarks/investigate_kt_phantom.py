"""Why does knowledge transfer (KT, Eq. 5) not beat fine-tuning on the built-in phantom?

Diagnostic experiments on a finished demo run (its phantom, ROI caches and DDSM checkpoint are
reused; nothing in the run is modified). For each outer fold and training variant it measures:

* d^4 (Eq. 4, paper form) between the student's ROI map and the frozen teacher's mask map on the
  training ROIs (no augmentation), the test fold in the training rendering and in the shifted
  rendering, before training (initial network) and after;
* the share of F^4 energy (Eq. 3) carried by the frozen pass-through channels of norm5 (the input
  of denseblock4, concatenated unchanged) versus the new channels of denseblock4, and d^4 computed
  from either channel group alone;
* accuracy on the test fold in the training rendering (confounders correlated as in training) and in
  the shifted rendering (correlation reversed), and the prediction flip rate between the two
  renderings (same masses, only confounders changed);
* the share of input-gradient saliency of the malignancy logit on the mass, the calcifications and
  the dense tissue (shifted rendering);
* test accuracies under three model selections: best inner-validation epoch (the protocol), last
  epoch, and an oracle (best epoch on the shifted test fold itself; an upper bound, not a method).

Usage::

    .venv/bin/python benchmarks/investigate_kt_phantom.py --work-dir runs/demo --folds 0 1 2

Writes ``--out`` (CSV, one row per fold x variant) and ``<out>_epochs.csv`` (per-epoch d^4 and
test accuracies). About 5-15 s per training run on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]

#: Training variants: name -> TrainConfig overrides (demo profile values otherwise).
VARIANTS: dict[str, dict] = {
    "FT": dict(method="finetune", beta=0.0),
    "KT b=1": dict(method="transfer", beta=1.0),
    "KT b=100": dict(method="transfer", beta=100.0),
    "KT b=1e4 lr1e-2 25ep": dict(method="transfer", beta=1e4, lr=1e-2, epochs=25),
    "FT all": dict(method="finetune", beta=0.0, trainable="all"),
    "KT b=10 all": dict(method="transfer", beta=10.0, trainable="all"),
    "KT b=1e4 all lr1e-2 25ep": dict(method="transfer", beta=1e4, trainable="all", lr=1e-2, epochs=25),
    "mask-only": dict(method="finetune", input="mask"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", required=True, type=Path, help="a demo run's work_dir (e.g. runs/demo)")
    p.add_argument("--lib-root", type=Path, default=REPO,
                   help="folder holding the mammo_lib that made the run (default: this repository)")
    p.add_argument("--profile", default="demo")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--renorm-quantile", type=float, default=None,
                   help="re-scale every ROI to [0,1] between its minimum and this quantile (clipped), so a few "
                        "bright calcification pixels no longer set the per-image min-max scale")
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "investigate_kt_phantom.csv")
    return p.parse_args(argv)


def _maps_and_split(model, x: np.ndarray, *, mask_input: bool, n_old: int, bs: int = 64):
    """F^4 of all channels, of the frozen pass-through channels and of the new channels (N,g,g) x 3."""
    from mammo_lib.networks.densenet import mask_to_model_input, preserve_mode, to_model_input

    feats = []
    h = model.features.norm5.register_forward_hook(lambda m, i, o: feats.append(F.relu(o)))
    try:
        with preserve_mode(model), torch.no_grad():
            model.eval()
            for s in range(0, len(x), bs):
                t = torch.from_numpy(np.asarray(x[s:s + bs]))
                model(mask_to_model_input(t) if mask_input else to_model_input(t.float()))
    finally:
        h.remove()
    a = torch.cat(feats)
    c = a.shape[1]
    full = a.pow(2).mean(1)
    old = a[:, :n_old].pow(2).sum(1) / c
    new = a[:, n_old:].pow(2).sum(1) / c
    return full, old, new


def _d(teacher_map: torch.Tensor, student_map: torch.Tensor) -> np.ndarray:
    from mammo_lib.networks.activation import activation_distance
    return activation_distance(teacher_map, student_map, form="paper").numpy()


def _saliency_shares(model, images: np.ndarray, masks: np.ndarray, conf: np.ndarray) -> dict[str, float]:
    """Mean share of |d(logit_1 - logit_0)/d input| on mass, calcification, dense tissue pixels."""
    from mammo_lib.networks.densenet import preserve_mode, to_model_input

    out = {"sal_mass": [], "sal_calc": [], "sal_dense": []}
    with preserve_mode(model):
        model.eval()
        req = [p.requires_grad for p in model.parameters()]
        model.requires_grad_(False)
        try:
            for s in range(0, len(images), 32):
                x = torch.from_numpy(images[s:s + 32]).float().requires_grad_(True)
                lg = model(to_model_input(x))
                (lg[:, 1] - lg[:, 0]).sum().backward()
                g = x.grad.abs().numpy()
                tot = g.reshape(len(g), -1).sum(1)
                for key, reg in (("sal_mass", masks[s:s + 32] > 0), ("sal_calc", conf[s:s + 32] == 1),
                                 ("sal_dense", conf[s:s + 32] == 2)):
                    out[key].append((g * reg).reshape(len(g), -1).sum(1) / tot)
        finally:
            for p, r in zip(model.parameters(), req):
                p.requires_grad_(r)
    return {k: float(np.mean(np.concatenate(v))) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(args.lib_root.resolve()))
    from mammo_lib.repro import datasets
    from mammo_lib.repro import runtime, table2
    from mammo_lib.repro.config import load_config
    from mammo_lib.networks.densenet import build_model
    from mammo_lib.protocol.cross_validation import inner_split, make_folds
    from mammo_lib.engines.training import TensorData, predict, train_model
    from mammo_lib.networks.transfer import make_teacher

    tmp_results = tempfile.mkdtemp(prefix="kt_investigate_")  # step_pretrain writes a table there
    cfg = load_config(args.profile, {"work_dir": str(args.work_dir.resolve()), "results_dir": tmp_results},
                      root=args.lib_root.resolve(), honour_env=False)
    ds = datasets.roi_sets(cfg, progress=False)
    ckpt = table2.ddsm_checkpoint(cfg, progress=False)
    cv, cvt = ds.cv, ds.cv_test
    if args.renorm_quantile is not None:
        for s in (cv, cvt):
            lo = s.images.min(axis=(1, 2), keepdims=True)
            hi = np.quantile(s.images, args.renorm_quantile, axis=(1, 2), keepdims=True)
            s.images = np.clip((s.images - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    labels, groups = cv.labels, cv.groups
    ids_all = cv.index["case_id"].to_numpy()
    folds = make_folds(labels, groups, n_splits=int(cfg["cv"]["n_splits"]), seed=int(cfg["seed"]))
    rows, ep_rows = [], []
    for k in args.folds:
        te = np.flatnonzero(folds == k)
        trp = np.flatnonzero(folds != k)
        tr, va = inner_split(labels[trp], groups[trp], val_fraction=0.2, seed=int(cfg["seed"]) + k)
        tr, va = trp[tr], trp[va]
        test_sh = cvt.by_case_ids(list(ids_all[te]))          # shifted rendering (the protocol's test)
        test_tr = cv.by_case_ids(list(test_sh.index["case_id"]))  # same cases, training rendering
        val_sh = cvt.by_case_ids(list(ids_all[va]))
        y_te = test_sh.labels
        assert (test_tr.labels == y_te).all()
        init = build_model(cfg["arch"], weights=str(ckpt), seed=int(cfg["seed"]) + k)
        n_old = init.features.denseblock4.denselayer1.norm1.num_features
        teacher = make_teacher(init)
        tmaps = {name: _maps_and_split(teacher, s.masks, mask_input=True, n_old=n_old)[0]
                 for name, s in (("train", cv.subset(tr)), ("test_tr", test_tr), ("test_sh", test_sh))}
        rng = np.random.default_rng(k)
        perm = rng.permutation(len(te))
        calib = float(_d(tmaps["test_sh"], tmaps["test_sh"][perm]).mean())  # teacher vs another case's teacher map
        for vname in args.variants:
            over = dict(VARIANTS[vname])
            mask_in = over.get("input") == "mask"
            tc = runtime.train_config(cfg, seed=int(cfg["seed"]) + k, **over)
            m = build_model(cfg["arch"], weights=str(ckpt), seed=int(cfg["seed"]) + k)
            states = []
            t0 = time.time()
            res = train_model(m, TensorData.from_roiset(cv, tr), TensorData.from_roiset(cv, va), tc,
                              teacher=teacher if tc.method == "transfer" else None, progress=False,
                              on_epoch_end=lambda e, r: states.append({n: v.detach().clone()
                                                                       for n, v in m.state_dict().items()}))
            secs = time.time() - t0
            best_state = {n: v.clone() for n, v in m.state_dict().items()}
            inp = "mask" if mask_in else "roi"
            # per-epoch test accuracies (selection study) and d^4 on the shifted test fold
            for e, st in enumerate(states):
                m.load_state_dict(st)
                x_sh = test_sh.masks if mask_in else test_sh.images
                x_tr = test_tr.masks if mask_in else test_tr.images
                p_sh = predict(m, x_sh, input=inp)[:, 1]
                p_tr = predict(m, x_tr, input=inp)[:, 1]
                p_vs = predict(m, val_sh.masks if mask_in else val_sh.images, input=inp)[:, 1]
                full = _maps_and_split(m, x_sh, mask_input=mask_in, n_old=n_old)[0]
                ep_rows.append(dict(fold=k, variant=vname, epoch=e,
                                    val_acc=float(res.history.loc[e, "val_accuracy"]),
                                    val_shifted_acc=float(((p_vs > .5) == val_sh.labels).mean()),
                                    test_shifted_acc=float(((p_sh > .5) == y_te).mean()),
                                    test_trainrend_acc=float(((p_tr > .5) == y_te).mean()),
                                    train_d4_aug=float(res.history.loc[e, "train_d4"]) if "train_d4" in res.history else np.nan,
                                    test_shifted_d4=float(_d(tmaps["test_sh"], full).mean())))
            m.load_state_dict(best_state)
            ep = pd.DataFrame([r for r in ep_rows if r["fold"] == k and r["variant"] == vname])
            row = dict(fold=k, variant=vname, best_epoch=res.best_epoch, seconds=round(secs, 1),
                       teacher_vs_other_case_d4=calib)
            # accuracy and flips (selected model)
            x_sh = test_sh.masks if mask_in else test_sh.images
            x_tr = test_tr.masks if mask_in else test_tr.images
            p_sh = predict(m, x_sh, input=inp)[:, 1] > .5
            p_tr = predict(m, x_tr, input=inp)[:, 1] > .5
            row.update(acc_shifted=float((p_sh == y_te).mean()), acc_trainrend=float((p_tr == y_te).mean()),
                       flip_rate=float((p_sh != p_tr).mean()),
                       acc_shifted_last=float(ep.test_shifted_acc.iloc[-1]),
                       acc_shifted_oracle=float(ep.test_shifted_acc.max()),
                       acc_shifted_sel_shifted_val=float(ep.sort_values(["val_shifted_acc", "epoch"], ascending=[False, True]).test_shifted_acc.iloc[0]))
            # d^4 before / after, frozen-channel energy share
            for sname, s in (("train", cv.subset(tr)), ("test_tr", test_tr), ("test_sh", test_sh)):
                x = s.masks if mask_in else s.images
                f0, o0, n0 = _maps_and_split(init, x, mask_input=mask_in, n_old=n_old)
                f1, o1, n1 = _maps_and_split(m, x, mask_input=mask_in, n_old=n_old)
                row[f"d4_{sname}_init"] = float(_d(tmaps[sname], f0).mean())
                row[f"d4_{sname}"] = float(_d(tmaps[sname], f1).mean())
                if sname == "test_sh":
                    row["frozen_share_init"] = float((o0.sum((1, 2)) / f0.sum((1, 2))).mean())
                    row["frozen_share"] = float((o1.sum((1, 2)) / f1.sum((1, 2))).mean())
                    row["d4_test_sh_frozen_only"] = float(_d(tmaps[sname], o1).mean())
                    row["d4_test_sh_new_only"] = float(_d(tmaps[sname], n1).mean())
            g = m.features.norm5.weight.detach().abs()
            g0 = init.features.norm5.weight.detach().abs()
            row.update(norm5_gamma_frozen_init=float(g0[:n_old].mean()), norm5_gamma_frozen=float(g[:n_old].mean()),
                       norm5_gamma_new=float(g[n_old:].mean()))
            if not mask_in:
                row.update(_saliency_shares(m, test_sh.images, test_sh.masks, test_sh.confounders))
            rows.append(row)
            print({kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in row.items()}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for df, path in ((pd.DataFrame(rows), args.out),
                     (pd.DataFrame(ep_rows), args.out.with_name(args.out.stem + "_epochs.csv"))):
        tmp = path.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

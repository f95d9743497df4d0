"""Notebook 08, interpretability: the Eq. 6 explanation (Fig. 5), its sanity table, the
model-randomisation check of every explainer, Grad-CAM / HiResCAM and the kNN comparisons (Fig. 8),
GLCM features."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.datasets import roi_sets
from mammo_lib.repro.report import save_figure, write_table
from mammo_lib.networks.activation import group4_maps
from mammo_lib.repro.table2 import TABLE2_SPECS, fold_model, initial_network, run_design
from mammo_lib.utils.files import write_text


def step_interpretability(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 08: the proposed Lesion/Background explanation (Eq. 6) with Grad-CAM, HiResCAM, the
    GLCM/deep-feature correlation and k-NN explanations beside it (Figs. 5, 8, 9), and its cost."""
    from mammo_lib.repro import figures
    from mammo_lib.explain.cam import cam_map
    from mammo_lib.explain.eq6 import explain_roi, lesion_background
    from mammo_lib.explain.glcm import glcm_feature_table
    from mammo_lib.explain.knn import feature_correlation, knn_explain, penultimate_features
    from mammo_lib.protocol.cross_validation import make_folds

    ex = cfg.section("explain")

    ds = roi_sets(cfg, progress=progress)
    fold_seed = run_design(cfg, progress=progress).default[1]  # fold_model's replicate
    test = ds.cv_test if ds.cv_test is not None else ds.cv
    folds = make_folds(ds.cv.labels, ds.cv.groups, n_splits=int(cfg.section("cv")["n_splits"]),
                       seed=int(cfg["seed"]) + fold_seed)
    te_idx, tr_idx = np.flatnonzero(folds == 0), np.flatnonzero(folds != 0)
    ids = ds.cv.index["case_id"].to_numpy()
    t = test.by_case_ids(list(ids[te_idx]))
    model_kt = fold_model(cfg, "ddsm_transfer", 0)
    model_ft = fold_model(cfg, "ddsm_finetune", 0)
    labels = t.labels
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in (0, 1) if (labels == c).any()][: int(ex["n_cases"])]
    rd = cfg.results_dir
    # The explanation's sanity table; the Background rule is the fixed default (docs/DECISIONS.md).
    sanity, rule = explanation_sanity_step(cfg, t, model_kt, model_ft, progress=progress)
    randomisation = explainer_randomisation_step(cfg, t, model_kt, ds.cv.images[tr_idx], ds.cv.labels[tr_idx],
                                                 rule, progress=progress)
    timings = []
    cases = []
    figs: dict[str, Any] = {}  # name -> matplotlib Figure, also written as figures/<name>.png
    train_feats = penultimate_features(model_kt, ds.cv.images[tr_idx], device=cfg["device"])
    test_feats = penultimate_features(model_kt, t.images, device=cfg["device"])
    glcm_df = glcm_feature_table(t.images)
    corr = feature_correlation(glcm_df, test_feats, top=10)
    write_table(corr.reset_index() if corr.index.name else corr, "fig8b_correlation", rd)
    # Fig. 8(b) per class: the correlation over the test ROIs of the explained case's class.
    corr_by_class = {cls: feature_correlation(glcm_df[labels == cls].reset_index(drop=True),
                                              test_feats[labels == cls], top=10)
                     for cls in (0, 1) if (labels == cls).sum() > 2}
    for c in chosen:
        roi, mask = t.images[c], t.masks[c]
        t0 = time.perf_counter()
        expl = explain_roi(model_kt, roi, batch_size=int(ex["batch_size"]), device=cfg["device"],
                           background_rule=rule)
        dt = time.perf_counter() - t0
        timings.append({"case_id": ids[te_idx][c], "label": int(labels[c]), "forward passes": 1 + 2 * expl.grid ** 2,
                        "seconds": round(dt, 3), "roi size": roi.shape[0], "arch": cfg["arch"], "device": cfg["device"]})
        expl.to_json(rd / "explanations" / f"{ids[te_idx][c]}.json")
        lesion, background = lesion_background(roi, background_rule=rule)
        kind = "benign" if labels[c] == 0 else "malignant"
        figs[f"fig5_lesion_background_{kind}"] = fig5 = figures.fig5_lesion_background(
            roi, lesion, background, expl, mask=mask, true_label=kind, background_rule=rule,
            model="DDSM-initialised knowledge-transfer model, fold 0")
        save_figure(fig5, f"fig5_lesion_background_{kind}", rd)
        # At norm5 (pytorch-grad-cam's usual DenseNet layer) Grad-CAM and HiResCAM differ; after the
        # final ReLU they coincide for global-average-pooling + one linear layer.
        cam = cam_map(model_kt, roi[None], method="gradcam", target_layer="norm5", device=cfg["device"])[0]
        hires = cam_map(model_kt, roi[None], method="hirescam", target_layer="norm5", device=cfg["device"])[0]
        knn = knn_explain(test_feats[c:c + 1], train_feats, ds.cv.labels[tr_idx], k=int(ex["knn_k"]),
                          train_ids=list(ids[tr_idx]))
        knn_rois = ds.cv.images[tr_idx][knn["train_index"].to_numpy()]
        fig = figures.fig8_panels(roi, cam, corr_by_class.get(int(labels[c]), corr), knn, knn_rois, expl, mask=mask,
                                  hirescam=hires, true_label=kind,
                                  model="DDSM-initialised knowledge-transfer model, fold 0")
        figs[f"fig8_panels_{kind}"] = fig
        save_figure(fig, f"fig8_panels_{kind}", rd)
        ft_map = group4_maps(model_ft, roi[None], device=cfg["device"])[0]
        kt_map = group4_maps(model_kt, roi[None], device=cfg["device"])[0]
        cases.append({"roi": roi, "mask": mask, "maps_ft": ft_map, "maps_kt": kt_map, "explanation": expl,
                      "label": int(labels[c]), "prediction": expl.predicted_label, "lesion": lesion,
                      "background": background, "kind": kind})
    # Fig. 9: the framework drawn from one real case (the malignant one), and the explanation grid.
    f9 = cases[-1]
    figs["fig9_framework"] = figures.fig9_framework(f9["roi"], f9["lesion"], f9["background"], f9["explanation"],
                                                    mask=f9["mask"], true_label=f9["kind"], background_rule=rule)
    save_figure(figs["fig9_framework"], "fig9_framework", rd)
    figs["explanation_grid"] = figures.explanation_grid(cases, labels=("fine-tune", "knowledge transfer"),
                                                        title="DDSM-initialised models, fold 0 (explanations of "
                                                              "the knowledge-transfer model)")
    save_figure(figs["explanation_grid"], "explanation_grid", rd)
    timing = pd.DataFrame(timings)
    write_table(timing, "explain_timing", rd)
    agreement = explanation_agreement(cfg, t, n=int(ex["n_agreement"]), background_rule=rule)
    write_table(agreement, "explanation_agreement", rd)
    return {"timing": timing, "cases": cases, "correlation": corr, "agreement": agreement, "sanity": sanity,
            "randomisation": randomisation, "rule": rule, "figures": figs}


def explainer_randomisation_step(cfg: Config, test: Any, model_kt: Any, train_rois: np.ndarray,
                                 train_labels: np.ndarray, rule: str, *, progress: bool = True) -> pd.DataFrame:
    """Notebook 08's model-randomisation check of every explainer (``tables/explainer_randomisation``):
    :func:`mammo_lib.explain.sanity.randomisation_table` on the DDSM knowledge-transfer model of fold 0
    over the first ``explain.n_sanity`` test ROIs, for Eq. 6 (rule ``rule``), Grad-CAM and HiResCAM
    (at norm5, as Fig. 8a) and the kNN explanation (``explain.knn_k`` neighbours among the fold's
    training ROIs). ``tables/explainer_randomisation.notes.md`` names the explainers that do not
    change when group 4 is re-initialised."""
    from mammo_lib.explain.interface import CamExplainer, Eq6Explainer, KnnExplainer
    from mammo_lib.explain.sanity import RANDOM_SIMILARITY_MAX, randomisation_table

    ex = cfg.section("explain")
    n = _n_sanity(cfg, test)
    common = dict(device=cfg["device"], batch_size=int(ex["batch_size"]))
    explainers = {
        f"Eq. 6 ({rule})": Eq6Explainer(model_kt, background_rule=rule, **common),
        "Grad-CAM (norm5)": CamExplainer(model_kt, method="gradcam", target_layer="norm5", **common),
        "HiResCAM (norm5)": CamExplainer(model_kt, method="hirescam", target_layer="norm5", **common),
        f"kNN (k={int(ex['knn_k'])})": KnnExplainer(model_kt, train_rois, train_labels, k=int(ex["knn_k"]), **common),
    }
    table = randomisation_table(explainers, test.images[:n], test.masks[:n], seed=int(cfg["seed"]),
                                progress=progress)
    rd = cfg.results_dir
    write_table(table, "explainer_randomisation", rd)
    still = [f"{r.explainer} ({r.measure.replace('_', ' ')} {r.similarity:.2f})"
             for r in table.itertuples() if not r.changes]
    write_text(rd / "tables" / "explainer_randomisation.notes.md",
               f"Model randomisation (group 4 and the classifier re-initialised, seed {int(cfg['seed'])}), "
               f"{n} test ROIs: an explainer whose explanation on the randomised network stays more than "
               f"{RANDOM_SIMILARITY_MAX:g} similar to its own does not follow the trained weights. "
               + (f"Unchanged: {', '.join(still)}." if still else "Every explainer changes.") + "\n")
    return table


def explanation_sanity_step(cfg: Config, test: Any, model_kt: Any, model_ft: Any, *,
                            progress: bool = True) -> tuple[pd.DataFrame, str]:
    """Notebook 08's sanity table of the Eq. 6 explanation (``tables/explanation_sanity``) over the
    first ``explain.n_sanity`` test ROIs of fold 0: per Background rule the checks of
    :func:`mammo_lib.explain.sanity.explanation_sanity` on the DDSM knowledge-transfer model, with the
    trunk-only read-out (its initial network, :func:`initial_network`) and the fine-tuned model of
    the same fold and trunk as baselines (for the default rule only: each costs one explanation per
    ROI and rule). Returns the table and the rule the figures use: the fixed
    default :data:`mammo_lib.explain.eq6.DEFAULT_BACKGROUND_RULE` (``docs/DECISIONS.md``). Where no rule
    passes, ``tables/explanation_sanity.notes.md`` says the explanation is not evidence."""
    from mammo_lib.explain.eq6 import DEFAULT_BACKGROUND_RULE
    from mammo_lib.explain.sanity import explanation_sanity

    ex = cfg.section("explain")
    rd = cfg.results_dir
    n = _n_sanity(cfg, test)
    sanity = explanation_sanity(model_kt, test.images[:n], test.masks[:n], random_seed=int(cfg["seed"]),
                                batch_size=int(ex["batch_size"]), device=cfg["device"], progress=progress,
                                initial_model=initial_network(cfg, "ddsm_transfer"), other_model=model_ft,
                                baseline_rules=(DEFAULT_BACKGROUND_RULE,))
    rule = DEFAULT_BACKGROUND_RULE
    write_table(sanity, "explanation_sanity", rd)
    notes = rd / "tables" / "explanation_sanity.notes.md"
    d = sanity[sanity["rule"] == rule]
    base = ""
    if len(d):
        r = d.iloc[0]
        base = (f" Baselines for `{rule}`: the trained model's labels agree {r['trunk_label_agreement']:.2f} "
                f"(kappa {r['trunk_kappa']:.2f}) with its own initial network (group 4 not trained), "
                f"{r['other_model_label_agreement']:.2f} (kappa {r['other_model_kappa']:.2f}) with the "
                f"fine-tuned model on the same trunk, {r['random_net_label_agreement']:.2f} (kappa "
                f"{r['random_net_kappa']:.2f}) with group 4 re-initialised.")
    if not sanity.attrs.get("any_passes", False):
        write_text(notes, f"**No Background rule passes the sanity checks** on these models, so the Eq. 6 "
                          f"explanation is not evidence of what the model uses. The figures use "
                          f"the default complementary split `{rule}`.{base}\n")
    else:
        passing = ", ".join(f"`{x}`" for x in sanity.loc[sanity["passes"], "rule"])
        write_text(notes, f"Rules that pass the sanity checks: {passing}. The figures use the default "
                          f"complementary split `{rule}`"
                          + ("." if rule in set(sanity.loc[sanity["passes"], "rule"]) else
                             ", which does not pass: its explanation is not evidence.") + f"{base}\n")
    return sanity, rule


def explanation_agreement(cfg: Config, test: Any, *, n: int = 40, background_rule: str | None = None) -> pd.DataFrame:
    """Beyond the paper: over the first ``n`` test ROIs of fold 0, how often the Eq. 6 label is
    *Lesion* on cells covering the mass vs elsewhere, for each Table 2 model of that fold."""
    from mammo_lib.explain.eq6 import explain_roi, lesion_agreement

    ex = cfg.section("explain")
    rows = []
    for spec in TABLE2_SPECS:
        model = fold_model(cfg, spec, 0)
        per = [lesion_agreement(explain_roi(model, test.images[i], batch_size=int(ex["batch_size"]),
                                            device=cfg["device"], background_rule=background_rule), test.masks[i])
               for i in range(min(n, len(test)))]
        df = pd.DataFrame(per)
        rows.append({"spec": spec, "background rule": background_rule, "ROIs": len(df),
                     "P(Lesion | mass cell)": round(float(df["p_lesion_on_mass"].mean()), 3),
                     "P(Lesion | other cell)": round(float(df["p_lesion_off_mass"].mean()), 3),
                     "Lesion fraction": round(float(df["lesion_fraction"].mean()), 3)})
    return pd.DataFrame(rows)


def _n_sanity(cfg: Config, test: Any) -> int:
    """The ROIs of the sanity checks: ``explain.n_sanity`` (None: ``n_agreement``), at most the test set."""
    ex = cfg.section("explain")
    return min(int(ex.get("n_sanity") or ex["n_agreement"]), len(test))

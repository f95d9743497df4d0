"""Result writing: Markdown tables, atomic files, our Table 2 beside the paper's, REPORT.md."""
from __future__ import annotations

import numpy as np
import pytest
import pandas as pd

from mammo_lib.repro import paper
from mammo_lib.repro.report import build_report, markdown_table, read_table, table2_comparison, write_table


def test_markdown_table_by_hand():
    df = pd.DataFrame({"a": [1, 2], "b": [0.12345, np.nan], "c": ["x|y", "z"]})
    assert markdown_table(df) == "| a | b | c |\n|---|---|---|\n| 1 | 0.123 | x\\|y |\n| 2 |  | z |\n"


def test_markdown_table_escapes_pipes_in_headers():
    assert markdown_table(pd.DataFrame({"P(a | b)": [1]})).splitlines()[0] == "| P(a \\| b) |"


def test_write_table_writes_csv_and_md(tmp_path):
    df = pd.DataFrame({"spec": ["a"], "acc": [0.5]})
    paths = write_table(df, "t", tmp_path)
    assert paths["csv"].read_text() == "spec,acc\na,0.5\n"
    assert paths["md"].read_text().startswith("| spec | acc |")
    pd.testing.assert_frame_equal(read_table("t", tmp_path), df)
    assert read_table("absent", tmp_path) is None
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["t.csv", "t.md"]


def test_table2_comparison_places_ours_beside_the_paper():
    summary = pd.DataFrame([{"spec": "ddsm_transfer", "init_used": "ddsm", "acc_mean": 0.861, "acc_std": 0.034,
                             "tn": 121, "fp": 23, "fn": 15, "tp": 115}])
    t = table2_comparison(summary)
    assert list(t["method"]) == ["Fine-tune", "Knowledge transfer", "Fine-tune", "Knowledge transfer"]
    row = t.iloc[3]
    assert row["accuracy % (ours)"] == "86.1 ± 3.4"
    assert row["accuracy % (paper)"] == "86.1 ± 3.4"
    assert row["confusion (ours)"] == row["confusion (paper)"] == "[[121, 23], [15, 115]]"
    assert t.iloc[0]["accuracy % (ours)"] == "n/a"          # a spec not run is said to be missing
    assert paper.TABLE2["imagenet_finetune"][2] == [[53, 91], [42, 88]]


def test_build_report_marks_missing_sections_and_phantom(tmp_path):
    write_table(pd.DataFrame({"set": ["cv"], "masses": [274]}), "datasets", tmp_path)
    text = build_report(tmp_path, {"profile": "demo", "phantom": True, "seed": 1,
                                   "environment": {"device": "cpu"}})
    assert "| cv | 274 |" in text
    assert "not real mammograms" in text
    assert text.count("_not produced in this run_") >= 5
    assert "- **seed**: 1" in text and "- **device**: cpu" in text


def test_headline_reads_the_verdict_mask_only_and_sanity_tables(tmp_path):
    from mammo_lib.repro.report import headline

    assert "not produced" in headline(tmp_path)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "summary.notes.md").write_text("**Calibration gate**: passed.\n- Condition B: no effect.\n")
    write_table(pd.DataFrame([{"model": "mask only", "accuracy % (ours)": 96.7, "accuracy % (paper)": 81.8}]),
                "fig4b", tmp_path)
    write_table(pd.DataFrame([
        {"rule": "soft", "pixel_change_agreement": 0.9, "random_net_label_agreement": 0.95,
         "mass_margin_minus_random": -0.1, "passes": False, "default": False},
        {"rule": "subtract_clip", "pixel_change_agreement": 0.8, "random_net_label_agreement": 0.9,
         "mass_margin_minus_random": 0.05, "passes": False, "default": True}]), "explanation_sanity", tmp_path)
    text = headline(tmp_path)
    assert text.index("Calibration gate") < text.index("Condition B: no effect")
    assert "binary masks alone reaches 96.7 %" in text
    assert "default Background rule `subtract_clip`" in text and "pixel-change agreement 0.80" in text
    assert "no rule passes the sanity checks" in text


def test_build_report_shows_the_design_first_then_the_verdict(tmp_path):
    """The trunks' gates, the primary family of table2_primary, the controls, the mechanism and
    the per-trunk rows come before the verdict (Summary); each family shows only its own rows."""
    write_table(pd.DataFrame({"init": ["ddsm", "ddsm"], "seed": [0, 1], "passes": [True, False]}),
                "table2_trunks", tmp_path)
    write_table(pd.DataFrame({"family": ["primary", "controls", "secondary", "oracle"],
                              "analysis": ["fixed beta", "vs uniform target", "chosen", "oracle"],
                              "difference": [1.5, -2.5, 0.5, 3.0]}), "table2_primary", tmp_path)
    write_table(pd.DataFrame({"arm": ["fine-tune"], "logit effect own": [0.25]}), "table2_mechanism", tmp_path)
    (tmp_path / "tables" / "summary.notes.md").write_text("**Gates of every trunk**: verdict here.\n")
    text = build_report(tmp_path, {"profile": "demo", "phantom": True})
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[:7] == ["## Table 2 design: every pre-trained trunk and its gates",
                         "## Pre-specified primary analysis (co-primary outcomes, corrected tests)",
                         "## Controls: the nulls and the positive control",
                         "## Mechanism: where the calcification's effect on the logit goes",
                         "## Secondary: beta chosen per fold on the inner split (the paper's procedure)",
                         "## Oracle analysis: selection on a neutral rendering of the inner split (labelled oracle)",
                         "## Summary"]
    primary = text.split(heads[1])[1].split(heads[2])[0]
    assert "| analysis | difference |" in primary and "| fixed beta | 1.5 |" in primary
    assert "vs uniform target" not in primary and "family" not in primary.split("\n\n")[1]
    assert "| vs uniform target | -2.5 |" in text.split(heads[2])[1].split(heads[3])[0]
    assert text.index("verdict here") > text.index("| fine-tune | 0.25 |")
    assert "| oracle | 3 |" in text.split(heads[5])[1].split(heads[6])[0]
    # a family without rows (no condition B: no oracle analysis) has no section
    write_table(pd.DataFrame({"family": ["primary"], "analysis": ["fixed beta"], "difference": [1.5]}),
                "table2_primary", tmp_path)
    assert "## Oracle analysis" not in build_report(tmp_path, {"profile": "demo", "phantom": True})
    # without the design's tables (an older run) the report starts with the verdict as before
    plain = build_report(tmp_path / "none", {"profile": "demo"})
    assert [line for line in plain.splitlines() if line.startswith("## ")][0] == "## Summary"


@pytest.mark.parametrize("precision,says,not_says", [
    ("float32", "a float32 training is another draw", "float64 keeps the trainings"),
    ("float64", "float64 keeps the trainings the same draws", "another draw"),
])
def test_report_says_what_moves_on_another_machine(tmp_path, precision, says, not_says):
    from mammo_lib.repro.report import on_another_machine

    env = {"numerics (CPU kernels; docs/DECISIONS.md)": {"cpu": "Some CPU", "aten capability": "AVX2",
                                                         "onednn max isa": "AVX2", "mkl cbwr": "AVX2", "torch threads": 2},
           "float precision (profile key precision)": precision}
    text = on_another_machine({"environment": env})
    assert text.startswith("## On another machine\n\n") and f"computed in {precision} (Some CPU, ATen AVX2" in text
    assert says in text and not_says not in text
    report = build_report(tmp_path, {"profile": "demo", "environment": env})
    assert report.index("## On another machine") < report.index("## Provenance")
    assert f"- **float precision (profile key precision)**: {precision}" in report

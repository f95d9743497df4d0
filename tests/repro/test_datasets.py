"""mammo_lib.repro.datasets: the counts table of Sec. 3.1, the phantom's empty verification, YAML tuples."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mammo_lib.repro import datasets
from mammo_lib.repro.config import load_config

ROOT = Path(__file__).resolve().parents[2]

# dataset_table on hand-made ROI indexes: (set, index rows (dataset, label, patient, padded), expected counts)
TABLE_CASES = [
    ("cross-validation set", [("bcdr", 0, "p1", True), ("bcdr", 1, "p1", False), ("bcdr", 1, "p2", False)],
     {"dataset": "bcdr", "masses": 3, "benign": 1, "malignant": 2, "patients": 2, "padded ROIs": 1}),
    ("pre-training train", [("ddsm", 1, "q1", True), ("ddsm2", 1, "q2", True)],
     {"dataset": "ddsm, ddsm2", "masses": 2, "benign": 0, "malignant": 2, "patients": 2, "padded ROIs": 2}),
    ("pre-training test", [("ddsm", 0, "q3", False)],
     {"dataset": "ddsm", "masses": 1, "benign": 1, "malignant": 0, "patients": 1, "padded ROIs": 0}),
]


def _set(rows: list[tuple]) -> SimpleNamespace:
    return SimpleNamespace(index=pd.DataFrame(rows, columns=["dataset", "label", "patient_id", "padded"]))


def test_dataset_table_counts_per_set():
    ds = datasets.Datasets(cv=_set(TABLE_CASES[0][1]), cv_test=None, pre_train=_set(TABLE_CASES[1][1]),
                           pre_test=_set(TABLE_CASES[2][1]), exclusions=pd.DataFrame())
    table = datasets.dataset_table(ds)
    assert list(table["set"]) == [c[0] for c in TABLE_CASES]
    for (_, _, expected), (_, row) in zip(TABLE_CASES, table.iterrows()):
        assert {k: row[k] for k in expected} == expected


def test_verify_data_on_the_phantom_checks_nothing_and_writes_nothing(tmp_path: Path):
    cfg = load_config("smoke", {"work_dir": str(tmp_path / "w"), "results_dir": str(tmp_path / "r")},
                      root=ROOT, honour_env=False)
    assert cfg.uses_phantom
    table = datasets.verify_data(cfg)
    assert len(table) == 0 and list(table.columns) == ["dataset", "file", "status", "reason"]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("given,expected", [
    ({"image_shape": [640, 512], "seed": 3}, {"image_shape": (640, 512), "seed": 3}),
    ({"size_range": [10, 20], "name": "x"}, {"size_range": (10, 20), "name": "x"}),
])
def test_yaml_lists_become_tuples(given: dict, expected: dict):
    assert datasets._tuples(given) == expected


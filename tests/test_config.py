"""Profiles: loading, overrides, the MAMMO_PROFILE switch used by nbval, and bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from mammo_lib.config import PROFILE_NAMES, load_config, profile_path

# (profile, overrides, expected exception, message fragment)
FAILING = [
    ("nope", None, ValueError, "unknown profile 'nope'"),
    ("missing.yaml", None, FileNotFoundError, "missing.yaml does not exist"),
    ("full", None, ValueError, "needs real data"),
]


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_has_the_keys_the_pipeline_reads(name, monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    cfg = load_config(name, {"data_root": "/data"} if name == "full" else None)
    for key in ("arch", "roi_size", "min_context", "seed", "device", "work_dir", "results_dir"):
        assert key in cfg.values, f"{name} lacks {key}"
    for section, keys in {"train": ("epochs", "batch_size", "lr", "trainable", "head"),
                          "cv": ("n_splits", "beta_grid", "beta_grid_at"), "table1": ("n_splits",),
                          "explain": ("n_cases",)}.items():
        for k in keys:
            assert k in cfg.section(section), f"{name}: {section}.{k}"


def test_paper_settings_in_full_profile(monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    cfg = load_config("full", {"data_root": "/data"})
    assert (cfg["arch"], cfg["roi_size"], cfg["min_context"]) == ("densenet121", 224, 224)
    assert cfg["train"]["trainable"] == "group4+classifier" and cfg["train"]["omega"] == [4]
    assert cfg.section("cv")["n_splits"] == 5
    assert cfg["real_data"]["bcdr_f01"]["draw"] == {"n_benign": 59, "n_malignant": 74, "seed": 2025}


def test_overrides_merge_and_none_is_ignored(monkeypatch, tmp_path):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    cfg = load_config("demo", {"device": None, "train": {"epochs": 3}, "data_root": None}, root=tmp_path)
    assert cfg["device"] == "cpu"                       # None keeps the profile's value
    assert cfg["train"]["epochs"] == 3                  # nested override
    assert cfg["train"]["batch_size"] == 16             # the rest of the section is kept
    assert cfg.uses_phantom and cfg.work_dir == tmp_path / "runs" / "demo"


def test_env_profile_replaces_the_requested_one(monkeypatch):
    monkeypatch.setenv("MAMMO_PROFILE", "smoke")
    assert load_config("demo").name == "smoke"
    assert load_config("demo", honour_env=False).name == "demo"


def test_digest_changes_with_a_parameter(monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    a = load_config("demo")
    b = load_config("demo", {"train": {"epochs": 99}})
    assert a.digest("train") != b.digest("train")
    assert a.digest("phantom") == b.digest("phantom")


def test_yaml_path_profile(tmp_path, monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    p = tmp_path / "mine.yaml"
    p.write_text(Path(profile_path("smoke")).read_text().replace("name: smoke", "name: mine"))
    assert load_config(str(p)).name == "mine"


@pytest.mark.parametrize("profile, overrides, exc, msg", FAILING)
def test_bad_profiles(profile, overrides, exc, msg, monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    with pytest.raises(exc, match=msg):
        load_config(profile, overrides)

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


def test_env_profile_applies_only_when_none_is_named(monkeypatch):
    monkeypatch.setenv("MAMMO_PROFILE", "smoke")
    assert load_config("").name == "smoke"                 # the notebooks' default: nbval's switch
    assert load_config("demo").name == "demo"              # an explicit profile is never replaced
    assert load_config("", honour_env=False).name == "demo"
    monkeypatch.delenv("MAMMO_PROFILE")
    assert load_config("").name == "demo"


# misspelt keys from a review: (overrides, error naming the key and the closest valid one)
MISSPELT_CASES = [
    ({"intensty": "dtype"}, "unknown key 'intensty' (did you mean 'intensity'?)"),
    ({"train": {"augmnet": ["hflip"]}}, "unknown key 'train.augmnet' (did you mean 'train.augment'?)"),
    ({"train": {"weight_decy": 0.1}}, "unknown key 'train.weight_decy' (did you mean 'train.weight_decay'?)"),
    ({"table1": {"n_split": 3}}, "unknown key 'table1.n_split' (did you mean 'table1.n_splits'?)"),
    ({"phantom": {"config": {"confounder_gap": 32}}},
     "unknown key 'phantom.config.confounder_gap' (did you mean 'phantom.config.confounder_gap_px'?)"),
    ({"zzz": 1}, "unknown key 'zzz'; valid here"),
]


@pytest.mark.parametrize("overrides,msg", MISSPELT_CASES)
def test_misspelt_keys_fail_before_any_work(overrides, msg, monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    with pytest.raises(ValueError) as err:
        load_config("demo", overrides)
    assert msg in str(err.value)


def test_misspelt_key_in_a_profile_file(tmp_path):
    import yaml

    values = yaml.safe_load(profile_path("smoke").read_text())
    values["intensty"] = values.pop("intensity")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match="did you mean 'intensity'"):
        load_config(str(bad))


@pytest.mark.parametrize("key,value", [("max_degrees", 10.0), ("selection_metric", "loss"), ("patience", 3),
                                       ("weight_decay", 0.5)])
def test_every_train_setting_of_a_profile_reaches_the_training(key, value, monkeypatch):
    from mammo_lib.pipeline import train_config

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    assert getattr(train_config(load_config("demo", {"train": {key: value}})), key) == value


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

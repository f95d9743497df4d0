"""Profiles: loading, overrides, the MAMMO_PROFILE switch used by nbval, and bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from mammo_lib.repro.config import PROFILE_NAMES, Config, ConfigError, load_config, profile_path

# (profile, overrides, expected exception, message fragment)
FAILING = [
    ("nope", None, ValueError, "unknown profile 'nope'"),
    ("missing.yaml", None, FileNotFoundError, "missing.yaml does not exist"),
    ("full", None, ConfigError, "needs real data"),
    # invalid values: named by their key path, before any work
    ("demo", {"intensity": "foo"}, ConfigError, r"intensity: Input should be 'minmax', 'percentile' or 'dtype'"),
    ("demo", {"roi_size": True}, ConfigError, r"roi_size: Input should be a valid integer \(got True\)"),
    ("demo", {"roi_size": 7}, ConfigError, r"roi_size: Input should be greater than or equal to 32 \(got 7\)"),
    ("demo", {"cv": {"beta_grid": [0, -8]}}, ConfigError,
     r"cv.beta_grid.1: Input should be greater than or equal to 0"),
    ("demo", {"arch": "resnet"}, ConfigError, r"arch: Input should be"),
    ("demo", {"train": {"optimizer": "adamw"}}, ConfigError, r"train.optimizer: Input should be 'adam' or 'sgd'"),
    ("demo", {"cv": {"conditions": ["C"]}}, ConfigError, r"cv.conditions.0: Input should be 'A' or 'B'"),
    ("demo", {"table1": {"n_splits": 1}}, ConfigError, r"table1.n_splits: Input should be greater than or equal to 2"),
    # the design (docs/DECISIONS.md, "The instrument"): declared once in the schema, checked on load
    ("demo", {"cv": {"trunk_seeds": [0, 0]}}, ConfigError, r"cv.trunk_seeds must be distinct, got \[0, 0\]"),
    ("demo", {"cv": {"fold_seeds": []}}, ConfigError, r"cv.fold_seeds: List should have at least 1 item"),
    ("demo", {"cv": {"min_passing_trunks": 4}}, ConfigError,
     r"cv.min_passing_trunks \(4\) exceeds the number of cv.trunk_seeds \(3\)"),
    ("demo", {"cv": {"primary_beta": 5}}, ConfigError, r"cv.primary_beta 5 is not in cv.beta_grid"),
    ("demo", {"cv": {"primary_form": "at"}}, ConfigError, r"cv.primary_beta 32 is not in cv.beta_grid_at"),
    ("demo", {"cv": {"controls": ["noise"]}}, ConfigError, r"cv.controls.0: Input should be 'shuffled'"),
    ("demo", {"pretrain": {"patience": 0}}, ConfigError, r"pretrain.patience: Input should be greater than or equal to 1"),
    ("demo", {"real_data": {"bcdr_f01": {"draw": {"n_benign": "many"}}}}, ConfigError,
     r"real_data.bcdr_f01.draw.n_benign: Input should be a valid integer"),
    # train.beta is not a profile key: beta is chosen per fold from cv.beta_grid
    ("demo", {"train": {"beta": 8}}, ConfigError, r"unknown key 'train.beta' \(beta is chosen per outer fold"),
    ("demo", {"pretrain": {"batch_size": 8}}, ConfigError, r"unknown key 'pretrain.batch_size'"),
    # values the dataclasses check, caught when the profile loads (not when training starts)
    ("demo", {"train": {"trainable": "group5"}}, ConfigError,
     r"invalid value in 'train': TrainConfig.trainable must be one of"),
    ("demo", {"train": {"augment": ["zoom"]}}, ConfigError, r"invalid value in 'train': TrainConfig.augment: unknown \['zoom'\]"),
    ("demo", {"pretrain": {"trainable": "head"}}, ConfigError,
     r"invalid value in 'pretrain': TrainConfig.trainable must be one of"),
    ("demo", {"phantom": {"bcdr_like": {"benign_radius_px": [50, 15]}}}, ConfigError,
     r"invalid value in 'phantom' \(bcdr_like\): benign_radius_px must satisfy 0 <= low <= high"),
]


def _profile_reads() -> set[tuple[str, str]]:
    """(file, key) of every literal key the library reads from a profile: ``cfg["k"]``,
    ``cfg.get("k", ...)``, ``cfg.section("k")``."""
    import ast

    reads = set()
    for p in sorted((Path(__file__).resolve().parents[2] / "mammo_lib").rglob("*.py")):
        for n in ast.walk(ast.parse(p.read_text())):
            base, key = None, None
            if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant):
                base, key = n.value, n.slice.value
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("get", "section")
                  and n.args and isinstance(n.args[0], ast.Constant)):
                base, key = n.func.value, n.args[0].value
            if isinstance(base, ast.Name) and base.id == "cfg" and isinstance(key, str):
                reads.add((p.name, key))
    return reads


def test_every_profile_key_the_library_reads_is_declared(monkeypatch):
    """A key read from a profile that the schema does not declare would be a typo or an undeclared
    default: every literal key of ``cfg[...]``, ``cfg.get(...)``, ``cfg.section(...)`` in the library
    is a top-level key of the profile schema."""
    from mammo_lib.repro.config import profile_model

    declared = set(profile_model().model_fields)
    reads = _profile_reads()
    assert len(reads) > 20                            # the scan sees the library's reads
    assert sorted(r for r in reads if r[1] not in declared) == []


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
    ({"real_data": {"bcdr_f01": {"draw": {"n_benin": 3}}}},
     "unknown key 'real_data.bcdr_f01.draw.n_benin' (did you mean 'real_data.bcdr_f01.draw.n_benign'?)"),
    ({"explain": {"knn": 3}}, "unknown key 'explain.knn' (did you mean 'explain.knn_k'?)"),
    ({"phantom": {"bcdr_like": {"n_benigns": 3}}},
     "unknown key 'phantom.bcdr_like.n_benigns' (did you mean 'phantom.bcdr_like.n_benign'?)"),
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
    from mammo_lib.repro.runtime import train_config

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


def test_a_misspelt_key_is_a_config_error_and_a_value_error(monkeypatch):
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    with pytest.raises(ConfigError, match="did you mean 'train.weight_decay'") as err:
        load_config("demo", {"train": {"weight_decy": 0.1}})
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_train_defaults_are_trainconfigs(name, monkeypatch):
    """One default per setting: a key a profile leaves out gets TrainConfig's default, in the
    plain section as in the typed one (weight_decay: 1e-4, the only one)."""
    import dataclasses
    from dataclasses import fields

    from mammo_lib.repro.runtime import train_config
    from mammo_lib.engines.training import TrainConfig

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    # device cpu: TrainConfig refuses the full profile's cuda on a machine without a GPU
    cfg = load_config(name, {"data_root": "/data", "device": "cpu"} if name == "full" else None)
    written = cfg.raw["train"]
    sec = cfg.section("train")
    for f in fields(TrainConfig):
        if f.name in ("seed", "device", "beta") or f.name in written:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert sec.get(f.name) == (list(default) if isinstance(default, tuple) else default), f.name
        assert getattr(cfg.typed.train, f.name) == default, f.name
        assert getattr(train_config(cfg), f.name) == default, f.name
    assert "beta" not in sec and "seed" not in sec
    assert TrainConfig().weight_decay == 1e-4


def test_a_weight_decay_left_out_is_trainconfigs_default(tmp_path, monkeypatch):
    import yaml

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    from mammo_lib.repro.runtime import train_config

    values = yaml.safe_load(profile_path("smoke").read_text())
    del values["train"]["weight_decay"]
    p = tmp_path / "nowd.yaml"
    p.write_text(yaml.safe_dump(values))
    cfg = load_config(str(p))
    assert cfg.section("train")["weight_decay"] == 1e-4 == train_config(cfg).weight_decay
    assert "weight_decay" not in cfg.raw["train"]


def test_a_new_trainconfig_field_is_a_valid_key_with_its_default(monkeypatch):
    """The train section is derived from TrainConfig: a field added there is a valid key."""
    import dataclasses

    from mammo_lib.repro import config as config_mod
    from mammo_lib.engines import training

    @dataclasses.dataclass
    class Extended(training.TrainConfig):
        grad_clip: float = 0.0

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    monkeypatch.setattr(training, "TrainConfig", Extended)
    config_mod.profile_model.cache_clear()
    try:
        assert load_config("smoke").section("train")["grad_clip"] == 0.0
        assert load_config("smoke", {"train": {"grad_clip": 1.5}}).typed.train.grad_clip == 1.5
        with pytest.raises(ConfigError, match="did you mean 'train.grad_clip'"):
            load_config("smoke", {"train": {"grad_clp": 1.0}})
    finally:
        monkeypatch.undo()
        config_mod.profile_model.cache_clear()
    with pytest.raises(ConfigError, match="unknown key 'train.grad_clip'"):
        load_config("smoke", {"train": {"grad_clip": 1.0}})


def test_sections_fill_defaults_but_keep_the_derived_ones_open(monkeypatch):
    """Declared defaults are filled in; a default that is another key (table1.epochs = train.epochs,
    pretrain.lr = train.lr, explain.n_sanity = n_agreement, phantom.seed = seed) stays unset."""
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    cfg = load_config("smoke")
    assert cfg.section("generic_pretrain") == {"n_train": 24, "n_test": 8, "epochs": 1, "batch_size": 8, "lr": 0.003}
    assert cfg.section("table1") == {"n_splits": 2, "epochs": 1}
    assert cfg.section("pretrain") == {"epochs": 2, "trainable": "all"}
    assert cfg.section("explain") == {"n_cases": 2, "knn_k": 3, "batch_size": 9, "n_agreement": 4, "n_sanity": 4}
    assert "seed" in cfg.section("phantom") and cfg.section("cv")["conditions"] == ["A", "B"]
    full = load_config("full", {"data_root": "/data"})
    assert full.section("cv")["conditions"] == ["A", "B"]           # full.yaml leaves it out
    assert full.typed.roi.intensity == "percentile" and full.typed.explain.n_sanity == 40


def _declared_keys() -> set[str]:
    """Every key name the profile schema declares, at any depth."""
    from mammo_lib.repro.config import _section_type, profile_model

    out: set[str] = set()

    def walk(model) -> None:
        for name, f in model.model_fields.items():
            out.add(name)
            sub = _section_type(f.annotation)
            if sub is not None:
                walk(sub)

    walk(profile_model())
    return out


def _inline_fallbacks(source: str, keys: set[str]) -> list[str]:
    """``x.get("<declared key>", <default>)`` calls with a default other than None: a second,
    possibly contradicting, declaration of that key's default."""
    import ast

    hits = []
    for n in ast.walk(ast.parse(source)):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                and len(n.args) == 2 and isinstance(n.args[0], ast.Constant) and n.args[0].value in keys
                and not (isinstance(n.args[1], ast.Constant) and n.args[1].value is None)):
            hits.append(f"{n.lineno}: {ast.unparse(n)}")
    return hits


def test_the_fallback_scan_sees_an_inline_default():
    keys = {"intensity", "workers"}
    src = 'a = cfg.get("intensity", "minmax")\nb = cfg.get("workers")\nc = d.get("other", 1)\n'
    assert _inline_fallbacks(src, keys) == ["1: cfg.get('intensity', 'minmax')"]


def test_every_default_is_declared_once_in_the_schema():
    """No module of the library repeats a declared profile default inline
    (``cfg.get("intensity", "minmax")`` once contradicted the declared ``percentile``): the
    resolved profile holds every default, so readers index it (``cfg["intensity"]``) and a key whose
    declared default is None reads as ``.get(key)``."""
    keys = _declared_keys()
    assert {"intensity", "workers", "beta_grid", "n_benign", "head"} <= keys
    found = {str(p.relative_to(p.parents[2])): _inline_fallbacks(p.read_text(), keys)
             for p in sorted((Path(__file__).resolve().parents[2] / "mammo_lib").rglob("*.py"))}
    assert {f: h for f, h in found.items() if h} == {}


def test_the_beta_grid_and_the_f01_draw_have_one_default():
    from mammo_lib.protocol.instrument import DEFAULT_BETA_GRID, DEFAULT_BETA_GRID_AT, beta_grid
    from mammo_lib.repro.config import profile_defaults

    cv = profile_defaults()["cv"]
    assert (cv["beta_grid"], cv["beta_grid_at"]) == ([0, 2, 8, 32, 128], [1000])
    assert tuple(cv["beta_grid"]) == DEFAULT_BETA_GRID and tuple(cv["beta_grid_at"]) == DEFAULT_BETA_GRID_AT
    assert [p.beta for p in beta_grid()] == [0, 2, 8, 32, 128, 1000]
    # the balanced BCDR-F01 draw of Sec. 3.1, read from the schema when a profile gives no draw
    cfg = load_config("demo", {"real_data": {"bcdr_f01": {"csv": "x.csv"}}}, honour_env=False)
    d = cfg.typed.real_data.bcdr_f01.draw
    assert (d.n_benign, d.n_malignant, d.seed) == (59, 74, 2025)


def test_intensity_default_is_one_constant():
    import inspect

    from mammo_lib.repro.config import profile_model
    from mammo_lib.data.images import DEFAULT_INTENSITY, INTENSITY_MODES, load_record, to_unit_float
    from mammo_lib.data.preprocess import preprocess

    assert INTENSITY_MODES == ("minmax", "percentile", "dtype")
    assert profile_model().model_fields["intensity"].default == DEFAULT_INTENSITY
    for fn in (to_unit_float, load_record, preprocess):
        assert inspect.signature(fn).parameters["intensity"].default == DEFAULT_INTENSITY, fn.__name__
    # every shipped profile sets its own (the library default never decides a result)
    for name in PROFILE_NAMES:
        import yaml

        assert "intensity" in yaml.safe_load(profile_path(name).read_text()), name


def test_digest_is_of_the_profile_as_written(monkeypatch):
    """Filling defaults does not change digest(): the hash is of the keys as written. The values pin
    the shipped profiles' keys (the train digests were computed before the typed profile existed;
    the whole-profile ones changed when `threads` was added, then with the design's cv keys and
    pretrain.patience): a change rebuilds every cache."""
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    demo, smoke = load_config("demo"), load_config("smoke")
    assert (demo.digest(), demo.digest("train")) == ("2a4b8eb7cd905fe8", "ca192d1bd56905bf")
    assert (smoke.digest(), smoke.digest("train")) == ("d99920c7b6186718", "fc53afaed3674be7")


def test_explicit_profile_path_beats_the_environment(tmp_path, monkeypatch):
    p = tmp_path / "mine.yaml"
    p.write_text(Path(profile_path("smoke")).read_text().replace("name: smoke", "name: mine"))
    monkeypatch.setenv("MAMMO_PROFILE", "demo")
    assert load_config(str(p)).name == "mine"
    assert load_config("smoke").name == "smoke"
    monkeypatch.setenv("MAMMO_PROFILE", "nope")
    assert load_config("smoke").name == "smoke"                  # a bad environment is never even read
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_config("")


# ------------------------------------------------------------------------- cache keys know the code
def test_code_digest_follows_the_source(tmp_path):
    from mammo_lib.utils.digest import code_digest

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    d = code_digest("a", "b", root=tmp_path)
    assert d == code_digest("a", "b", root=tmp_path) and len(d) == 12
    (tmp_path / "b.py").write_text("y = 3\n")
    assert code_digest("a", "b", root=tmp_path) != d
    assert code_digest("a", root=tmp_path) != code_digest("b", root=tmp_path)
    with pytest.raises(FileNotFoundError):
        code_digest("missing", root=tmp_path)


@pytest.mark.parametrize("stage", ["table1", "pretrain", "generic", "trunk_cache", "instrument", "other"])
def test_run_dir_is_keyed_by_the_precision_and_refuses_another_one(stage, tmp_path, monkeypatch):
    from mammo_lib.repro.runtime import run_dir
    from mammo_lib.utils.precision import in_precision

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    f64 = load_config("smoke", root=tmp_path)
    f32 = load_config("smoke", {"precision": "float32"}, root=tmp_path)
    with in_precision("float64"):
        d64 = run_dir(f64, stage)
        with pytest.raises(RuntimeError, match="profile 'smoke' computes in float32 but this process computes in float64"):
            run_dir(f32, stage)
    assert run_dir(f32, stage) != d64                    # a cache of one precision is never another's
    with pytest.raises(RuntimeError, match=r"call mammo_lib.repro.runtime.pin_numerics\(cfg\)"):
        run_dir(f64, stage)


@pytest.mark.parametrize("stage", ["table1", "pretrain", "generic", "trunk_cache", "instrument", "other"])
def test_run_dir_changes_with_the_code_of_its_stage(stage, tmp_path, monkeypatch):
    from mammo_lib.repro import config as config_mod
    from mammo_lib.repro.runtime import run_dir

    from mammo_lib.utils.precision import set_precision

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    cfg = load_config("smoke", root=tmp_path)
    set_precision("float64")  # the smoke profile's (conftest restores the default)
    same = run_dir(cfg, stage, "w")
    assert same == run_dir(load_config("smoke", root=tmp_path), stage, "w")     # unchanged code: resumes
    assert same.parent == tmp_path / "runs" / "smoke" and same.name.startswith(stage + "-")
    real = config_mod.code_digest
    modules = config_mod.STAGES.get(stage, config_mod.DEFAULT_STAGE)["code"]
    # one of the stage's modules edited: a new folder
    monkeypatch.setattr(config_mod, "code_digest",
                        lambda *m, root=None: real(*m, root=root) + ("*" if modules[-1] in m else ""))
    assert run_dir(cfg, stage, "w") != same
    # a module the stage does not depend on edited: the same folder
    monkeypatch.setattr(config_mod, "code_digest",
                        lambda *m, root=None: real(*m, root=root) + ("*" if "repro.figures" in m else ""))
    assert run_dir(cfg, stage, "w") == same
    assert run_dir(cfg, stage, "other") != same


def test_run_dir_changes_with_the_settings_of_its_stage(tmp_path, monkeypatch):
    from mammo_lib.repro.runtime import run_dir
    from mammo_lib.utils.precision import set_precision

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    set_precision("float64")  # the smoke profile's (conftest restores the default)
    cfg = load_config("smoke", root=tmp_path)
    gen = load_config("smoke", {"generic_pretrain": {"epochs": 2}}, root=tmp_path)
    tr = load_config("smoke", {"train": {"epochs": 3}}, root=tmp_path)
    assert run_dir(gen, "generic") != run_dir(cfg, "generic") == run_dir(tr, "generic")
    assert run_dir(gen, "pretrain") != run_dir(cfg, "pretrain") != run_dir(tr, "pretrain")
    assert run_dir(tr, "table1") != run_dir(cfg, "table1")
    amp = load_config("smoke", {"train": {"channels_last": True}}, root=tmp_path)
    assert run_dir(amp, "generic") != run_dir(cfg, "generic")        # the generic pre-training reads it


def test_instrument_code_is_the_shared_digest():
    from mammo_lib.protocol import instrument
    from mammo_lib.utils.digest import code_digest

    assert instrument.code_digest is code_digest
    assert instrument.CODE == code_digest("protocol.instrument", "engines.trunk_cache", "engines.training", "networks.activation",
                                             "networks.densenet")


def test_docstring_examples(monkeypatch):
    import doctest

    from mammo_lib.repro import config as config_mod

    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    result = doctest.testmod(config_mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_every_stage_module_exists_and_data_code_keys_the_model_stages():
    from mammo_lib.repro import config as config_mod

    root = Path(config_mod.__file__).parents[1]
    for stage, spec in {**config_mod.STAGES, "default": config_mod.DEFAULT_STAGE}.items():
        paths = [root.joinpath(*m.split(".")) for m in spec["code"]]
        missing = [m for m, p in zip(spec["code"], paths)
                   if not (p.with_name(p.name + ".py").exists() or (p / "__init__.py").exists())]
        assert not missing, (stage, missing)
        if stage != "generic":
            assert {"data.roi", "data.preprocess", "engines.training"} <= set(spec["code"]), stage


def test_config_pickles_after_its_typed_model_was_used():
    """Jobs cross process boundaries (submitit, multiprocessing) with their Config."""
    import pickle

    cfg = load_config("smoke", {"train": {"epochs": 1}}, honour_env=False)
    assert cfg.typed.train.epochs == 1
    back = pickle.loads(pickle.dumps(cfg))
    assert back.values == cfg.values and back.raw == cfg.raw and back.digest() == cfg.digest()
    assert back.typed.train.epochs == 1 and back.typed.roi.roi_size == 64


def test_pin_numerics_sets_the_profiles_threads_and_precision_and_leaves_threads_when_unset():
    import torch

    from mammo_lib.repro.runtime import pin_numerics

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pin_numerics(load_config("smoke", honour_env=False)) == 2 == torch.get_num_threads()
        assert torch.get_default_dtype() == torch.float64           # the smoke profile computes in float64
        assert torch.nn.Linear(2, 2).weight.dtype == torch.float64
        torch.set_num_threads(1)
        assert pin_numerics(Config(values={"threads": None})) == 1 == torch.get_num_threads()
        assert torch.get_default_dtype() == torch.float32           # no precision key: float32
        pin_numerics(load_config("demo", honour_env=False))
        assert torch.get_default_dtype() == torch.float32
    finally:
        torch.set_num_threads(old)
        torch.set_default_dtype(torch.float32)


def test_float64_with_amp_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.amp 'bf16' would compute it in half precision"):
        load_config("smoke", {"train": {"amp": "bf16"}}, honour_env=False)
    with pytest.raises(ConfigError, match="precision"):
        load_config("smoke", {"precision": "float16"}, honour_env=False)
    assert load_config("smoke", {"precision": "float32", "train": {"amp": "bf16"}}, honour_env=False)["precision"] == "float32"


@pytest.mark.parametrize("name,trunks,folds", [("smoke", 2, 2), ("demo", 3, 3), ("full", 3, 3)])
def test_profiles_declare_the_design(name, trunks, folds, monkeypatch):
    """Variance in the design and the pre-specified primary analysis are profile keys: at least 3
    trunk seeds x 3 fold seeds x 5 folds in demo and full, a small 2 x 2 in smoke."""
    monkeypatch.delenv("MAMMO_PROFILE", raising=False)
    cv = load_config(name, {"data_root": "/data"} if name == "full" else None).section("cv")
    assert len(cv["trunk_seeds"]) == trunks and len(cv["fold_seeds"]) == folds
    assert 1 <= cv["min_passing_trunks"] <= trunks
    assert cv["primary_form"] == "paper" and cv["primary_beta"] in cv["beta_grid"]
    assert set(cv["controls"]) == {"shuffled", "oracle", "uniform", "rolled"} and cv["positive_control"] is True
    if name != "smoke":
        assert cv["n_splits"] == 5 and cv["primary_beta"] == 32


def test_design_defaults_are_one_replicate(tmp_path):
    """A profile that leaves the design out gets one trunk seed and one fold seed."""
    import yaml

    p = tmp_path / "p.yaml"
    raw = yaml.safe_load(profile_path("smoke").read_text())
    for k in ("trunk_seeds", "fold_seeds", "min_passing_trunks", "primary_beta", "controls", "positive_control",
              "primary_form"):
        raw["cv"].pop(k)
    raw["cv"]["beta_grid"] = [0, 8, 32]
    p.write_text(yaml.safe_dump(raw))
    cv = load_config(str(p)).section("cv")
    assert (cv["trunk_seeds"], cv["fold_seeds"], cv["min_passing_trunks"], cv["primary_beta"]) == ([0], [0], 1, 32.0)

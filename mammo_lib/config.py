"""Run profiles (``smoke``, ``demo``, ``full``): YAML files of parameters for the reproduction.

A profile fills every parameter a notebook leaves as ``None``. A notebook's ``profile``
parameter is ``""`` by default, which means ``$MAMMO_PROFILE`` (the test command sets it to
``smoke`` so that nbval runs the same notebooks in a minute) or else ``demo``; a profile named
explicitly (``--profile``, papermill's parameter) is never replaced by the environment. Every key
is checked against the schema (:func:`check_keys`): a misspelt key is an error naming it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

PROFILE_NAMES = ("smoke", "demo", "full")
ENV_PROFILE = "MAMMO_PROFILE"


# ------------------------------------------------------------------------------ the profile schema
#: Keys of a profile. A mapping is a section (its own keys); ``None`` takes any value; a tuple of
#: key sets for a section whose keys come from a dataclass is resolved in :func:`_schema`.
_TOP = {"name", "description", "data_root", "work_dir", "results_dir", "device", "seed", "workers", "arch",
        "imagenet_weights", "imagenet_fallback", "roi_size", "min_context", "intensity", "phantom", "real_data",
        "generic_pretrain", "train", "pretrain", "cv", "table1", "explain"}


def _schema() -> dict[str, Any]:
    """Every valid key of a profile, nested as the YAML is (built from the dataclasses the
    sections feed, so a new ``TrainConfig`` or ``PhantomConfig`` field is valid at once)."""
    from dataclasses import fields

    from .phantom import PhantomConfig
    from .training import TrainConfig

    train = {f.name: None for f in fields(TrainConfig) if f.name not in ("seed", "device")} | {"head": None}
    phantom_cfg = {f.name: None for f in fields(PhantomConfig)}
    real = {"csv": None, "dicom_root": None, "outlines": None, "images": None,
            "draw": {"n_benign": None, "n_malignant": None, "seed": None}}
    return {
        **{k: None for k in _TOP},
        "phantom": {"seed": None, "image_shape": None, "config": phantom_cfg, "bcdr_like": phantom_cfg,
                    "ddsm_like": phantom_cfg},
        "real_data": {"cbis_ddsm": real, "bcdr_d01": real, "bcdr_f01": real},
        "generic_pretrain": {"n_train": None, "n_test": None, "epochs": None, "batch_size": None, "lr": None},
        "train": train,
        "pretrain": train,
        "cv": {"n_splits": None, "conditions": None, "beta_grid": None, "beta_grid_at": None},
        "table1": {"n_splits": None, "epochs": None, "roi_size": None},
        "explain": {"n_cases": None, "knn_k": None, "batch_size": None, "n_agreement": None, "n_sanity": None},
    }


def check_keys(values: Mapping[str, Any], source: str = "profile") -> None:
    """Raise ``ValueError`` naming every unknown key (by its dotted path) and the closest valid one:
    a misspelt key never falls back silently to a default."""
    import difflib

    problems: list[str] = []

    def walk(node: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in schema:
                close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1, cutoff=0.6)
                hint = f" (did you mean {(path + '.' if path else '') + close[0]!r}?)" if close else ""
                valid = ", ".join(sorted(str(k) for k in schema))
                problems.append(f"unknown key {where!r}{hint}; valid here: {valid}")
            elif isinstance(schema[key], Mapping) and isinstance(value, Mapping):
                walk(value, schema[key], where)

    walk(values, _schema(), "")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))


def profile_path(name: str) -> Path:
    """The YAML file of a built-in profile, or ``name`` itself when it is a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"profile file {p} does not exist")
        return p
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILE_NAMES)} or a .yaml file")
    return Path(__file__).resolve().parent / "profiles" / f"{name}.yaml"


def _merge(base: dict, over: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            continue
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass
class Config:
    """A resolved profile: a nested dict with helpers for paths and hashing."""

    values: dict[str, Any]
    root: Path = field(default_factory=Path.cwd)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    @property
    def name(self) -> str:
        return str(self.values["name"])

    @property
    def work_dir(self) -> Path:
        return self.path(self.values["work_dir"])

    @property
    def results_dir(self) -> Path:
        return self.path(self.values["results_dir"])

    @property
    def data_root(self) -> Path | None:
        v = self.values.get("data_root") or ""
        return self.path(v) if v else None

    @property
    def uses_phantom(self) -> bool:
        return self.data_root is None

    def path(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def section(self, key: str) -> dict[str, Any]:
        return dict(self.values.get(key) or {})

    def digest(self, *keys: str) -> str:
        """Short hash of the named sections (all when none): keys caches and skip decisions."""
        sel = {k: self.values.get(k) for k in keys} if keys else self.values
        blob = json.dumps(sel, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.values)


def find_project_root(start: Path | None = None) -> Path:
    """The folder holding ``pyproject.toml`` above ``start`` (notebooks run from ``notebooks/``)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").exists() and (d / "mammo_lib").is_dir():
            return d
    return here


def load_config(profile: str = "", overrides: Mapping[str, Any] | None = None,
                *, root: Path | None = None, honour_env: bool = True) -> Config:
    """Load a profile and apply ``overrides`` (``None`` values are ignored, dicts merge).

    ``profile=""`` takes ``$MAMMO_PROFILE`` (when ``honour_env``) or else ``demo``; an explicit
    profile is used as given. Unknown keys (in the file or the overrides) raise ``ValueError``.
    Relative paths in the profile resolve against the project root.
    """
    if not profile:
        profile = (os.environ.get(ENV_PROFILE) if honour_env else None) or "demo"
    with open(profile_path(profile)) as fh:
        values = yaml.safe_load(fh)
    if not isinstance(values, dict) or "name" not in values:
        raise ValueError(f"profile {profile!r} is not a mapping with a 'name'")
    values = _merge(values, overrides or {})
    check_keys(values, f"profile {profile!r}")
    cfg = Config(values=values, root=root or find_project_root())
    if cfg.name == "full" and cfg.uses_phantom:
        raise ValueError("the full profile needs real data: pass --data-root (or data_root=...) "
                         "pointing at the folder described in mammo_lib/profiles/full.yaml")
    return cfg

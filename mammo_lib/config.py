"""Run profiles (``smoke``, ``demo``, ``full``): YAML files of parameters for the reproduction.

A profile fills every parameter a notebook leaves as ``None``. The environment variable
``MAMMO_PROFILE``, when set, replaces the profile a notebook asks for: the test command sets it
to ``smoke`` so that nbval runs the same notebooks in minutes.
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


def load_config(profile: str = "demo", overrides: Mapping[str, Any] | None = None,
                *, root: Path | None = None, honour_env: bool = True) -> Config:
    """Load a profile and apply ``overrides`` (``None`` values are ignored, dicts merge).

    ``MAMMO_PROFILE`` in the environment replaces ``profile`` when ``honour_env`` is true.
    Relative paths in the profile resolve against the project root.
    """
    if honour_env and os.environ.get(ENV_PROFILE):
        profile = os.environ[ENV_PROFILE]
    with open(profile_path(profile)) as fh:
        values = yaml.safe_load(fh)
    if not isinstance(values, dict) or "name" not in values:
        raise ValueError(f"profile {profile!r} is not a mapping with a 'name'")
    values = _merge(values, overrides or {})
    cfg = Config(values=values, root=root or find_project_root())
    if cfg.name == "full" and cfg.uses_phantom:
        raise ValueError("the full profile needs real data: pass --data-root (or data_root=...) "
                         "pointing at the folder described in mammo_lib/profiles/full.yaml")
    return cfg

"""Run profiles (``smoke``, ``demo``, ``full``): YAML files of parameters for the reproduction.

A profile fills every parameter a notebook leaves as ``None``. A notebook's ``profile``
parameter is ``""`` by default, which means ``$MAMMO_PROFILE`` (the test command sets it to
``smoke`` so that nbval runs the same notebooks in a minute) or else ``demo``; a profile named
explicitly (``--profile``, papermill's parameter) is never replaced by the environment.

The profile is strict and typed (docs/DECISIONS.md, "Profiles"): it parses once into pydantic
models (:func:`profile_model`, ``extra="forbid"`` everywhere); an unknown or misspelt key is an
error naming its dotted path and the closest valid key, a bad value an error naming its path.
Every default is declared once: the ``train`` section is derived from
:class:`~mammo_lib.engines.training.TrainConfig` (a new field is a valid key with its default), the
phantom sections from :class:`~mammo_lib.data.phantom.PhantomConfig`, the rest here.

Cache keys hold the settings *and* the code that makes an artefact: :func:`code_digest` hashes
module sources, :data:`STAGES` names the settings and modules of each cached stage
(:func:`stage_key`, used by :func:`mammo_lib.repro.runtime.run_dir`).
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, create_model, model_validator

from mammo_lib.data.images import DEFAULT_INTENSITY, INTENSITY_MODES
from mammo_lib.utils.digest import code_digest
from mammo_lib.utils.options import MAX_ROI_SIZE, MIN_ROI_SIZE, PRECISION_NAMES

PROFILE_NAMES = ("smoke", "demo", "full")
ENV_PROFILE = "MAMMO_PROFILE"


class ConfigError(ValueError):
    """A profile (file or overrides) with an unknown key or an invalid value."""


#: Modules whose source decides what a model trained by :mod:`mammo_lib.protocol.cross_validation` is.
_TRAINING_CODE = ("protocol.cross_validation", "engines.training", "networks.densenet", "networks.activation",
                  "networks.transfer", "data.augment", "metrics.classification", "engines.amp", "engines.selection",
                  "utils.precision")
#: Modules whose source decides the ROIs a model sees (Table 1 fold keys hold case ids, not pixels).
_DATA_CODE = ("data.phantom", "data.records", "data.images", "data.roi", "data.preprocess", "data.generic_csv",
              "data.cbis_ddsm", "data.bcdr")
#: Settings every cached stage depends on (the data and the model).
_DATA_KEYS = ("seed", "arch", "roi_size", "min_context", "intensity", "phantom", "data_root", "real_data", "precision")

#: Cached stages: the profile keys (a section, or ``section.key``) and the ``mammo_lib`` modules a
#: stage's artefacts depend on (:func:`stage_key`). A stage missing here uses :data:`DEFAULT_STAGE`.
STAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "table1": {"keys": _DATA_KEYS + ("imagenet_weights", "imagenet_fallback", "generic_pretrain", "train", "table1"),
               "code": _DATA_CODE + _TRAINING_CODE + ("repro.table2", "protocol.stand_in")},
    "pretrain": {"keys": _DATA_KEYS + ("imagenet_weights", "imagenet_fallback", "generic_pretrain", "train",
                                        "pretrain"),
                 "code": _DATA_CODE + _TRAINING_CODE + ("repro.table2", "protocol.stand_in")},
    "generic": {"keys": ("seed", "arch", "roi_size", "precision", "generic_pretrain", "train.amp", "train.channels_last"),
                "code": ("protocol.stand_in", "networks.densenet", "engines.amp", "utils.precision")},
    "trunk_cache": {"keys": _DATA_KEYS + ("imagenet_weights", "imagenet_fallback", "generic_pretrain", "train",
                                           "pretrain"),
                    "code": _DATA_CODE + _TRAINING_CODE + ("engines.trunk_cache", "repro.table2", "protocol.stand_in")},
    "instrument": {"keys": _DATA_KEYS + ("imagenet_weights", "imagenet_fallback", "generic_pretrain", "train",
                                          "pretrain", "cv"),
                   "code": _DATA_CODE + _TRAINING_CODE + ("engines.trunk_cache", "protocol.instrument", "repro.table2",
                                                          "protocol.stand_in")},
}
#: Any other stage: every setting that shapes a model, and the data and training code.
DEFAULT_STAGE: dict[str, tuple[str, ...]] = {
    "keys": _DATA_KEYS + ("imagenet_weights", "imagenet_fallback", "generic_pretrain", "train", "pretrain", "cv",
                          "table1"),
    "code": _DATA_CODE + _TRAINING_CODE}


# ------------------------------------------------------------------------------ the profile schema
class _Section(BaseModel):
    """A profile section: unknown keys are errors (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: Keys a profile may not set, with the reason (shown in the error).
REMOVED_KEYS: dict[str, str] = {
    "train.beta": "beta is chosen per outer fold from cv.beta_grid (Eq. 5, docs/DECISIONS.md); "
                  "a profile value would never be used",
    "train.seed": "set the top-level seed", "train.device": "set the top-level device",
}


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a dataclass (default factories called)."""
    from dataclasses import fields

    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def _from_dataclass(cls: type, name: str, *, skip: Sequence[str] = (), partial: bool = False,
                    extra: Mapping[str, Any] | None = None) -> type[BaseModel]:
    """A strict pydantic model with the fields of dataclass ``cls`` (types from its annotations,
    defaults from the dataclass; ``partial``: every field optional, ``None`` = not set)."""
    from dataclasses import fields

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation pydantic cannot resolve: the dataclass validates the value
        hints = {}
    defaults = _dataclass_defaults(cls)
    spec: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        tp = hints.get(f.name, Any)
        if partial:
            spec[f.name] = (Optional[Any], None)        # values checked by the dataclass itself
        elif f.name in defaults:
            spec[f.name] = (tp, Field(default_factory=functools.partial(copy.deepcopy, defaults[f.name])))
        else:
            spec[f.name] = (tp, ...)
    spec.update(extra or {})
    return create_model(name, __base__=_Section, **spec)


#: A beta of Eq. 5 in a profile's grid: finite and >= 0, as :class:`~mammo_lib.engines.training.TrainConfig` needs.
_Beta = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@functools.cache
def profile_model() -> type[BaseModel]:
    """The pydantic model of a whole profile (built once, from the dataclasses the sections feed).

    >>> profile_model().model_fields["roi_size"].default
    224
    """
    from mammo_lib.networks.densenet import ARCHS
    from mammo_lib.protocol.instrument import DEFAULT_BETA_GRID, DEFAULT_BETA_GRID_AT
    from mammo_lib.data.phantom import PhantomConfig
    from mammo_lib.engines.training import TrainConfig

    tc = _dataclass_defaults(TrainConfig)
    head = (Literal["gap", "flatten"], "gap")
    Train = _from_dataclass(TrainConfig, "TrainSection", skip=("seed", "device", "beta"), extra={"head": head})
    PhantomPart = _from_dataclass(PhantomConfig, "PhantomPart", skip=("seed", "image_shape"), partial=True)

    class Phantom(_Section):
        seed: Optional[StrictInt] = None               # None: the profile's seed
        image_shape: tuple[StrictInt, StrictInt] = (640, 512)
        config: PhantomPart = Field(default_factory=PhantomPart)        # type: ignore[valid-type]
        bcdr_like: PhantomPart = Field(default_factory=PhantomPart)     # type: ignore[valid-type]
        ddsm_like: PhantomPart = Field(default_factory=PhantomPart)     # type: ignore[valid-type]

    class Draw(_Section):   # the balanced BCDR-F01 draw (Sec. 3.1: 59 benign, 74 malignant masses)
        n_benign: StrictInt = Field(59, ge=0)
        n_malignant: StrictInt = Field(74, ge=0)
        seed: StrictInt = 2025

    class RealSource(_Section):
        csv: Optional[str | list[str]] = None
        dicom_root: Optional[str] = None
        outlines: Optional[str] = None
        images: Optional[str] = None
        draw: Draw = Field(default_factory=Draw)        # read for bcdr_f01 only

    class RealData(_Section):
        cbis_ddsm: Optional[RealSource] = None
        bcdr_d01: Optional[RealSource] = None
        bcdr_f01: Optional[RealSource] = None

    class GenericPretrain(_Section):
        n_train: StrictInt = Field(800, ge=2)
        n_test: StrictInt = Field(200, ge=2)
        epochs: StrictInt = Field(20, ge=1)
        batch_size: StrictInt = Field(32, ge=2)
        lr: float = Field(3e-3, gt=0)

    class Pretrain(_Section):
        epochs: Optional[StrictInt] = Field(None, ge=1)     # None: train.epochs
        trainable: str = "all"
        lr: Optional[float] = Field(None, gt=0)             # None: train.lr
        patience: Optional[StrictInt] = Field(None, ge=1)   # None: train all epochs (best epoch kept)

    class CV(_Section):
        n_splits: StrictInt = Field(5, ge=2)
        conditions: list[Literal["A", "B"]] = ["A", "B"]
        beta_grid: list[_Beta] = list(DEFAULT_BETA_GRID)     # Eq. 5 weights: finite, >= 0
        beta_grid_at: list[_Beta] = list(DEFAULT_BETA_GRID_AT)
        # The design (docs/DECISIONS.md, "The instrument"): trunk and fold seeds are offsets added
        # to the profile's seed; each trunk seed pre-trains its own generic and DDSM trunk.
        trunk_seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
        fold_seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
        min_passing_trunks: StrictInt = Field(1, ge=1)
        # The pre-specified primary analysis: knowledge transfer at this fixed beta vs fine-tuning,
        # plus the trend over the grid; the per-fold choice on the inner split is a secondary row.
        primary_beta: float = Field(32.0, gt=0)
        primary_form: Literal["paper", "at"] = "paper"
        controls: list[Literal["shuffled", "oracle", "uniform", "rolled"]] = Field(
            default_factory=lambda: ["shuffled", "oracle", "uniform", "rolled"])
        positive_control: bool = True                       # classifier on group 4's own channels

        @model_validator(mode="after")
        def _design(self) -> "CV":
            for name in ("trunk_seeds", "fold_seeds"):
                seeds = getattr(self, name)
                if len(set(seeds)) != len(seeds):
                    raise ValueError(f"cv.{name} must be distinct, got {seeds}")
            if self.min_passing_trunks > len(self.trunk_seeds):
                raise ValueError(f"cv.min_passing_trunks ({self.min_passing_trunks}) exceeds the number of "
                                 f"cv.trunk_seeds ({len(self.trunk_seeds)})")
            grid = self.beta_grid if self.primary_form == "paper" else self.beta_grid_at
            if self.primary_beta not in grid:
                key = "cv.beta_grid" if self.primary_form == "paper" else "cv.beta_grid_at"
                raise ValueError(f"cv.primary_beta {self.primary_beta:g} is not in {key} {grid}")
            return self

    class Table1(_Section):
        n_splits: StrictInt = Field(5, ge=2)
        epochs: Optional[StrictInt] = Field(None, ge=1)     # None: train.epochs
        roi_size: Optional[StrictInt] = Field(None, ge=MIN_ROI_SIZE, le=MAX_ROI_SIZE)  # None: the profile's

    class Explain(_Section):
        n_cases: StrictInt = Field(2, ge=1)
        knn_k: StrictInt = Field(5, ge=1)
        batch_size: StrictInt = Field(33, ge=1)
        n_agreement: StrictInt = Field(40, ge=1)
        n_sanity: Optional[StrictInt] = Field(None, ge=1)   # None: n_agreement

    class Profile(RoiSpec):
        name: str
        description: str = ""
        data_root: str = ""
        work_dir: str
        results_dir: str
        device: str = tc["device"]
        seed: StrictInt = tc["seed"]
        workers: StrictInt = Field(2, ge=1)
        threads: Optional[StrictInt] = Field(None, ge=1)  # torch CPU threads (runtime.pin_numerics); None: torch's
        precision: Literal[tuple(PRECISION_NAMES)] = "float32"  # type: ignore[valid-type]  # runtime.pin_numerics
        arch: Literal[tuple(ARCHS)] = "small"  # type: ignore[valid-type]
        imagenet_weights: str = "imagenet"
        imagenet_fallback: Literal["error", "generic", "none"] = "error"
        phantom: Phantom = Field(default_factory=Phantom)
        real_data: RealData = Field(default_factory=RealData)
        generic_pretrain: GenericPretrain = Field(default_factory=GenericPretrain)
        train: Train = Field(default_factory=Train)  # type: ignore[valid-type]
        pretrain: Pretrain = Field(default_factory=Pretrain)
        cv: CV = Field(default_factory=CV)
        table1: Table1 = Field(default_factory=Table1)
        explain: Explain = Field(default_factory=Explain)

        @model_validator(mode="after")
        def _precision(self) -> "Profile":
            amp = getattr(self.train, "amp", "off")
            if self.precision != "float32" and amp != "off":
                raise ValueError(f"precision {self.precision} computes every training in {self.precision}; "
                                 f"train.amp {amp!r} would compute it in half precision: set train.amp: off")
            return self

        @property
        def roi(self) -> "RoiSpec":
            """The ROI spec (Sec. 3.2) on its own."""
            return RoiSpec(roi_size=self.roi_size, min_context=self.min_context, intensity=self.intensity)

    return Profile


class RoiSpec(_Section):
    """How ROIs are made (Sec. 3.2): side after resizing, minimum context, intensity scaling."""

    roi_size: StrictInt = Field(224, ge=MIN_ROI_SIZE, le=MAX_ROI_SIZE)  # mammo_lib.utils.options: one source
    min_context: StrictInt = Field(224, ge=1)
    intensity: Literal[INTENSITY_MODES] = DEFAULT_INTENSITY  # type: ignore[valid-type]


def _schema(model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Every valid key, nested as the YAML is (``None`` = a value, a dict = a section)."""
    model = model or profile_model()
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        sub = _section_type(f.annotation)
        out[name] = _schema(sub) if sub is not None else None
    return out


def _section_type(tp: Any) -> type[BaseModel] | None:
    """The section model inside an annotation (``Optional[Model]`` included), else None."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def check_keys(values: Mapping[str, Any], source: str = "profile") -> None:
    """Raise :class:`ConfigError` naming every unknown key (by its dotted path) and the closest
    valid one: a misspelt key never falls back silently to a default."""
    problems: list[str] = []

    def walk(node: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in schema:
                close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1, cutoff=0.6)
                hint = f" (did you mean {(path + '.' if path else '') + close[0]!r}?)" if close else ""
                why = f" ({REMOVED_KEYS[where]})" if where in REMOVED_KEYS else ""
                valid = ", ".join(sorted(str(k) for k in schema))
                problems.append(f"unknown key {where!r}{why}{hint}; valid here: {valid}")
            elif isinstance(schema[key], Mapping) and isinstance(value, Mapping):
                walk(value, schema[key], where)

    walk(values, _schema(), "")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def parse_profile(values: Mapping[str, Any], source: str = "profile") -> BaseModel:
    """Check the keys (:func:`check_keys`) and values of a profile; the typed profile.

    >>> import yaml
    >>> p = parse_profile(yaml.safe_load(profile_path("smoke").read_text()))
    >>> (p.roi.roi_size, p.train.lr, p.cv.n_splits)
    (64, 0.001, 2)
    """
    check_keys(values, source)
    try:
        typed = profile_model().model_validate(dict(values))
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "literal[")))
            msgs.append(f"{where or '(top)'}: {e['msg']} (got {e.get('input')!r})"
                        if e["type"] != "missing" else f"missing key {where!r}")
        raise ConfigError(f"{source}: invalid value: " + "; ".join(msgs)) from None
    _check_with_dataclasses(typed, values, source)
    return typed


def _check_with_dataclasses(typed: Any, values: Mapping[str, Any], source: str) -> None:
    """The checks the sections' dataclasses make, before any work: ``train`` and ``pretrain`` as a
    :class:`~mammo_lib.engines.training.TrainConfig`, the phantom sets as a :class:`~mammo_lib.data.phantom.PhantomConfig`."""
    from mammo_lib.data.phantom import PhantomConfig
    from mammo_lib.engines.training import TrainConfig

    train = {k: v for k, v in typed.train.model_dump().items() if k != "head" and v is not None}
    p = typed.pretrain
    pre = dict(train, trainable=p.trainable, epochs=p.epochs or train["epochs"], lr=p.lr or train["lr"])
    for where, kw in (("train", train), ("pretrain", pre)):
        try:
            TrainConfig(**kw)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: invalid value in {where!r}: {err}") from None
    if values.get("data_root"):
        return
    ph = typed.phantom
    common = {"seed": ph.seed if ph.seed is not None else typed.seed, "image_shape": tuple(ph.image_shape),
              **ph.config.model_dump(exclude_none=True)}
    for where in ("bcdr_like", "ddsm_like"):
        kw = {**common, **getattr(ph, where).model_dump(exclude_none=True)}
        try:
            PhantomConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: invalid value in 'phantom' ({where}): {err}") from None


def profile_defaults() -> dict[str, Any]:
    """The defaults of every key that has one (JSON-like: lists, not tuples), nested as the YAML."""
    model = profile_model()
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        if f.is_required():
            continue
        sub = _section_type(f.annotation)
        if sub is not None and f.default_factory is not None:
            out[name] = sub().model_dump(mode="json", exclude_none=True)
        elif f.default is not None:
            out[name] = f.get_default(call_default_factory=True)
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
    return out


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
    """A resolved profile: ``values`` is the profile as written with every default filled in
    (plain dicts and lists: ``cfg["arch"]``, ``cfg.get``, ``cfg.section``), ``typed`` the parsed
    pydantic model, ``raw`` the keys as written (what :meth:`digest` hashes).

    >>> cfg = load_config("smoke", honour_env=False)
    >>> cfg["roi_size"], cfg.section("train")["selection_metric"], cfg.typed.train.batch_size
    (64, 'accuracy', 8)
    """

    values: dict[str, Any]
    root: Path = field(default_factory=Path.cwd)
    raw: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.raw is None:
            self.raw = copy.deepcopy(self.values)
        self._typed: BaseModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the parsed model's classes are built at run time (profile_model): pickle (submitit,
        # multiprocessing) carries the profile itself and the copy parses it again on first use
        return {**self.__dict__, "_typed": None}

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    @property
    def typed(self) -> Any:
        """The profile as its pydantic model (:func:`profile_model`), parsed on first use."""
        if self._typed is None:
            self._typed = parse_profile(self.raw or {}, f"profile {self.values.get('name')!r}")
        return self._typed

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
        """A copy of one section, defaults filled in."""
        return copy.deepcopy(dict(self.values.get(key) or {}))

    def digest(self, *keys: str) -> str:
        """Short hash of the named sections (all when none) *as written* in the profile and
        overrides: keys caches and skip decisions, unchanged by a new default elsewhere."""
        raw = self.raw or {}
        sel = {k: raw.get(k) for k in keys} if keys else raw
        blob = json.dumps(sel, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.values)


def stage_key(cfg: Config, stage: str, *extra: Any) -> str:
    """Cache key of a stage's artefacts: the profile keys it depends on (:data:`STAGES`), the
    digest of its code (:func:`code_digest`) and ``extra`` (10 hex digits).

    >>> cfg = load_config("smoke", honour_env=False)
    >>> stage_key(cfg, "table1") == stage_key(cfg, "table1") != stage_key(cfg, "table1", "x")
    True
    """
    spec = STAGES.get(stage, DEFAULT_STAGE)
    top = [k for k in spec["keys"] if "." not in k]
    nested = {k: (cfg.raw or {}).get(k.split(".")[0], {}).get(k.split(".", 1)[1])
              for k in spec["keys"] if "." in k}
    settings: list[Any] = [cfg.digest(*top)] + ([nested] if any(v is not None for v in nested.values()) else [])
    blob = json.dumps([settings, code_digest(*spec["code"]), [str(e) for e in extra]],
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


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
    profile (a name or a YAML path) is used as given, whatever the environment says. Unknown keys
    and invalid values (in the file or the overrides) raise :class:`ConfigError` before any work.
    Relative paths in the profile resolve against the project root.

    >>> load_config("smoke", {"train": {"epochs": 1}}, honour_env=False)["train"]["epochs"]
    1
    """
    if not profile:
        profile = (os.environ.get(ENV_PROFILE) if honour_env else None) or "demo"
    with open(profile_path(profile)) as fh:
        values = yaml.safe_load(fh)
    if not isinstance(values, dict) or "name" not in values:
        raise ConfigError(f"profile {profile!r} is not a mapping with a 'name'")
    raw = _merge(values, overrides or {})
    typed = parse_profile(raw, f"profile {profile!r}")
    cfg = Config(values=_merge(profile_defaults(), raw), root=root or find_project_root(), raw=raw)
    cfg._typed = typed
    if cfg.name == "full" and cfg.uses_phantom:
        raise ConfigError("the full profile needs real data: pass --data-root (or data_root=...) "
                          "pointing at the folder described in mammo_lib/repro/profiles/full.yaml")
    return cfg


def data_layout() -> dict[str, Path]:
    """Folder of each real dataset relative to the data root, as the full profile reads it
    (``real_data`` of ``mammo_lib/repro/profiles/full.yaml``; README "Real data")."""
    rd = yaml.safe_load(profile_path("full").read_text())["real_data"]
    return {"CBIS-DDSM": Path(rd["cbis_ddsm"]["dicom_root"]),
            "BCDR-D01": Path(rd["bcdr_d01"]["outlines"]).parent,
            "BCDR-F01": Path(rd["bcdr_f01"]["outlines"]).parent}

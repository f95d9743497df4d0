"""What every notebook step shares at run time: opening a profile (pinned CPU threads and float
precision), the
training configuration from the profile, and the cached stage folder of a run (its key holds the
settings and the code of the stage: :func:`mammo_lib.repro.config.stage_key`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mammo_lib.repro.config import Config


def profile_precision(cfg: Config) -> str:
    """The profile's ``precision``; the default (float32) for a configuration that does not set it."""
    from mammo_lib.utils.options import PRECISION_NAMES

    return cfg.get("precision") or PRECISION_NAMES[0]


def pin_numerics(cfg: Config) -> int:
    """Set torch's CPU threads to the profile's ``threads`` (when set) and torch's default float
    dtype to its ``precision``; returns the thread count in use.

    CPU kernels sum in an order that depends on the thread count, so the same seed gives the
    same numbers only at the same count: the demo and smoke profiles pin 2, which makes their
    results the same on any machine (``docs/DECISIONS.md``, "Same numbers on every CPU"). The smoke
    profile computes in float64 so that another CPU's kernels cannot turn its tiny trainings into
    other draws (:mod:`mammo_lib.utils.precision`). Each notebook and each Table 2 job process calls
    it once after loading the profile.

    >>> from mammo_lib.repro.config import load_config
    >>> pin_numerics(load_config("demo", honour_env=False))
    2
    """
    import torch

    from mammo_lib.utils.precision import set_precision

    n = cfg.get("threads")
    if n:
        torch.set_num_threads(int(n))
    set_precision(profile_precision(cfg))
    return torch.get_num_threads()


def open_profile(profile: str = "", *, data_root: str = "", device: str = "") -> Config:
    """What each notebook's setup cell does: load the profile (``""``: ``$MAMMO_PROFILE``, else
    demo; ``data_root`` / ``device`` override it when not empty), pin the CPU threads
    (:func:`pin_numerics`: threads and float precision) and print what will run where.

    >>> cfg = open_profile("demo")  # doctest: +ELLIPSIS
    profile: demo  arch: small  ROI size: 224  device: cpu  CPU threads: 2  precision: float32
    results: ...
    """
    from mammo_lib.repro.config import load_config

    cfg = load_config(profile, {"data_root": data_root or None, "device": device or None})
    threads = pin_numerics(cfg)
    print(f"profile: {cfg.name}  arch: {cfg['arch']}  ROI size: {cfg['roi_size']}  device: {cfg['device']}  "
          f"CPU threads: {threads}  precision: {profile_precision(cfg)}")
    print(f"results: {cfg.results_dir}")
    return cfg


def train_config(cfg: Config, **overrides: Any):
    """A :class:`~mammo_lib.engines.training.TrainConfig` from the profile's ``train`` section."""
    from mammo_lib.engines.training import TrainConfig

    from dataclasses import fields

    t = cfg.section("train")
    # every TrainConfig field the profile sets is used (defaults are TrainConfig's, declared once)
    names = {f.name for f in fields(TrainConfig)} - {"seed", "device"}
    kw: dict[str, Any] = {k: v for k, v in t.items() if k in names}
    for k in ("omega", "augment"):
        if k in kw:
            kw[k] = tuple(kw[k])
    kw.update(seed=int(cfg["seed"]), device=cfg["device"])
    kw.update(overrides)
    return TrainConfig(**kw)


def run_dir(cfg: Config, stage: str, *extra: Any) -> Path:
    """``work_dir/<stage>-<key>``: the key holds the settings and the code the stage depends on
    (:func:`mammo_lib.repro.config.stage_key`), so a changed parameter or module gets a fresh folder
    and an unchanged one resumes."""
    from mammo_lib.repro.config import stage_key
    from mammo_lib.utils.precision import current

    want = profile_precision(cfg)
    if current() != want:  # a cache keyed by one precision must not be computed in another
        raise RuntimeError(f"profile {cfg.name!r} computes in {want} but this process computes in {current()}: "
                           f"call mammo_lib.repro.runtime.pin_numerics(cfg) (open_profile does) before its stages")
    return cfg.work_dir / f"{stage}-{stage_key(cfg, stage, *extra)}"

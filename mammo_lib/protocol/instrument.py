"""Table 2 as a calibrated instrument: beta chosen per fold, the dose-response, controls and a
calibration gate printed before any verdict (Sec. 5.1, Eq. 4-5; ``docs/DECISIONS.md``).

For every condition (the phantom's A: confounders independent of the label, as the paper assumes;
B: a calcification shortcut, P(calc | malignant) = 0.9, P(calc | benign) = 0.1 in training),
every initialisation (``generic``: the stand-in for ImageNet, ``ddsm``: pre-training on the
DDSM-like set) and every outer fold k:

1. the training part is split 80:20 (Sec. 3.1) into train / inner validation;
2. group 4 + classifier train from the cached frozen trunk (:mod:`mammo_lib.engines.trunk_cache`) for
   every beta of the grid (``("paper", 0)`` is fine-tuning; Eq. 4 form at 2, 8, 32, 128 and the
   attention-transfer reference form at 1000), all of them together on the same batches
   (:func:`~mammo_lib.engines.trunk_cache.train_heads`: one grouped step for the whole grid);
3. knowledge transfer's beta is the one with the best inner-validation accuracy (ties: lower
   validation loss, then smaller beta): chosen inside the fold, never from another fold;
4. the controls train together at a pre-specified grid point (``control_point``, the profile's
   ``cv.primary_beta``; without one, at knowledge transfer's choice, the best non-zero beta when
   that is 0): the nulls, a shuffled teacher (another case's mask map), a uniform and an
   off-centre (rolled) target, and the oracle target (the mask pooled to the grid);
5. the positive control (``positive``): fine-tuning and knowledge transfer at the same point with
   a classifier that reads only group 4's own channels (:data:`POSITIVE_HEAD`), trained together;
6. every model predicts the test fold under every rendering of the condition;
7. the oracle analysis (a condition with ``oracle_val``, B): the same grid runs select their
   epoch, and knowledge transfer its beta, on the neutral rendering of the inner validation cases
   (information a real study would not have: labelled "oracle"), fine-tuning alike
   (``<init>_nselft``, ``<init>_nselkt``); the training is the same, only the selected epoch differs.

The design's replicates (``docs/DECISIONS.md``): one :class:`Instrument` per trunk seed (its own
pre-trained trunks, :class:`InstrumentData`) and fold seed (``seed``: folds and inner splits);
``tags`` (``trunk_seed``, ``fold_seed``) go into every row and run key, the caller gives each its
own folder, and :func:`concat_results` / :meth:`InstrumentResult.select` put them together and
apart.

The calibration gate (:func:`calibration_gate`) asks whether the instrument can show an effect at
all: in condition B fine-tuning must reach >= 85 % in distribution and flip >= 25 % of its
predictions between the training-like and the reversed rendering, and a mask-only model >= 80 %.

>>> grid = beta_grid([0, 2], at=[1000])
>>> [(g.form, g.beta) for g in grid]
[('paper', 0.0), ('paper', 2.0), ('at', 1000.0)]
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout

from mammo_lib.utils.progress import tqdm
from mammo_lib.protocol.cross_validation import PER_FOLD_COLUMNS, PREDICTION_COLUMNS, CVResult, inner_split, make_folds
from mammo_lib.networks.activation import activation_distance
from mammo_lib.utils.digest import code_digest
from mammo_lib.metrics.classification import classification_metrics
from mammo_lib.networks.densenet import TRAINABLE_PREFIXES
from mammo_lib.protocol.stand_in import energy_share
from mammo_lib.utils.files import read_done_marker, save_torch, to_jsonable, write_json
from mammo_lib.engines.training import TrainConfig
from mammo_lib.engines.trunk_cache import TrunkCache, group4_maps_cached, predict_cached, train_heads

#: Gate thresholds (``docs/DECISIONS.md``).
GATE_FT_IN_DISTRIBUTION = 0.85
GATE_FT_FLIP_RATE = 0.25
GATE_MASK_ONLY = 0.80
#: Labels of the rows.
METHOD_LABELS = {"finetune": "fine-tune", "transfer": "knowledge transfer", "shuffled": "KT, shuffled teacher",
                 "oracle": "KT, oracle target", "uniform": "KT, uniform target", "rolled": "KT, off-centre (rolled) target",
                 "ownft": "positive control (own channels), fine-tune",
                 "ownkt": "positive control (own channels), knowledge transfer",
                 "nselft": "oracle selection (neutral inner split), fine-tune",
                 "nselkt": "oracle selection (neutral inner split), knowledge transfer"}
#: Control targets of Eq. 5 (:func:`mammo_lib.engines.trunk_cache.train_heads`): the nulls and the oracle.
CONTROL_TARGETS = ("shuffled", "oracle", "uniform", "rolled")
#: Nulls: targets that carry no case-specific mask location (``docs/DECISIONS.md``).
NULL_TARGETS = ("shuffled", "uniform", "rolled")
#: The classifier head of the positive control: it reads only group 4's own channels.
POSITIVE_HEAD = "gap_own"


@dataclass(frozen=True)
class BetaPoint:
    """One point of the dose-response: Eq. 4 ``form`` (``"paper"`` or ``"at"``) and ``beta``."""

    form: str
    beta: float

    @property
    def name(self) -> str:
        return f"{'at' if self.form == 'at' else 'b'}{self.beta:g}"

    @property
    def is_finetune(self) -> bool:
        return self.beta == 0


#: The default Eq. 4 (``paper``) beta grid and the attention-transfer reference values (``at``);
#: the profile's ``cv.beta_grid`` / ``cv.beta_grid_at`` default to these (docs/DECISIONS.md).
DEFAULT_BETA_GRID: tuple[float, ...] = (0, 2, 8, 32, 128)
DEFAULT_BETA_GRID_AT: tuple[float, ...] = (1000,)


def beta_grid(paper: Sequence[float] = DEFAULT_BETA_GRID, at: Sequence[float] = DEFAULT_BETA_GRID_AT) -> list[BetaPoint]:
    """The beta grid: Eq. 4 (``paper``) values and attention-transfer reference (``at``) values."""
    pts = [BetaPoint("paper", float(b)) for b in paper] + [BetaPoint("at", float(b)) for b in at]
    if not pts or any(p.beta < 0 for p in pts):
        raise ValueError(f"the beta grid must be non-empty with beta >= 0, got {pts}")
    if not any(p.is_finetune for p in pts):
        raise ValueError("the beta grid must contain 0 (fine-tuning, the reference of every comparison)")
    return pts


@dataclass(frozen=True)
class Condition:
    """A training distribution and the renderings its test folds are scored on.

    ``train``: rendering of the training and validation parts; ``tests``: ``{name: rendering}``;
    ``primary``: the test that Table 2 reports; ``flip_pair``: two tests whose predictions are
    compared (share of test cases whose prediction differs: reliance on the confounder)."""

    name: str
    description: str
    train: str
    tests: Mapping[str, str]
    primary: str
    flip_pair: Optional[tuple[str, str]] = None
    in_distribution: Optional[str] = None
    #: A rendering of the inner validation cases on which the oracle analysis selects the epoch
    #: of every grid run and knowledge transfer's beta (neutral: no shortcut); ``None``: none.
    oracle_val: Optional[str] = None


#: The phantom's two conditions. Renderings are the phantom's: ``train`` (``cases.csv``, the
#: shortcut probabilities), ``shifted`` (``cases_shifted.csv``, the "test" probabilities: neutral),
#: ``reversed`` and ``neutral2`` (extra renderings, ``cases_<name>.csv``).
PHANTOM_CONDITIONS = (
    Condition("A", "confounders independent of the label (the paper's setting)", train="shifted",
              tests={"in distribution": "shifted", "another draw": "neutral2"}, primary="in distribution",
              flip_pair=("in distribution", "another draw"), in_distribution="in distribution"),
    Condition("B", "calcification shortcut in training: P(calc | malignant) 0.9, benign 0.1",
              train="train", tests={"in distribution": "train", "neutral": "shifted", "reversed": "reversed"},
              primary="neutral", flip_pair=("in distribution", "reversed"), in_distribution="in distribution",
              oracle_val="shifted"),
)
#: Real data: one condition, the test folds of the data as they are.
REAL_CONDITION = Condition("real", "real data as it is", train="data", tests={"test": "data"}, primary="test")


CODE = code_digest("protocol.instrument", "engines.trunk_cache", "engines.training", "networks.activation",
                   "networks.densenet")


def _choose(rows: pd.DataFrame) -> pd.Series:
    """Best inner-validation accuracy, ties lower validation loss, then smaller beta (form paper first)."""
    order = rows.assign(_at=(rows["form"] == "at").astype(int)).sort_values(
        ["val_accuracy", "val_loss", "beta", "_at"], ascending=[False, True, True, True], kind="mergesort")
    return order.iloc[0]


@dataclass
class InstrumentResult:
    """All runs (``runs``: one row per condition, init, fold, run), pooled test predictions
    (``predictions``), and the per-fold beta choice (``choices``)."""

    runs: pd.DataFrame
    predictions: pd.DataFrame
    choices: pd.DataFrame
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    # ---------------------------------------------------------------- tables
    def dose_response(self) -> pd.DataFrame:
        """Mean over folds of every grid point's metrics, per condition and initialisation."""
        g = self.runs[self.runs["run"].str.startswith("grid:")]
        cols = [c for c in g.columns if c.startswith(("acc ", "flip", "d4", "energy")) or c in ("val_accuracy",)]
        out = (g.groupby(["condition", "init", "form", "beta"], sort=False)[cols].mean().reset_index())
        chosen = self.choices.groupby(["condition", "init", "form", "beta"]).size().rename("times chosen")
        out = out.merge(chosen.reset_index(), on=["condition", "init", "form", "beta"], how="left")
        out["times chosen"] = out["times chosen"].fillna(0).astype(int)
        return out

    def select(self, **tags: Any) -> "InstrumentResult":
        """The rows of one replicate of the design, e.g. ``select(trunk_seed=0, fold_seed=0)``
        (columns written by :class:`Instrument`'s ``tags``); a tag a frame lacks is ignored."""
        def keep(df: pd.DataFrame) -> pd.DataFrame:
            m = np.ones(len(df), bool)
            for k, v in tags.items():
                if k in df.columns:
                    m &= (df[k] == v).to_numpy()
            return df[m].reset_index(drop=True)

        return InstrumentResult(keep(self.runs), keep(self.predictions), keep(self.choices), self.conditions)

    def per_fold(self, condition: str) -> pd.DataFrame:
        """Table 2's per-fold rows (``protocol.PER_FOLD_COLUMNS``) of one condition: specs
        ``<init>_finetune``, ``<init>_transfer``, ``<init>_shuffled``, ``<init>_oracle``, ``mask_only``."""
        r = self.runs[(self.runs["condition"] == condition) & (self.runs["spec"] != "")]
        return r[list(PER_FOLD_COLUMNS)].reset_index(drop=True)

    def cv_result(self, condition: str) -> CVResult:
        """A :class:`~mammo_lib.protocol.cross_validation.CVResult` of one condition (primary test rendering)."""
        pf = self.per_fold(condition)
        pr = self.predictions[(self.predictions["condition"] == condition)
                              & (self.predictions["spec"].isin(pf["spec"].unique()))
                              & (self.predictions["primary"])]
        return CVResult(per_fold=pf, predictions=pr[list(PREDICTION_COLUMNS)].reset_index(drop=True),
                        folds=pd.DataFrame())


def calibration_gate(result: InstrumentResult, condition: str = "B") -> pd.DataFrame:
    """The gate, one row per initialisation plus the mask-only model: measured value, threshold,
    pass. Computed on ``condition`` (B: the shortcut)."""
    r = result.runs[result.runs["condition"] == condition]
    if r.empty:
        return pd.DataFrame(columns=["check", "init", "value", "threshold", "passes"])
    rows = []
    for init, g in r[r["spec"].str.endswith("_finetune")].groupby("init", sort=False):
        acc = float(g["acc in distribution"].mean())
        flip = float(g["flip rate"].mean())
        rows.append({"check": "fine-tune (beta 0), in-distribution accuracy", "init": init, "value": acc,
                     "threshold": f">= {GATE_FT_IN_DISTRIBUTION:.2f}", "passes": acc >= GATE_FT_IN_DISTRIBUTION})
        rows.append({"check": "fine-tune (beta 0), predictions flipped by the reversed rendering", "init": init,
                     "value": flip, "threshold": f">= {GATE_FT_FLIP_RATE:.2f}", "passes": flip >= GATE_FT_FLIP_RATE})
    m = r[r["spec"] == "mask_only"]
    if len(m):
        acc = float(m["accuracy"].mean())
        rows.append({"check": "mask-only model, accuracy", "init": "", "value": acc,
                     "threshold": f">= {GATE_MASK_ONLY:.2f}", "passes": acc >= GATE_MASK_ONLY})
    return pd.DataFrame(rows)


def gate_passes(gate: pd.DataFrame, init: str) -> bool:
    """Whether the gate holds for ``init`` (its own rows and the mask-only row)."""
    rows = gate[(gate["init"] == init) | (gate["init"] == "")]
    return bool(len(rows)) and bool(rows["passes"].all())


# -------------------------------------------------------------------------------- running
@dataclass
class InstrumentData:
    """What the instrument trains on: per initialisation a factory of its initial network and
    per rendering a :class:`TrunkCache` made with that network; the cross-validation labels and
    patient groups (one order for every rendering), and a mask-only cache."""

    inits: Mapping[str, Callable[[int], torch.nn.Module]]
    caches: Mapping[str, Mapping[str, TrunkCache]]
    labels: np.ndarray
    groups: Optional[np.ndarray]
    ids: list[str]
    masks: np.ndarray
    mask_cache: Optional[TrunkCache] = None
    mask_init: Optional[Callable[[int], torch.nn.Module]] = None
    #: per initialisation, the same network with the positive control's head (:data:`POSITIVE_HEAD`)
    positive_inits: Optional[Mapping[str, Callable[[int], torch.nn.Module]]] = None


def _metrics_row(prob: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    m = classification_metrics(y, prob[:, 1])
    return {"accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "auc": m["auc"], "tn": m["tn"], "fp": m["fp"], "fn": m["fn"], "tp": m["tp"]}


def _score(model: torch.nn.Module, cache: Mapping[str, TrunkCache], labels: np.ndarray, masks: np.ndarray,
           cond: Condition, te: np.ndarray, tcfg: TrainConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Accuracy per test rendering, flip rate, and on the primary test d^4 (Eq. 4, to the
    teacher's map) and the energy share on the mass."""
    out: dict[str, Any] = {}
    probs: dict[str, np.ndarray] = {}
    y = labels[te]
    run = {"device": tcfg.device, "amp": tcfg.amp, "channels_last": tcfg.channels_last}
    for name, rendering in cond.tests.items():
        p = predict_cached(model, cache[rendering].subset(te), **run)
        probs[name] = p
        out[f"acc {name}"] = float((p.argmax(1) == y).mean())
    if cond.flip_pair is not None:
        a, b = cond.flip_pair
        out["flip rate"] = float((probs[a].argmax(1) != probs[b].argmax(1)).mean())
    c = cache[cond.tests[cond.primary]].subset(te)
    maps = group4_maps_cached(model, c, **run)
    d4 = activation_distance(c.teacher_maps[:, 0].double(), torch.from_numpy(maps).double())
    out["d4 (test)"] = float(d4.mean())
    es = energy_share(maps, masks[te])
    out["energy share on mass"] = float(es["energy_share"].mean())
    out["mass cell share"] = float(es["mass_area"].mean())
    return out, probs


class RunBusy(RuntimeError):
    """A run is being trained by another process and the caller asked not to wait (``wait=False``)."""


@dataclass
class UnitRows:
    """What one unit of the instrument (a condition, an initialisation and a fold) recorded: rows of
    ``InstrumentResult.runs``, prediction frames, the beta choice, how many runs it trained here,
    and the names of the runs not done (filled only when reading back, ``mode="read"``)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    preds: list[pd.DataFrame] = field(default_factory=list)
    choices: list[dict[str, Any]] = field(default_factory=list)
    trained: int = 0
    missing: list[str] = field(default_factory=list)


class Instrument:
    """The instrument's runs as units that can run on their own (``docs/DECISIONS.md``, "Table 2
    as independent jobs"): :meth:`unit` runs (or reads back) the beta grid, the choice and the
    controls of one (condition, init, fold), :meth:`mask_unit` the mask-only model of one
    (condition, fold), :meth:`merge` puts units together into an :class:`InstrumentResult`.

    Every run folder is guarded by a ``filelock.FileLock`` on ``<run folder>.lock``: a second
    process waits (``wait=True``) or gets :class:`RunBusy`, and re-reads ``result.json`` once it
    holds the lock, so a run is never trained twice.

    >>> # inst = Instrument(data, conditions, out_dir, cfg, grid=beta_grid([0, 8]), n_splits=2)
    >>> # res = inst.merge([inst.unit(c, i, k) for c, i, k in inst.units()])
    """

    def __init__(self, data: InstrumentData, conditions: Sequence[Condition], out_dir: str | Path,
                 cfg: TrainConfig, *, grid: Sequence[BetaPoint], n_splits: int = 5, seed: int = 0,
                 val_fraction: float = 0.2, shuffle_seed: int = 0, tags: Optional[Mapping[str, Any]] = None,
                 controls: Sequence[str] = ("shuffled", "oracle"), control_point: Optional[BetaPoint] = None,
                 positive: bool = False) -> None:
        self.data, self.conditions, self.out, self.cfg = data, tuple(conditions), Path(out_dir), cfg
        self.grid, self.n_splits, self.seed, self.shuffle_seed = list(grid), n_splits, seed, shuffle_seed
        self.val_fraction = val_fraction
        self.tags = dict(tags or {})
        bad = [c for c in controls if c not in CONTROL_TARGETS]
        if bad or len(set(controls)) != len(controls):
            raise ValueError(f"controls must be distinct names from {CONTROL_TARGETS}, got {list(controls)}")
        self.controls = tuple(controls)
        if control_point is not None and control_point not in self.grid:
            raise ValueError(f"control_point {control_point} is not in the grid {self.grid}")
        self.control_point = control_point
        if positive and (control_point is None or not getattr(data, "positive_inits", None)):
            raise ValueError("the positive control needs a control_point and InstrumentData.positive_inits")
        self.positive = positive
        self.folds = make_folds(data.labels, data.groups, n_splits=n_splits, seed=seed)
        self.splits = {k: self._split(k) for k in range(n_splits)}

    def _split(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold k's train / inner validation / test positions (80:20 inner split, seed + k)."""
        data = self.data
        tr_all, te = np.flatnonzero(self.folds != k), np.flatnonzero(self.folds == k)
        a, b = inner_split(data.labels[tr_all], None if data.groups is None else data.groups[tr_all],
                           val_fraction=self.val_fraction, seed=self.seed + k)
        return tr_all[a], tr_all[b], te

    @property
    def has_mask(self) -> bool:
        return self.data.mask_cache is not None and self.data.mask_init is not None

    def units(self) -> list[tuple[Condition, str, int]]:
        """The (condition, init, fold) units in :func:`run_instrument`'s order."""
        return [(c, i, k) for c in self.conditions for i in self.data.inits for k in range(self.n_splits)]

    def n_runs(self) -> int:
        """Number of runs of the whole instrument (the grid, the controls and the positive control per
        unit, mask-only models)."""
        return len(self.units()) * self.runs_per_unit() + (len(self.conditions) * self.n_splits if self.has_mask else 0)

    def runs_per_unit(self) -> int:
        """Runs of one (condition, init, fold) unit: the grid, the controls, the positive control."""
        return len(self.grid) + len(self.controls) + (2 if self.positive else 0)

    def run_path(self, cond: Condition, init: str, k: int, run: str) -> Path:
        """The folder of one run (``result.json``, ``head.pt``; its lock is ``<folder>.lock``)."""
        return self.out / cond.name / init / f"fold_{k}" / run.replace(":", "_")

    def _fit(self, out: UnitRows, cond: Condition, init: str, k: int, members: Sequence[tuple[str, TrainConfig, str, str]],
             factory: Callable[[int], torch.nn.Module], cache: Mapping[str, TrunkCache], score_cond: Condition, *,
             group: Optional[str], mode: str, wait: bool, bar: Any,
             oracle: bool = False) -> list[Optional[dict[str, Any]]]:
        """Read back runs ``members`` (``(run, cfg, target, spec)``) with the same keys, or
        (``mode="train"``) train those not done, together (:func:`~mammo_lib.engines.trunk_cache.train_heads`),
        under one lock: ``<run folder>.lock`` for a single run, ``<fold folder>/<group>.lock`` for a
        group (the beta grid, the controls). A run's key names the runs it trained with, so its
        numbers never depend on which job trained it. ``oracle``: also select every run's epoch on
        ``score_cond.oracle_val`` (step 7), saved beside the run as ``"oracle"`` (row, predictions)
        and ``head_oracle.pt``."""
        data = self.data
        tr, va, te = self.splits[k]
        names = [m[0] for m in members]
        dirs = [self.run_path(cond, init, k, run) for run in names]
        cache_digest = _cache_digest(cache, tr)  # sums over the whole cache: once per group
        wants, keys = [], []
        for run, tcfg, target, _ in members:
            key = {"cfg": tcfg.to_dict(), "target": target, "condition": cond.name, "init": init, "fold": k,
                   "test": [data.ids[i] for i in te], "val": [data.ids[i] for i in va], "seed": self.seed,
                   "shuffle_seed": self.shuffle_seed, "code": CODE, "cache": cache_digest,
                   "trained_with": names, **({"tags": self.tags} if self.tags else {}),
                   **({"oracle_val": score_cond.oracle_val} if oracle else {})}
            keys.append(key)
            wants.append(to_jsonable(key))

        def read_back(i: int) -> Optional[dict[str, Any]]:
            done = dirs[i] / "result.json"
            if done.exists():
                saved = read_done_marker(done, "run result")  # damaged: warned, None, trained again
                if saved is not None and saved.get("key") == wants[i]:
                    return saved
            return None

        def finish(saved: list[Optional[dict[str, Any]]]) -> list[Optional[dict[str, Any]]]:
            if bar is not None:
                bar.update(sum(sv is not None for sv in saved))
            return saved

        saved = [read_back(i) for i in range(len(members))]
        if all(sv is not None for sv in saved) or mode == "read":
            out.missing += [n for n, sv in zip(names, saved) if sv is None]
            return finish(saved)
        lock_path = dirs[0] if group is None else dirs[0].parent / group
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path) + ".lock")
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout as err:
            raise RunBusy(f"{lock_path}: being trained by another process (lock {lock.lock_file})") from err
        try:
            saved = [read_back(i) for i in range(len(members))]  # another process may have finished them
            todo = [i for i, sv in enumerate(saved) if sv is None]
            if not todo:
                return finish(saved)
            models = [factory(m[1].seed) for m in members]
            also = cache[score_cond.oracle_val].subset(va) if oracle else None
            results = train_heads(models, cache[score_cond.train].subset(tr), cache[score_cond.train].subset(va),
                                  [m[1] for m in members], targets=[m[2] for m in members],
                                  shuffle_seed=self.shuffle_seed, select_also=also)
            prefixes = TRAINABLE_PREFIXES["group4+classifier"]
            for i in todo:  # runs already done (an interrupted group) were trained the same way: kept
                run, tcfg, target, spec = members[i]
                res = results[i]

                def scored(model: torch.nn.Module, acc: float, loss: float, epoch: int) -> tuple[dict, dict]:
                    scores, probs = _score(model, cache, data.labels, data.masks, score_cond, te, tcfg)
                    row = {"condition": cond.name, "init": init, **self.tags, "fold": k, "run": run, "spec": spec,
                           "target": target,
                           "form": tcfg.distance_form, "beta": tcfg.beta if tcfg.method == "transfer" else 0.0,
                           "val_accuracy": acc, "val_loss": loss,
                           "best_epoch": epoch, "epochs": len(res.history), "wall_s": res.wall_s / len(members),
                           "n_train": len(tr), "n_val": len(va), "n_test": len(te), **scores,
                           **_metrics_row(probs[score_cond.primary], data.labels[te])}
                    return row, {name: p[:, 1].tolist() for name, p in probs.items()}

                row, pred = scored(res.model, res.best_val_accuracy, res.best_val_loss, res.best_epoch)
                head = {k2: v for k2, v in res.model.state_dict().items() if k2.startswith(prefixes)}
                save_torch(head, dirs[i] / "head.pt")
                sv = {"key": keys[i], "row": row, "prob_malignant": pred}
                if res.also is not None:  # the oracle's epoch: the same network, another selected state
                    res.model.load_state_dict(res.also.state, strict=False)
                    o_row, o_pred = scored(res.model, res.also.val_accuracy, res.also.val_loss, res.also.best_epoch)
                    save_torch({k2: v for k2, v in res.also.state.items() if k2.startswith(prefixes)},
                               dirs[i] / "head_oracle.pt")
                    sv["oracle"] = {"row": o_row, "prob_malignant": o_pred}
                write_json(dirs[i] / "result.json", sv)
                out.trained += 1
                saved[i] = to_jsonable(sv)
            return finish(saved)
        finally:
            lock.release()

    def _record(self, out: UnitRows, saved: dict[str, Any], cond: Condition, te: np.ndarray, **rename: str) -> None:
        """Add a run's row and predictions; ``rename`` (spec, run) files a grid run under a Table 2 name."""
        data = self.data
        row = {**saved["row"], **rename}
        out.runs.append(row)
        for name, p in saved["prob_malignant"].items():
            p = np.asarray(p)
            out.preds.append(pd.DataFrame({"condition": cond.name, "spec": row["spec"], "run": row["run"],
                                           "init": row["init"], **self.tags, "fold": row["fold"], "test": name,
                                           "primary": name == cond.primary, "case_id": [data.ids[i] for i in te],
                                           "label": data.labels[te], "prob_malignant": p,
                                           "pred": (p >= 0.5).astype(np.int64)}))

    def unit(self, cond: Condition, init: str, k: int, *, finetune_only: bool = False, mode: str = "train",
             wait: bool = True, bar: Any = None) -> UnitRows:
        """One (condition, init, fold): the beta grid, knowledge transfer's choice and the controls
        (module docstring, steps 1-5); ``finetune_only``: the grid only, and only its beta = 0
        point recorded (the grid always trains together, so beta = 0 has the same numbers whichever
        job trained it). ``mode="read"`` trains nothing: runs not done are listed in ``missing``."""
        if mode not in ("train", "read"):
            raise ValueError(f"mode must be 'train' or 'read', got {mode!r}")
        data, out = self.data, UnitRows()
        tr, va, te = self.splits[k]
        base = self.cfg.replace(seed=self.cfg.seed + k, omega=(4,), trainable="group4+classifier", input="roi")
        grid_saved = {}
        members = []
        for pt in self.grid:  # the whole grid trains together, also for a fine-tune-only job
            tcfg = base.replace(method="finetune" if pt.is_finetune else "transfer", beta=pt.beta,
                                distance_form=pt.form)
            members.append((f"grid:{pt.name}", tcfg, "teacher", f"{init}_finetune" if pt.is_finetune else ""))
        oracle = cond.oracle_val is not None and cond.oracle_val in data.caches[init]
        saved_all = self._fit(out, cond, init, k, members, data.inits[init], data.caches[init], cond,
                              group="grid", mode=mode, wait=wait, bar=bar, oracle=oracle)
        for pt, saved in zip(self.grid, saved_all):
            if saved is None or (finetune_only and not pt.is_finetune):
                continue
            self._record(out, saved, cond, te)
            grid_saved[saved["row"]["run"]] = saved
        if finetune_only or len(grid_saved) < len(self.grid):
            if not finetune_only:
                out.missing += ["transfer"] + [f"control:{t}" for t in self.controls] + (
                    ["positive"] if self.positive else [])
            return out
        g = pd.DataFrame([sv["row"] for sv in grid_saved.values()])
        best = _choose(g)
        if self.control_point is not None:  # pre-specified (docs/DECISIONS.md): the primary beta
            ctrl = {"form": self.control_point.form, "beta": self.control_point.beta,
                    "run": f"grid:{self.control_point.name}"}
        else:  # knowledge transfer's choice, the best non-zero beta when that is 0
            nz = g[g["beta"] > 0]
            ctrl = best if best["beta"] > 0 or nz.empty else _choose(nz)
        tcfg = base.replace(method="transfer", beta=float(ctrl["beta"]), distance_form=str(ctrl["form"]))
        point = str(ctrl["run"]).split(":")[1]
        members = [(f"control:{target}:{point}", tcfg, target, f"{init}_{target}") for target in self.controls]
        controls = self._fit(out, cond, init, k, members, data.inits[init], data.caches[init], cond,
                             group="controls", mode=mode, wait=wait, bar=bar) if members else []
        positive: list[Optional[dict[str, Any]]] = []
        if self.positive:  # the same two arms with a classifier on group 4's own channels only
            members = [("positive:b0", base.replace(method="finetune", beta=0.0), "teacher", f"{init}_ownft"),
                       (f"positive:{point}", tcfg, "teacher", f"{init}_ownkt")]
            positive = self._fit(out, cond, init, k, members, data.positive_inits[init], data.caches[init], cond,
                                 group="positive", mode=mode, wait=wait, bar=bar)
        if any(sv is None for sv in controls) or any(sv is None for sv in positive):
            out.missing.append("transfer")  # read back without its controls: the transfer job is not done
            return out
        choice = {"condition": cond.name, "init": init, **self.tags, "fold": k, "form": best["form"],
                  "beta": best["beta"], "val_accuracy": best["val_accuracy"],
                  "control_form": ctrl["form"], "control_beta": ctrl["beta"]}
        if oracle:  # step 7: both arms at the epoch, and KT at the beta, best on the neutral inner split
            o = {r: sv["oracle"] for r, sv in grid_saved.items()}
            o_best = _choose(pd.DataFrame([v["row"] for v in o.values()]))
            ft_run = f"grid:{next(p for p in self.grid if p.is_finetune).name}"
            choice.update({"oracle_form": o_best["form"], "oracle_beta": o_best["beta"],
                           "oracle_val_accuracy": o_best["val_accuracy"]})
        out.choices.append(choice)
        # knowledge transfer = the chosen grid point, filed again under the Table 2 spec name
        self._record(out, grid_saved[best["run"]], cond, te, spec=f"{init}_transfer", run=f"transfer({best['run']})")
        for saved in [*controls, *positive]:
            self._record(out, saved, cond, te)
        if oracle:
            self._record(out, o[ft_run], cond, te, spec=f"{init}_nselft", run=f"oracle-selected({ft_run})")
            self._record(out, o[o_best["run"]], cond, te, spec=f"{init}_nselkt",
                         run=f"oracle-selected({o_best['run']})")
        return out

    def mask_unit(self, cond: Condition, k: int, *, mode: str = "train", wait: bool = True, bar: Any = None) -> UnitRows:
        """The mask-only model of one (condition, fold) (Fig. 4(b)); ``mode`` as in :meth:`unit`."""
        if not self.has_mask:
            raise ValueError("this instrument has no mask-only cache (InstrumentData.mask_cache)")
        if mode not in ("train", "read"):
            raise ValueError(f"mode must be 'train' or 'read', got {mode!r}")
        out = UnitRows()
        tr, va, te = self.splits[k]
        mcond = Condition(cond.name, "mask only", train="mask", tests={cond.primary: "mask"}, primary=cond.primary)
        tcfg = self.cfg.replace(seed=self.cfg.seed + k, method="finetune", beta=0.0, omega=(4,))
        saved = self._fit(out, cond, "mask", k, [("mask_only", tcfg, "teacher", "mask_only")], self.data.mask_init,
                          {"mask": self.data.mask_cache}, mcond, group=None, mode=mode, wait=wait, bar=bar)[0]
        if saved is not None:
            self._record(out, saved, mcond, te)
        return out

    def merge(self, parts: Sequence[UnitRows]) -> InstrumentResult:
        """Units (in :meth:`units` order, then the mask-only units) into one :class:`InstrumentResult`."""
        runs = [r for p in parts for r in p.runs]
        preds = [f for p in parts for f in p.preds]
        choices = [c for p in parts for c in p.choices]
        runs_df = pd.DataFrame(runs)
        if runs_df.empty:
            runs_df = pd.DataFrame(columns=list(dict.fromkeys(["condition", "init", *self.tags, "fold", "run", "spec",
                                                               "target", "form", "beta", *PER_FOLD_COLUMNS])))
        for c in PER_FOLD_COLUMNS:
            if c not in runs_df:
                runs_df[c] = {"init_used": runs_df["init"], "seed": self.seed,
                              "method": runs_df["spec"].str.split("_").str[-1],
                              "input": np.where(runs_df["spec"] == "mask_only", "mask", "roi")}.get(c, np.nan)
        predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(
            columns=["condition", "spec", "run", "init", *self.tags, "fold", "test", "primary", "case_id", "label",
                     "prob_malignant", "pred"])
        return InstrumentResult(runs=runs_df, predictions=predictions, choices=pd.DataFrame(choices),
                                conditions=self.conditions)


def run_instrument(data: InstrumentData, conditions: Sequence[Condition], out_dir: str | Path,
                   cfg: TrainConfig, *, grid: Sequence[BetaPoint], n_splits: int = 5, seed: int = 0,
                   val_fraction: float = 0.2, shuffle_seed: int = 0, folds_to_run: Optional[Sequence[int]] = None,
                   progress: bool = True, **design: Any) -> InstrumentResult:
    """Run the whole instrument (module docstring), resumable per (condition, init, fold, run):
    each run writes ``result.json`` (metrics, predictions and a key of settings and code) and the
    selected head state ``head.pt`` atomically, under a lock; a rerun with the same key reads them
    back. ``cfg`` gives epochs, batch size, optimiser, augmentation and seed (``cfg.seed + k`` in
    fold k). Every unit of :class:`Instrument` in sequence, then the merge. ``folds_to_run``
    (default all ``n_splits``) runs only those outer folds of the same split, e.g. ``[0]`` for a
    timing run; each fold's runs are the same as in a full run. ``design``: :class:`Instrument`'s
    ``tags``, ``controls``, ``control_point`` and ``positive``.
    """
    inst = Instrument(data, conditions, out_dir, cfg, grid=grid, n_splits=n_splits, seed=seed,
                      val_fraction=val_fraction, shuffle_seed=shuffle_seed, **design)
    ks = list(range(n_splits)) if folds_to_run is None else [int(k) for k in folds_to_run]
    if not ks or any(k < 0 or k >= n_splits for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"folds_to_run must be distinct folds in [0, {n_splits}), got {folds_to_run!r}")
    units = [u for u in inst.units() if u[2] in ks]
    n_runs = len(units) * inst.runs_per_unit() + (len(inst.conditions) * len(ks) if inst.has_mask else 0)
    bar = tqdm(total=n_runs, disable=not progress, desc="Table 2 instrument (runs)")
    parts = [inst.unit(c, i, k, bar=bar) for c, i, k in units]
    if inst.has_mask:
        parts += [inst.mask_unit(c, k, bar=bar) for c in inst.conditions for k in ks]
    bar.close()
    return inst.merge(parts)


def concat_results(results: Sequence[InstrumentResult]) -> InstrumentResult:
    """Several replicates of the design (each with its ``tags`` columns) as one result, in order."""
    if not results:
        raise ValueError("concat_results needs at least one result")

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)] or frames[:1]
        return pd.concat(frames, ignore_index=True)

    return InstrumentResult(cat([r.runs for r in results]), cat([r.predictions for r in results]),
                            cat([r.choices for r in results]), results[0].conditions)


def _cache_digest(cache: Mapping[str, TrunkCache], idx: np.ndarray) -> str:
    """A cheap fingerprint of the cached features (a few sums), so a changed trunk retrains."""
    h = hashlib.sha256()
    for name in sorted(cache):
        f = cache[name].features
        h.update(name.encode())
        h.update(np.float64(f.double().sum()).tobytes())
        h.update(np.float64(cache[name].teacher_maps.double().sum()).tobytes())
    return h.hexdigest()[:16]


def load_head(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a head state written by :func:`run_instrument` into ``model`` (same initialisation)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    missing = model.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path}: unexpected keys {missing.unexpected_keys[:5]}")
    return model


__all__ = ["BetaPoint", "beta_grid", "DEFAULT_BETA_GRID", "DEFAULT_BETA_GRID_AT", "Condition", "PHANTOM_CONDITIONS", "REAL_CONDITION", "InstrumentData",
           "InstrumentResult", "Instrument", "UnitRows", "RunBusy", "run_instrument", "calibration_gate", "gate_passes",
           "load_head", "METHOD_LABELS", "CONTROL_TARGETS", "NULL_TARGETS", "POSITIVE_HEAD", "concat_results"]

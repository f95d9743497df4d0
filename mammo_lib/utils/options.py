"""Names and bounds that the command line, the profiles and the library share, in one place and
importable without NumPy or torch (so that ``mammo-kt --help`` answers at once). The modules that
use them (:mod:`mammo_lib.data.images`, :mod:`mammo_lib.data.roi`, :mod:`mammo_lib.explain.eq6`,
:mod:`mammo_lib.repro.config`, :mod:`mammo_lib.cli`) import them from here: one source for each bound.
"""
from __future__ import annotations

#: The ``intensity`` values of :func:`mammo_lib.data.images.to_unit_float`.
INTENSITY_MODES: tuple[str, ...] = ("minmax", "percentile", "dtype")
#: The library's one default intensity scaling (docs/DECISIONS.md, "Profiles"): robust percentile
#: scaling, since ``minmax`` leaks bright calcifications into the mass's intensity (see
#: :func:`mammo_lib.data.images.to_unit_float`). Every shipped profile sets its own.
DEFAULT_INTENSITY = "percentile"

#: Smallest ROI side :func:`mammo_lib.data.preprocess.preprocess` accepts: both architectures
#: (``mammo_lib.networks.densenet.ARCHS``, torchvision DenseNet) halve the map 5 times (stem conv, max-pool,
#: 3 transitions), so 2**5 = 32 px is the smallest side that still leaves a whole group-4 pixel
#: (1 x 1, Eq. 3 map) with every halving exact; below 29 px the last transition has nothing to pool.
MIN_ROI_SIZE = 2 ** 5
#: Largest ROI side accepted (docs/DECISIONS.md, "Data-side fault cases"): 2048 px is nine times the
#: paper's 224 (Sec. 3.2) and wider than most masses' whole context in a full-field mammogram;
#: the ROI cache holds 5 bytes a pixel (float32 image, uint8 mask), 20 MiB a case at 2048 and
#: 47 GiB a case at 100000, and DenseNet121's activations grow with the square of the side.
MAX_ROI_SIZE = 2 ** 11

#: ``background_rule`` values of :func:`mammo_lib.explain.eq6.lesion_background` (Sec. 4.2,
#: ``docs/DECISIONS.md``): ``"soft"`` and ``"otsu"`` split the ROI into complementary parts
#: (``Lesion + Background = ROI``); ``"subtract_clip"`` is the former rule (variance stretched to the
#: ROI's range, Background the clipped difference); ``"difference"`` is its legacy variant without
#: rescaling.
BACKGROUND_RULES: tuple[str, ...] = ("soft", "otsu", "subtract_clip", "difference")
#: Former names of rules, accepted and recorded under the canonical name.
BACKGROUND_RULE_ALIASES: dict[str, str] = {"unit_difference": "subtract_clip"}
#: The rule used wherever none is given (the explanation module, the CLI, the pipeline's callers and
#: figures). The only place to change it. The complementary ``"soft"`` split (Sec. 4.2: Lesion and
#: Background "divide the ROI into mass area and no-mass area"; ``docs/DECISIONS.md``), fixed in
#: advance rather than picked by a pixel-change score: the sanity table
#: (:func:`mammo_lib.explain.sanity.explanation_sanity`) reports how each rule fares, and while no rule passes
#: the explanation is not presented as evidence (``results/REPORT.md``).
DEFAULT_BACKGROUND_RULE: str = "soft"

#: Torch device types the library trains and explains on (:func:`mammo_lib.engines.training.check_device`).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")

#: The float precisions a run may compute in (the profile's ``precision``;
#: :mod:`mammo_lib.utils.precision`), the default first.
PRECISION_NAMES: tuple[str, ...] = ("float32", "float64")


def parse_device(device: object) -> str:
    """``device`` as a torch device string of a type in :data:`DEVICE_TYPES` (``cpu``, ``cuda``,
    ``cuda:N``), checked by its spelling only (:func:`mammo_lib.engines.training.check_device` also checks
    that the machine has it); ``ValueError`` otherwise.

    >>> parse_device("cuda:1")
    'cuda:1'
    """
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    text = device.strip().lower()
    kind, _, index = text.partition(":")
    if kind not in DEVICE_TYPES or (index and (not index.isdigit() or kind != "cuda")):
        raise ValueError(f"{device!r} is not a device: use cpu, cuda or cuda:N")
    return text

"""Synthetic mammography phantom: the package's default data set (docs/DECISIONS.md).

No real mammograms can be shipped, so the default run uses full-field phantom images with a
known ground truth:

- a breast (half-ellipse against the chest wall, black background) filled with a power-law
  parenchymal texture (power spectrum ``1/f^beta``, beta about 3, as measured on mammograms);
- one mass per image: *benign* = round/oval, circumscribed (sharp sigmoid margin), *malignant* =
  irregular outline (low-frequency radius noise), ill-defined margin and, mostly, spicules.
  Sizes and contrasts come from overlapping distributions, so shape and margin are the signal;
- confounders inside the mass-centred ROI window (Sec. 3.2) but outside the mass:
  micro-calcification clusters and dense-tissue patches, drawn with ``P(confounder | label,
  split)`` so that their correlation with the label reverses between training and test data.
  This is the paper's failure mode (Sec. 5, Fig. 7: the fine-tuned model looks at calcium or
  dense tissue instead of the mass), here with a pixel-exact confounder label map.

Two sets (:func:`generate_phantom`): ``bcdr_like`` (274 = 144 benign + 130 malignant, every case
rendered twice: ``train`` and ``shifted`` confounders) and ``ddsm_like`` (official train/test
split, patients with one or two cases). :func:`write_cbis_tree` writes a tiny CBIS-DDSM style
DICOM tree with the real CSV format, for the loader's tests.

Decisions (all :class:`PhantomConfig` fields):

- **mask** = the mass body ``{r <= R(theta)}`` (the 50 % level of the sigmoid margin) plus, with
  ``spicules_in_mask=True`` (default), the core of every spicule (distance to its axis <= its
  half-width). Real outlines (CBIS-DDSM, BCDR) trace the spiculated border only roughly; here
  the default keeps the mask equal to the region the mass was drawn in.
- **ROI window** for confounders = the Sec. 3.2 mass-centred crop of the mask's box:
  ``max(roi_size, h) x max(roi_size, w)``, start ``y0 + (h - H) // 2`` (as ``mammo_lib.data.roi``).
  Every confounder lies fully inside it (``window_margin_px`` in from its border), inside the
  breast and at least ``confounder_gap_px`` away from the visible mass.
- **renderings**: ``train`` draws confounders with ``*_prob["train"]``, ``shifted`` with
  ``*_prob["test"]``; mass, tissue and noise are identical across renderings of one case.
- **randomness**: every case draws from its own generators ``default_rng([seed, kind, split,
  label, k, stream])`` (NumPy SeedSequence), so a case does not depend on how many other cases
  there are; a mass too large for its breast is shrunk (factor ``0.85`` per step) until it fits.

Modules: :mod:`.config` (:class:`PhantomConfig`, constants, :func:`config_hash`),
:mod:`.anatomy` (texture, breast, mass, placement), :mod:`.confounders` (dense tissue,
calcifications, renderings), :mod:`.build` (:func:`plan_cases`, :func:`generate_phantom`) and
:mod:`.cbis_export` (:func:`write_cbis_tree`); every public name is importable from here.

>>> from mammo_lib.data.phantom import PhantomConfig, config_hash
>>> len(config_hash(PhantomConfig(), "bcdr_like"))
64
"""
from __future__ import annotations

from mammo_lib.data.phantom.config import (CONFOUNDER_CALCIFICATION, CONFOUNDER_DENSE, CONFOUNDER_NONE, CONFOUNDER_TYPES,
                     PHANTOM_VERSION, PhantomConfig, Rendering, config_hash)
from mammo_lib.data.phantom.anatomy import (Breast, MassLayer, MassSpec, SimulatedCase, draw_breast, draw_mass,
                      power_law_texture, render_mass, roi_window, simulate_anatomy)
from mammo_lib.data.phantom.confounders import Confounder, RENDERING_PROBS, Rendered, add_confounders, extra_renderings
from mammo_lib.data.phantom.build import CASE_COLUMNS, CasePlan, Kind, MARKER, generate_phantom, plan_cases
from mammo_lib.data.phantom.cbis_export import CBIS_COLUMNS, CBIS_MARKER, write_cbis_tree

__all__ = ["CONFOUNDER_CALCIFICATION", "CONFOUNDER_DENSE", "CONFOUNDER_NONE", "CONFOUNDER_TYPES",
           "PHANTOM_VERSION", "PhantomConfig", "Rendering", "config_hash", "Breast", "MassLayer",
           "MassSpec", "SimulatedCase", "draw_breast", "draw_mass", "power_law_texture",
           "render_mass", "roi_window", "simulate_anatomy", "Confounder", "RENDERING_PROBS",
           "Rendered", "add_confounders", "extra_renderings", "CASE_COLUMNS", "CasePlan", "Kind",
           "MARKER", "generate_phantom", "plan_cases", "CBIS_COLUMNS", "CBIS_MARKER",
           "write_cbis_tree"]

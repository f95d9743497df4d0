"""mammo-kt: interpretable CNN mammographic mass classification with activation-map
knowledge transfer (Li et al., Knowledge-Based Systems 316 (2025) 113372).

The library holds all logic; notebooks in ``notebooks/`` only call it.

Importing the package pins the CPU kernels' instruction set (:mod:`mammo_lib.numerics`) so that a
seed gives the same numbers on any x86-64 CPU with AVX2; import it before torch runs anything
(``MAMMO_NUMERICS=native`` opts out).
"""
from mammo_lib.numerics import pin_environment as _pin_environment

_pin_environment()
__version__ = "0.1.0"

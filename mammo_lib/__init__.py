"""mammo-kt: interpretable CNN mammographic mass classification with activation-map
knowledge transfer (Li et al., Knowledge-Based Systems 316 (2025) 113372).

The library holds all logic; notebooks in ``notebooks/`` only call it.
"""
__version__ = "0.1.0"

"""Drawing, apart from computation (as captum keeps ``attr/`` apart from its visualisation):
figures of an explainer's result. Nothing here computes an explanation; every function takes a
result of :mod:`mammo_lib.explain` and matplotlib Axes (or makes a Figure), and uses no pyplot
state (Agg-safe, thread-safe).
"""
from mammo_lib.visualize.explanation import plot_attribution, plot_explanation

__all__ = ["plot_attribution", "plot_explanation"]

"""The report's sentence on Fig. 6's direction against the paper's (activation_distances.fig6_direction_sentence)."""
from __future__ import annotations

import doctest

import pandas as pd
import pytest

from mammo_lib.repro.steps import activation_distances
from mammo_lib.repro.steps.activation_distances import fig6_direction_sentence


def _t(medians, groups=None) -> pd.DataFrame:
    groups = groups or list(range(1, len(medians) + 1))
    return pd.DataFrame({"group": groups, "mean": medians, "50%": medians, "network": "x"})


def test_opposite_direction_gives_the_medians():
    s = fig6_direction_sentence(_t([1.40, 1.41, 1.38, 0.99]))
    assert s.startswith("Fig. 6 runs opposite to the paper: the paper shows the distance")
    assert "median d^1, d^2, d^3 1.38-1.41 against d^4 0.99" in s
    assert "(d^1 1.40, d^2 1.41, d^3 1.38, d^4 0.99)" in s


def test_paper_direction_and_row_order():
    # rows out of order: sorted by group before reading the direction
    s = fig6_direction_sentence(_t([0.3, 0.1, 0.2], groups=[3, 1, 2]))
    assert s == "Fig. 6 runs in the paper's direction: the median distances grow with depth (d^1 0.10, d^2 0.20, d^3 0.30)."


def test_neither_direction():
    s = fig6_direction_sentence(_t([0.5, 0.4, 0.6]))
    assert s.startswith("Fig. 6 does not follow the paper's direction") and "(d^1 0.50, d^2 0.40, d^3 0.60)" in s


@pytest.mark.parametrize("table, message", [
    (_t([1.0, 2.0]).drop(columns="50%"), "fig6_summary lacks column(s) ['50%']"),
    (_t([1.0]), "fig6_summary needs at least 2 groups to have a direction, got 1"),
    (_t([1.0, 2.0], groups=[1, 1]), "fig6_summary repeats group 1"),
    (_t([1.0, float("nan")]), "fig6_summary: median (50%) of group 2 is not a finite number"),
])
def test_rejects(table, message):
    with pytest.raises(ValueError) as e:
        fig6_direction_sentence(table)
    assert str(e.value).startswith(message)


def test_docstring_example():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(activation_distances.fig6_direction_sentence, "fig6_direction_sentence",
                            globs={"pd": pd, "fig6_direction_sentence": fig6_direction_sentence}):
        runner.run(test)
    assert runner.summarize(verbose=False).attempted == 2 and runner.summarize(verbose=False).failed == 0

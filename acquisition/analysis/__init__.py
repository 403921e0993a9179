"""Binding analysis: curve fitting with GraphPad Prism's conventions (pure maths, no I/O)."""

from __future__ import annotations

from acquisition.analysis.fit import (
    Array,
    FitResult,
    FTest,
    IntArray,
    Model,
    ParamEstimate,
    extra_sum_of_squares,
    fit,
)

__all__ = [
    "Array",
    "FTest",
    "FitResult",
    "IntArray",
    "Model",
    "ParamEstimate",
    "extra_sum_of_squares",
    "fit",
]

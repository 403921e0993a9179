"""A fit as data: what ``assay analyze --format json`` prints and result documents carry."""

from __future__ import annotations

import math
from typing import Any

from acquisition.analysis.fit import FitResult, ParamEstimate

__all__ = ["fit_to_dict"]


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _param(p: ParamEstimate) -> dict[str, Any]:
    return {
        "name": p.name,
        "estimate": _num(p.estimate),
        "se": _num(p.se),
        "ci_low": _num(p.ci_low),
        "ci_high": _num(p.ci_high),
        "profile_low": _num(p.profile_low),
        "profile_high": _num(p.profile_high),
    }


def fit_to_dict(result: FitResult, *, level: float = 0.95) -> dict[str, Any]:
    """Parameters (estimate, SE, asymptotic CI, profile-likelihood CI), derived values
    (back-transformed from log parameters), and the fit's DF, SS, R squared, Sy.x."""
    return {
        "model": result.model,
        "level": level,
        "parameters": [_param(p) for p in result.params.values()],
        "derived": [_param(p) for p in result.derived.values()],
        "constants": dict(result.constants),
        "n": result.n,
        "dof": result.dof,
        "ss": _num(result.ss),
        "r2": _num(result.r2),
        "sy_x": _num(result.sy_x),
        "converged": result.converged,
        "message": result.message,
    }

"""Profile-likelihood confidence limits for one parameter (pure maths, no I/O).

The limit on each side is the value ``v`` where the residual sum of squares with the parameter
pinned at ``v`` (the others refitted) reaches ``SS_best * (1 + F(level; 1, DF) / DF)``, the
criterion GraphPad Prism uses. For a linear model it coincides with the asymptotic interval.

The search starts at the asymptotic limit (estimate +- t * SE, exactly where the profile
crosses the threshold when the model is linear near the optimum), moves outward by doubling
steps until the refitted SS exceeds the threshold, then pins the crossing with Brent's method.
It roots ``sqrt(SS(v) - SS_best) - sqrt(threshold - SS_best)``, which is close to linear in
``v``, so Brent converges in a handful of refits. A side that cannot be bracketed (a bound is
reached, the curve does not constrain the parameter, the model overflows) gives ``None``: no
number is invented.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats
from scipy.optimize import brentq

from acquisition.analysis._problem import Array, Problem

__all__ = ["MAX_EXPANSIONS", "PROFILE_TOL", "profile_limits", "profile_side"]

MAX_EXPANSIONS = 12
"""Doublings of the first step (up to 4096 times the asymptotic half-width) before giving up."""

PROFILE_TOL = 1e-12
"""xtol, ftol and gtol of the refits inside the search (the main fit uses 1e-14)."""


def profile_side(
    ss_at: Callable[[float], float],
    *,
    estimate: float,
    direction: int,
    step: float,
    ss_best: float,
    threshold: float,
    bound: float,
) -> float | None:
    """Return the profile limit on one side of ``estimate``, or ``None`` if it cannot be found.

    ``ss_at(v)`` is the residual SS with the parameter pinned at ``v`` and the others refitted
    (non-finite when that refit fails). ``direction`` is +1 or -1, ``step`` the first distance
    to try (positive), ``bound`` the hard bound on that side (``+-inf`` when there is none).
    """
    if not (step > 0 and math.isfinite(step)) or not threshold > ss_best:
        return None
    target = math.sqrt(threshold - ss_best)
    cache: dict[float, float] = {}

    def excess(v: float) -> float:
        """Signed distance of the profile from the threshold, nearly linear in ``v``."""
        if v not in cache:
            ss = ss_at(v)
            cache[v] = math.sqrt(max(ss - ss_best, 0.0)) - target if math.isfinite(ss) else math.nan
        return cache[v]

    cache[estimate] = -target
    inner = estimate
    delta = step
    for _ in range(MAX_EXPANSIONS + 1):
        outer = estimate + direction * delta
        at_bound = (outer - bound) * direction >= 0
        if at_bound:
            outer = bound
        if outer == inner:  # the estimate sits on the bound
            return None
        g = excess(outer)
        if not math.isfinite(g):
            return None
        if g >= 0:
            lo, hi = (inner, outer) if inner < outer else (outer, inner)
            tol = max(abs(outer - inner) * 1e-10, 1e-300)
            try:
                root = brentq(excess, lo, hi, xtol=tol, rtol=1e-12, maxiter=100)
            except (ValueError, RuntimeError):
                return None
            return float(root) if math.isfinite(excess(float(root))) else None
        if at_bound:
            return None
        inner = outer
        delta *= 2.0
    return None


def profile_limits(
    problem: Problem,
    q: Array,
    *,
    ss: float,
    dof: int,
    level: float,
    bounds: tuple[Array, Array],
    cov: Array | None,
    var: float,
    t_crit: float,
) -> dict[int, tuple[float | None, float | None]]:
    """Profile-likelihood limits of every free parameter, keyed by model parameter index."""
    lower, upper = bounds
    threshold = ss * (1.0 + float(stats.f.ppf(level, 1, dof)) / dof)
    p_best = problem.params(q)
    out: dict[int, tuple[float | None, float | None]] = {}
    for col, j in enumerate(problem.free):
        rest = [c for c in range(len(problem.free)) if c != col]
        sub = Problem(
            problem.f,
            problem.x,
            problem.y,
            constants=problem.constants,
            dataset=problem.dataset,
            full=p_best,
            free=[problem.free[c] for c in rest],
            complex_step=problem.complex_step,
        )
        est = float(q[col])
        if cov is not None and cov[col, col] > 0:
            step = t_crit * math.sqrt(var * cov[col, col])
        else:
            step = 0.1 * max(abs(est), 1.0)
        sides: list[float | None] = []
        for direction in (-1, 1):
            warm = {"q": q[rest].copy()}

            def ss_at(
                v: float,
                j: int = j,
                warm: dict[str, Array] = warm,
                sub: Problem = sub,
                rest: list[int] = rest,
            ) -> float:
                sub.full[j] = v
                if not rest:
                    r = sub.residuals(np.zeros(0))
                    return float(np.dot(r, r))
                try:
                    qs, ss_v, _, _ = sub.solve(warm["q"], lower[rest], upper[rest], PROFILE_TOL)
                except (ValueError, np.linalg.LinAlgError):
                    return math.nan
                if math.isfinite(ss_v):
                    warm["q"] = qs
                return ss_v

            sides.append(
                profile_side(
                    ss_at,
                    estimate=est,
                    direction=direction,
                    step=step,
                    ss_best=ss,
                    threshold=threshold,
                    bound=float(lower[col] if direction < 0 else upper[col]),
                )
            )
        out[j] = (sides[0], sides[1])
    return out

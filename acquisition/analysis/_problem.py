"""The least-squares problem behind :func:`acquisition.analysis.fit.fit` (private).

Residuals, the complex-step Jacobian, the optimiser call and a Gauss-Newton polish, with any
subset of the parameters free and the rest pinned (the profile-likelihood search pins one more).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares

__all__ = [
    "EPS",
    "Array",
    "IntArray",
    "ModelFunction",
    "Problem",
    "complex_safe",
    "covariance",
]

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int_]
ModelFunction = Callable[[Array, Array, Mapping[str, float], IntArray], Array]

EPS = float(np.finfo(np.float64).eps)
_POLISH_STEPS = 10  # Gauss-Newton steps after the main fit


class Problem:
    """Residuals and the Jacobian with some parameters free and the rest pinned."""

    def __init__(
        self,
        f: ModelFunction,
        x: Array,
        y: Array,
        *,
        constants: Mapping[str, float],
        dataset: IntArray,
        full: Array,
        free: list[int],
        complex_step: bool,
    ) -> None:
        self.f, self.x, self.y, self.constants, self.dataset = f, x, y, constants, dataset
        self.full = full.copy()
        self.free = free
        self.complex_step = complex_step

    def params(self, q: Array) -> Array:
        p = self.full.copy()
        p[self.free] = q
        return p

    def residuals(self, q: Array) -> Array:
        with np.errstate(all="ignore"):
            yhat = self.f(self.x, self.params(q), self.constants, self.dataset)
        return np.asarray(yhat, dtype=np.float64) - self.y

    def jacobian(self, q: Array) -> Array:
        p = self.params(q)
        jac = np.empty((self.y.size, len(self.free)))
        with np.errstate(all="ignore"):
            for col, j in enumerate(self.free):
                if self.complex_step:
                    h = 1e-20 * max(1.0, abs(float(p[j])))
                    pc = p.astype(np.complex128)
                    pc[j] += 1j * h
                    out = self.f(self.x, cast(Array, pc), self.constants, self.dataset)
                    jac[:, col] = np.imag(out) / h
                else:
                    h = np.cbrt(EPS) * max(1.0, abs(float(p[j])))
                    up, down = p.copy(), p.copy()
                    up[j] += h
                    down[j] -= h
                    f_up = self.f(self.x, up, self.constants, self.dataset)
                    f_down = self.f(self.x, down, self.constants, self.dataset)
                    jac[:, col] = (np.asarray(f_up) - np.asarray(f_down)) / (2.0 * h)
        return jac

    def solve(
        self, q0: Array, lower: Array, upper: Array, tol: float, *, polish: bool = False
    ) -> tuple[Array, float, int, str]:
        """Minimise; return (q, SS, scipy status, scipy message).

        Raises ``ValueError`` when the residuals or the Jacobian are not finite at ``q0``.
        """
        if q0.size == 0:  # everything pinned: nothing to optimise
            r = self.residuals(q0)
            return q0, float(np.dot(r, r)), 1, "all parameters fixed"
        bounded = bool(np.any(np.isfinite(lower)) or np.any(np.isfinite(upper)))
        q0 = np.clip(q0, lower, upper)
        try:
            res = self._least_squares(q0, lower, upper, tol, bounded=bounded)
        except KeyError:
            # MINPACK's info 6-8 ("tolerance too small, no further reduction possible") has no
            # entry in scipy's status table; it means the optimum is at machine precision.
            res = self._least_squares(q0, lower, upper, max(tol, 1e-10), bounded=bounded)
        q = np.asarray(res.x, dtype=np.float64)
        r = self.residuals(q)
        ss = float(np.dot(r, r))
        if polish and res.status > 0 and math.isfinite(ss):
            q, ss = self._polish(q, ss, lower, upper)
        return q, ss, int(res.status), str(res.message)

    def _least_squares(
        self, q0: Array, lower: Array, upper: Array, tol: float, *, bounded: bool
    ) -> Any:
        return least_squares(
            self.residuals,
            q0,
            jac=self.jacobian,
            bounds=(lower, upper) if bounded else (-np.inf, np.inf),
            method="trf" if bounded else "lm",
            x_scale="jac",
            xtol=tol,
            ftol=tol,
            gtol=tol,
            max_nfev=200 * (q0.size + 1) * (q0.size + 1),
        )

    def _polish(self, q: Array, ss: float, lower: Array, upper: Array) -> tuple[Array, float]:
        """Gauss-Newton steps from the optimiser's answer while they keep shrinking.

        The optimiser stops when SS no longer changes in floating point, which leaves the
        parameters only as accurate as the flatness of SS allows (about half the digits in
        ill-conditioned directions). Solving J dq = -r directly sets the gradient to zero and
        recovers those digits (NIST certified values to 9-11 digits instead of 7-8).
        """
        last = math.inf
        for _ in range(_POLISH_STEPS):
            r = self.residuals(q)
            jac = self.jacobian(q)
            norms = np.linalg.norm(jac, axis=0)
            if not (np.all(np.isfinite(jac)) and np.all(norms > 0)):
                break
            scaled, *_ = np.linalg.lstsq(jac / norms, -r, rcond=None)
            size = float(np.linalg.norm(scaled))
            trial = q + scaled / norms
            if not (size < last and np.all(trial >= lower) and np.all(trial <= upper)):
                break
            r_trial = self.residuals(trial)
            ss_trial = float(np.dot(r_trial, r_trial))
            if not ss_trial <= ss * (1.0 + 1e-12):
                break
            q, ss, last = trial, ss_trial, size
            if size <= EPS * float(np.linalg.norm(q * norms)):
                break
        return q, ss


def complex_safe(
    f: ModelFunction, x: Array, p: Array, constants: Mapping[str, float], ds: IntArray
) -> bool:
    """Whether ``f`` propagates a complex perturbation (complex-step differentiable)."""
    pc = p.astype(np.complex128)
    pc[0] += 1e-30j
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            out = np.asarray(f(x, cast(Array, pc), constants, ds))
    except (TypeError, ValueError, ArithmeticError, np.exceptions.ComplexWarning):
        return False
    return bool(np.iscomplexobj(out) and out.shape == x.shape)


def covariance(jac: Array) -> Array | None:
    """``(J^T J)^-1`` via the SVD of the column-equilibrated J; ``None`` if rank-deficient."""
    if jac.shape[1] == 0:
        return np.zeros((0, 0))
    norms = np.linalg.norm(jac, axis=0)
    if not np.all(np.isfinite(jac)) or np.any(norms == 0):
        return None
    _, s, vt = np.linalg.svd(jac / norms, full_matrices=False)
    if s[-1] <= s[0] * max(jac.shape) * EPS:
        return None
    inner = (vt.T / s**2) @ vt
    return cast(Array, inner / np.outer(norms, norms))

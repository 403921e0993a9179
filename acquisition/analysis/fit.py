"""Nonlinear least-squares fitting with Prism's conventions (pure maths: numpy + scipy, no I/O).

* Optimiser: :func:`scipy.optimize.least_squares`, Levenberg-Marquardt (``"lm"``) when no
  parameter has a bound, the trust-region reflective method (``"trf"``) otherwise;
  ``x_scale="jac"`` and tolerances near machine precision so certified digits are reached.
* Jacobian by complex step, ``J[:, j] = Im f(p + i h e_j) / h`` with ``h = 1e-20 * max(1, |p_j|)``:
  no subtractive cancellation, so it is as accurate as an analytic derivative. A model must
  therefore evaluate with a complex ``p`` (numpy operations only: ``10 ** (...)``, ``np.exp``;
  no ``abs``, ``math.*`` or comparisons on ``p``). A model that cannot is differentiated by
  central differences instead, and the result's ``message`` says so.
* Standard errors ``sqrt((SS/DF) * diag((J^T J)^-1))`` (Prism, R ``nls`` and NIST), the inverse
  taken through the SVD of the column-equilibrated ``J``; a rank-deficient ``J`` gives ``se``
  ``None`` and says so in ``message``. Asymptotic CI: estimate +- t((1+level)/2, DF) * SE.
  Profile-likelihood CI: :mod:`acquisition.analysis.profile`.
* Parameters on a log10 scale (``logKi``) are also reported back-transformed (``Ki``), their CIs
  the back-transformed log-scale limits (asymmetric), their ``se`` ``None``.
* After the optimiser stops, a few Gauss-Newton steps set the gradient to zero exactly (SS is
  too flat at the optimum to pin the last digits); NIST StRD certified values and SDs are then
  reproduced to 8-11 significant digits from both NIST start points.
* Replicates are fitted as individual points, as Prism does by default.
* ``converged`` is ``False`` when the optimiser hit its iteration limit (the estimates are then
  reported with that warning in ``message``); estimates that are not finite raise instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import stats

from acquisition.analysis._problem import (
    Array,
    IntArray,
    ModelFunction,
    Problem,
    complex_safe,
    covariance,
)
from acquisition.analysis.profile import profile_limits
from acquisition.errors import AnalysisError

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


_TOL = 1e-14  # xtol, ftol, gtol of the main fit


@dataclass(frozen=True)
class Model:
    """A curve: Prism's name, parameters (in Prism's order) and constants, and its function.

    ``f(x, p, constants, dataset)`` is vectorised over ``x`` and must accept a complex ``p``;
    ``dataset`` is an int array (zeros for single-data-set models). ``initial`` returns starting
    values for every parameter from the data.
    """

    name: str
    params: tuple[str, ...]
    constants: tuple[str, ...]
    f: ModelFunction
    initial: ModelFunction
    log10_params: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamEstimate:
    """One parameter: estimate, standard error, asymptotic and profile-likelihood limits."""

    name: str
    estimate: float
    se: float | None
    ci_low: float | None
    ci_high: float | None
    profile_low: float | None = None
    profile_high: float | None = None


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`fit`. ``params`` follows ``Model.params``; fixed ones have no SE."""

    model: str
    params: dict[str, ParamEstimate]
    derived: dict[str, ParamEstimate]
    constants: dict[str, float]
    n: int
    dof: int
    ss: float
    r2: float
    sy_x: float
    converged: bool
    message: str
    model_def: Model | None = field(default=None, repr=False, compare=False)

    def predict(self, x: npt.ArrayLike, dataset: npt.ArrayLike | None = None) -> Array:
        """Evaluate the fitted curve at ``x`` (and ``dataset`` for global models)."""
        if self.model_def is None:
            raise AnalysisError(f"predict: the result of {self.model!r} carries no model")
        xa = np.atleast_1d(np.asarray(x, dtype=np.float64))
        ds = _dataset_codes(self.model_def, dataset, xa.size)
        p = np.array([self.params[name].estimate for name in self.model_def.params])
        with np.errstate(all="ignore"):
            return np.asarray(self.model_def.f(xa, p, self.constants, ds), dtype=np.float64)


@dataclass(frozen=True)
class FTest:
    """Extra-sum-of-squares F test of nested models; ``preferred`` names the model chosen."""

    f: float
    dfn: int
    dfd: int
    p: float
    preferred: str


def _derived_name(name: str) -> str:
    return name[3:] if name[:3].lower() == "log" and len(name) > 3 else f"10^{name}"


def _dataset_codes(model: Model, dataset: npt.ArrayLike | None, n: int) -> IntArray:
    """Dataset labels or codes -> int codes in ``range(max(1, len(model.datasets)))``."""
    if dataset is None:
        return np.zeros(n, dtype=np.int_)
    raw = np.atleast_1d(np.asarray(dataset))
    if raw.shape != (n,):
        raise AnalysisError(f"dataset: expected {n} values (one per point), got shape {raw.shape}")
    if raw.dtype.kind in "USO":
        labels = [str(v) for v in raw]
        unknown = sorted(set(labels) - set(model.datasets))
        if unknown:
            raise AnalysisError(
                f"dataset: unknown label(s) {unknown} for model {model.name!r}; "
                f"expected one of {list(model.datasets)}"
            )
        return np.array([model.datasets.index(v) for v in labels], dtype=np.int_)
    if raw.dtype.kind not in "iub" and not (
        raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))
    ):
        raise AnalysisError(f"dataset: expected integer codes or labels, got dtype {raw.dtype}")
    codes = raw.astype(np.int_)
    count = max(1, len(model.datasets))
    if codes.size and (codes.min() < 0 or codes.max() >= count):
        raise AnalysisError(
            f"dataset: codes must lie in 0..{count - 1} for model {model.name!r}, "
            f"got {int(codes.min())}..{int(codes.max())}"
        )
    return codes


def _as_vector(name: str, values: npt.ArrayLike) -> Array:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AnalysisError(f"{name}: not numeric ({exc})") from exc
    if arr.ndim != 1:
        arr = np.atleast_1d(arr)
        if arr.ndim != 1:
            raise AnalysisError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        rows = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise AnalysisError(f"{name}: {bad.size} value(s) are NaN or infinite (rows {rows})")
    return arr


def fit(
    model: Model,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    constants: Mapping[str, float] | None = None,
    dataset: npt.ArrayLike | None = None,
    p0: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | None = None,
    profile: bool = True,
    level: float = 0.95,
) -> FitResult:
    """Fit ``model`` to (x, y) by least squares; see the module docstring for the conventions.

    Raises :class:`AnalysisError` for a missing constant, NaN/inf data, fewer points than free
    parameters + 1, all-equal ``y``, or a fit that cannot produce finite estimates.
    """
    consts = _check_constants(model, constants)
    xa, ya = _as_vector("x", x), _as_vector("y", y)
    if xa.size != ya.size:
        raise AnalysisError(f"x and y: different lengths ({xa.size} vs {ya.size})")
    ds = _dataset_codes(model, dataset, xa.size)
    if not 0.0 < level < 1.0:
        raise AnalysisError(f"level: must lie strictly between 0 and 1, got {level}")
    fixed_map = _check_names(model, "fixed", fixed)
    p0_map = _check_names(model, "p0", p0)
    free = [i for i, name in enumerate(model.params) if name not in fixed_map]
    n, k = xa.size, len(free)
    if n < k + 1:
        raise AnalysisError(
            f"x, y: {n} point(s) for {k} free parameter(s) of {model.name!r}; need at least {k + 1}"
        )
    if np.ptp(ya) == 0.0:
        raise AnalysisError(f"y: all {n} values are equal ({ya[0]:g}); nothing to fit")

    start = _starting_values(model, xa, ya, consts, ds, p0=p0_map, fixed=fixed_map)
    lower, upper = _bounds(model, free)
    complex_step = complex_safe(model.f, xa, start, consts, ds)
    problem = Problem(
        model.f,
        xa,
        ya,
        constants=consts,
        dataset=ds,
        full=start,
        free=free,
        complex_step=complex_step,
    )
    try:
        q, ss, status, scipy_message = problem.solve(start[free], lower, upper, _TOL, polish=True)
    except (ValueError, np.linalg.LinAlgError) as exc:
        # least_squares refuses non-finite residuals at the start ("Residuals are not finite in
        # the initial point") and non-finite Jacobians; both mean no finite fit from here.
        at = ", ".join(f"{name}={v:g}" for name, v in zip(model.params, start, strict=True))
        raise AnalysisError(
            f"{model.name}: the fit cannot start from {at}: {exc} "
            "(the model overflows or is undefined there; pass p0)"
        ) from exc
    if not math.isfinite(ss) or not np.all(np.isfinite(q)):
        raise AnalysisError(
            f"{model.name}: the fit did not reach finite estimates ({scipy_message})"
        )
    notes: list[str] = [scipy_message]
    if not complex_step:
        notes.append("model is not complex-step safe: Jacobian by central differences")
    converged = status > 0
    if not converged:
        notes.append("iteration limit reached: estimates may not be the least-squares optimum")

    dof = n - k
    p_best = problem.params(q)
    cov = covariance(problem.jacobian(q))
    if cov is None:  # nothing honest to report: no SEs, no CIs, estimates arbitrary
        raise AnalysisError(
            f"{model.name}: the data do not determine the parameters (J^T J is singular: "
            "e.g. a single concentration, or a flat curve)"
        )
    t_crit = float(stats.t.ppf((1.0 + level) / 2.0, dof))
    var = ss / dof

    limits: dict[int, tuple[float | None, float | None]] = {}
    if profile and k > 0:
        limits = profile_limits(
            problem,
            q,
            ss=ss,
            dof=dof,
            level=level,
            bounds=(lower, upper),
            cov=cov,
            var=var,
            t_crit=t_crit,
        )

    params: dict[str, ParamEstimate] = {}
    for i, name in enumerate(model.params):
        est = float(p_best[i])
        if i not in free:
            params[name] = ParamEstimate(name, est, None, None, None)
            continue
        col = free.index(i)
        se = math.sqrt(var * cov[col, col]) if cov is not None and cov[col, col] >= 0 else None
        lo_hi = limits.get(i, (None, None))
        params[name] = ParamEstimate(
            name,
            est,
            se,
            est - t_crit * se if se is not None else None,
            est + t_crit * se if se is not None else None,
            lo_hi[0],
            lo_hi[1],
        )
    derived = {_derived_name(n_): _back_transform(params[n_]) for n_ in model.log10_params}
    ss_tot = float(np.sum((ya - ya.mean()) ** 2))
    return FitResult(
        model=model.name,
        params=params,
        derived=derived,
        constants=dict(consts),
        n=n,
        dof=dof,
        ss=ss,
        r2=1.0 - ss / ss_tot,
        sy_x=math.sqrt(var),
        converged=converged,
        message="; ".join(notes),
        model_def=model,
    )


def _check_constants(model: Model, constants: Mapping[str, float] | None) -> dict[str, float]:
    given = dict(constants or {})
    missing = [c for c in model.constants if c not in given]
    if missing:
        raise AnalysisError(
            f"constants: {model.name!r} needs {', '.join(missing)} "
            f"(required: {', '.join(model.constants)})"
        )
    out: dict[str, float] = {}
    for name, value in given.items():
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise AnalysisError(f"constants: {name} is not a number ({value!r})") from exc
        if not math.isfinite(v):
            raise AnalysisError(f"constants: {name} is not finite ({v})")
        if name in model.constants and v <= 0:
            # Every model constant is a concentration, Kd, activity or volume.
            raise AnalysisError(f"constants: {name} must be positive (got {v:g})")
        out[name] = v
    return out


def _check_names(model: Model, what: str, given: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in (given or {}).items():
        if name not in model.params:
            raise AnalysisError(
                f"{what}: {name!r} is not a parameter of {model.name!r} "
                f"(parameters: {', '.join(model.params)})"
            )
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise AnalysisError(f"{what}: {name} is not a number ({value!r})") from exc
        if not math.isfinite(v):
            raise AnalysisError(f"{what}: {name} is not finite ({v})")
        out[name] = v
    return out


def _starting_values(
    model: Model,
    x: Array,
    y: Array,
    consts: Mapping[str, float],
    ds: IntArray,
    *,
    p0: Mapping[str, float],
    fixed: Mapping[str, float],
) -> Array:
    if all(name in p0 or name in fixed for name in model.params):
        start = np.zeros(len(model.params))
    else:
        try:
            with np.errstate(all="ignore"):
                start = np.asarray(model.initial(x, y, consts, ds), dtype=np.float64).ravel()
        except AnalysisError:
            raise
        except (ValueError, TypeError, ArithmeticError, IndexError) as exc:
            raise AnalysisError(
                f"{model.name}: automatic initial values failed ({exc}); pass p0"
            ) from exc
        if start.shape != (len(model.params),):
            raise AnalysisError(
                f"{model.name}: automatic initial values have shape {start.shape}, "
                f"expected ({len(model.params)},)"
            )
    for i, name in enumerate(model.params):
        if name in fixed:
            start[i] = fixed[name]
        elif name in p0:
            start[i] = p0[name]
    bad = [name for name, v in zip(model.params, start, strict=True) if not math.isfinite(v)]
    if bad:
        raise AnalysisError(
            f"{model.name}: no finite starting value for {', '.join(bad)} "
            "(automatic initial values failed on these data); pass p0"
        )
    return start


def _bounds(model: Model, free: list[int]) -> tuple[Array, Array]:
    lower = np.full(len(free), -np.inf)
    upper = np.full(len(free), np.inf)
    for name, (lo, hi) in model.bounds.items():
        if name not in model.params:
            raise AnalysisError(f"bounds: {name!r} is not a parameter of {model.name!r}")
        if not lo < hi:
            raise AnalysisError(f"bounds: {name} has lower {lo} not below upper {hi}")
        i = model.params.index(name)
        if i in free:
            lower[free.index(i)], upper[free.index(i)] = lo, hi
    return lower, upper


def _back_transform(p: ParamEstimate) -> ParamEstimate:
    def exp10(v: float | None) -> float | None:
        if v is None:
            return None
        out = 10.0**v if v < 308.0 else math.inf
        return out

    return ParamEstimate(
        _derived_name(p.name),
        10.0**p.estimate,
        None,
        exp10(p.ci_low),
        exp10(p.ci_high),
        exp10(p.profile_low),
        exp10(p.profile_high),
    )


def extra_sum_of_squares(simple: FitResult, complex_: FitResult, alpha: float = 0.05) -> FTest:
    """Extra-sum-of-squares F test: does ``complex_`` fit the same data significantly better?

    ``F = ((SS1 - SS2) / (DF1 - DF2)) / (SS2 / DF2)``; ``preferred`` is ``complex_.model`` when
    ``p < alpha``, else ``simple.model``.
    """
    if simple.n != complex_.n:
        raise AnalysisError(
            f"extra_sum_of_squares: the fits are of different data ({simple.n} vs "
            f"{complex_.n} points)"
        )
    dfn = simple.dof - complex_.dof
    if dfn <= 0:
        raise AnalysisError(
            f"extra_sum_of_squares: {complex_.model!r} (DF {complex_.dof}) must have fewer "
            f"degrees of freedom than {simple.model!r} (DF {simple.dof})"
        )
    if not 0.0 < alpha < 1.0:
        raise AnalysisError(f"alpha: must lie strictly between 0 and 1, got {alpha}")
    dfd = complex_.dof
    if complex_.ss == 0.0:
        f_stat = math.inf if simple.ss > 0.0 else 0.0
    else:
        f_stat = ((simple.ss - complex_.ss) / dfn) / (complex_.ss / dfd)
    p = float(stats.f.sf(f_stat, dfn, dfd)) if f_stat > 0 else 1.0
    return FTest(
        f=f_stat,
        dfn=dfn,
        dfd=dfd,
        p=p,
        preferred=complex_.model if p < alpha else simple.model,
    )

"""GraphPad Prism's binding models as :class:`~acquisition.analysis.fit.Model` instances.

Equations, names and parameter order follow Prism (science.md, "Analysis methods") and
``reference-data/synthetic_prism_equation_golden.json``. X is the log10 molar competitor
concentration for the competition models and the radioligand concentration in nM for the
saturation models.

Every ``f`` is written with numpy arithmetic only (``10 ** (...)``, ``np.sqrt``, ``np.where``)
so that it accepts complex parameters: the fitter differentiates by complex step.

Initial values come from the data alone. The competition and saturation models are linear in
their plateau/amplitude parameters once the location (logEC50, Kd) is fixed, so ``initial``
scans a grid of locations, solves the linear least-squares problem for the rest at each and
keeps the best (variable projection); that needs no hand tuning and does not depend on the
data reaching their plateaus.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from acquisition.analysis.fit import Model
from acquisition.errors import AnalysisError

__all__ = [
    "FOUR_PARAM_LOGISTIC",
    "HETEROLOGOUS_DEPLETION",
    "MODELS",
    "ONE_SITE_FIT_KI",
    "ONE_SITE_FIT_LOGIC50",
    "SATURATION_SPECIFIC",
    "SATURATION_TOTAL_NONSPECIFIC",
    "TWO_SITES_FIT_KI",
    "get_model",
]

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int_]
# ``f`` also receives complex parameters (complex-step Jacobian); typed as the fitter types it.
AnyArray = Array

_GRID_STEP = 0.05  # log10 units, for the one-dimensional location scans
_GRID_PAD = 1.5  # scan this far beyond the data (log10 units)


# ------------------------------------------------------------------------------- helpers


def _finite(x: Array, y: Array, dataset: IntArray | None = None) -> tuple[Array, Array, IntArray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ds = np.zeros(x.shape, dtype=np.int_) if dataset is None else np.asarray(dataset, dtype=np.int_)
    ok = np.isfinite(x) & np.isfinite(y)
    if not np.any(ok):
        raise AnalysisError("no finite (x, y) points to start the fit from")
    return x[ok], y[ok], ds[ok]


def _const(constants: Mapping[str, float], name: str) -> float:
    try:
        value = float(constants[name])
    except KeyError:
        raise AnalysisError(f"constant {name} is required") from None
    if not np.isfinite(value):
        raise AnalysisError(f"constant {name} must be finite, got {value}")
    return value


def _log_grid(lo: float, hi: float) -> Array:
    return np.arange(lo - _GRID_PAD, hi + _GRID_PAD + _GRID_STEP / 2, _GRID_STEP)


def _scan_sigmoid(x: Array, y: Array, centres: Array, slopes: Array) -> tuple[float, float, float,
                                                                            float]:
    """Best (centre, slope, bottom, top) of ``bottom + (top-bottom)/(1+10^((c-x)*h))`` over the
    grid, with bottom/top solved linearly at every grid point."""
    c = centres[:, None, None]
    h = slopes[None, :, None]
    g = 1.0 / (1.0 + 10.0 ** np.clip((c - x[None, None, :]) * h, -300, 300))  # (C, H, n)
    gm = g.mean(axis=-1, keepdims=True)
    ym = y.mean()
    dg = g - gm
    sxx = np.sum(dg * dg, axis=-1)
    sxy = np.sum(dg * (y - ym), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        span = np.where(sxx > 1e-12, sxy / sxx, 0.0)
    bottom = ym - span * gm[..., 0]
    ss = np.sum((y - (bottom[..., None] + span[..., None] * g)) ** 2, axis=-1)
    ss = np.where(sxx > 1e-12, ss, np.inf)
    i, j = np.unravel_index(int(np.argmin(ss)), ss.shape)
    if not np.isfinite(ss[i, j]):
        return float(np.median(x)), float(slopes[j]), float(np.min(y)), float(np.max(y))
    return float(centres[i]), float(slopes[j]), float(bottom[i, j]), float(bottom[i, j] +
                                                                           span[i, j])


def _sigmoid_start(x: Array, y: Array) -> tuple[float, float, float]:
    """(logEC50, Top, Bottom) of the Hill-slope -1 curve."""
    c, _, bottom, top = _scan_sigmoid(x, y, _log_grid(float(x.min()), float(x.max())),
                                      np.array([-1.0]))
    return c, top, bottom


def _cheng_prusoff_shift(constants: Mapping[str, float], hot: str, kd: str) -> float:
    """log10(1 + [hot]/Kd): logEC50 = logKi + shift."""
    hot_nm = _const(constants, hot)
    kd_nm = _const(constants, kd)
    if kd_nm <= 0 or hot_nm < 0:
        raise AnalysisError(f"constants {hot} must be >= 0 and {kd} > 0")
    return float(np.log10(1.0 + hot_nm / kd_nm))


# ------------------------------------------------------------------ one site, Fit logIC50


def _one_site_logic50(x: Array, p: AnyArray, constants: Mapping[str, float],
                      dataset: IntArray) -> AnyArray:
    log_ic50, top, bottom = p[0], p[1], p[2]
    result: AnyArray = bottom + (top - bottom) / (1.0 + 10.0 ** (x - log_ic50))
    return result


def _one_site_logic50_init(x: Array, y: Array, constants: Mapping[str, float],
                           dataset: IntArray) -> Array:
    x, y, _ = _finite(x, y)
    c, top, bottom = _sigmoid_start(x, y)
    return np.array([c, top, bottom])


ONE_SITE_FIT_LOGIC50 = Model(
    name="one-site-fit-logic50",
    params=("LogIC50", "Top", "Bottom"),
    constants=(),
    f=_one_site_logic50,
    initial=_one_site_logic50_init,
    log10_params=("LogIC50",),
)


# --------------------------------------------------- log(inhibitor) vs response, variable slope


def _four_pl(x: Array, p: AnyArray, constants: Mapping[str, float],
             dataset: IntArray) -> AnyArray:
    log_ic50, hill, top, bottom = p[0], p[1], p[2], p[3]
    result: AnyArray = bottom + (top - bottom) / (1.0 + 10.0 ** ((log_ic50 - x) * hill))
    return result


_SLOPES = np.array([-4.0, -3.0, -2.0, -1.5, -1.2, -1.0, -0.8, -0.6, -0.4,
                    0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0])


def _four_pl_init(x: Array, y: Array, constants: Mapping[str, float],
                  dataset: IntArray) -> Array:
    x, y, _ = _finite(x, y)
    c, h, bottom, top = _scan_sigmoid(x, y, _log_grid(float(x.min()), float(x.max())), _SLOPES)
    if top < bottom:  # the same curve with the opposite slope: keep Top above Bottom
        top, bottom, h = bottom, top, -h
    return np.array([c, h, top, bottom])


FOUR_PARAM_LOGISTIC = Model(
    name="four-param-logistic",
    params=("LogIC50", "HillSlope", "Top", "Bottom"),
    constants=(),
    f=_four_pl,
    initial=_four_pl_init,
    log10_params=("LogIC50",),
)


# ----------------------------------------------------------------------- one site, Fit Ki


def _one_site_ki(x: Array, p: AnyArray, constants: Mapping[str, float],
                 dataset: IntArray) -> AnyArray:
    log_ki, top, bottom = p[0], p[1], p[2]
    log_ec50 = log_ki + np.log10(1.0 + constants["HotNM"] / constants["HotKdNM"])
    result: AnyArray = bottom + (top - bottom) / (1.0 + 10.0 ** (x - log_ec50))
    return result


def _one_site_ki_init(x: Array, y: Array, constants: Mapping[str, float],
                      dataset: IntArray) -> Array:
    shift = _cheng_prusoff_shift(constants, "HotNM", "HotKdNM")
    x, y, _ = _finite(x, y)
    c, top, bottom = _sigmoid_start(x, y)
    return np.array([c - shift, top, bottom])


ONE_SITE_FIT_KI = Model(
    name="one-site-fit-ki",
    params=("logKi", "Top", "Bottom"),
    constants=("HotNM", "HotKdNM"),
    f=_one_site_ki,
    initial=_one_site_ki_init,
    log10_params=("logKi",),
)


# ---------------------------------------------------------------------- two sites, Fit Ki


def _two_sites_ki(x: Array, p: AnyArray, constants: Mapping[str, float],
                  dataset: IntArray) -> AnyArray:
    log_ki_hi, log_ki_lo, frac_hi, top, bottom = p[0], p[1], p[2], p[3], p[4]
    hot = constants["HotNM"]
    ec_hi = log_ki_hi + np.log10(1.0 + hot / constants["HotKdNMHi"])
    ec_lo = log_ki_lo + np.log10(1.0 + hot / constants["HotKdNMLo"])
    span = top - bottom
    result: AnyArray = (bottom + frac_hi * span / (1.0 + 10.0 ** (x - ec_hi))
                        + (1.0 - frac_hi) * span / (1.0 + 10.0 ** (x - ec_lo)))
    return result


_TWO_SITE_STEP = 0.25
_TWO_SITE_MIN_SEPARATION = 0.5


def _two_sites_ki_init(x: Array, y: Array, constants: Mapping[str, float],
                       dataset: IntArray) -> Array:
    shift_hi = _cheng_prusoff_shift(constants, "HotNM", "HotKdNMHi")
    shift_lo = _cheng_prusoff_shift(constants, "HotNM", "HotKdNMLo")
    x, y, _ = _finite(x, y)
    grid = np.arange(float(x.min()) - 1.0, float(x.max()) + 1.0 + 1e-9, _TWO_SITE_STEP)
    ii, jj = np.triu_indices(grid.size, k=1)
    keep = grid[jj] - grid[ii] >= _TWO_SITE_MIN_SEPARATION
    ii, jj = ii[keep], jj[keep]
    if ii.size == 0:
        c, top, bottom = _sigmoid_start(x, y)
        return np.array([c - 0.5 - shift_hi, c + 0.5 - shift_lo, 0.5, top, bottom])
    g = 1.0 / (1.0 + 10.0 ** (x[None, :] - grid[:, None]))  # (G, n)
    a = np.stack([np.ones((ii.size, x.size)), g[ii], g[jj]], axis=-1)  # (P, n, 3)
    ata = np.einsum("pni,pnj->pij", a, a)
    aty = np.einsum("pni,n->pi", a, y)
    ridge = 1e-10 * np.trace(ata, axis1=1, axis2=2)[:, None, None] * np.eye(3)
    coef = np.linalg.solve(ata + ridge, aty[..., None])[..., 0]  # (P, 3)
    ss = np.sum((y[None, :] - np.einsum("pni,pi->pn", a, coef)) ** 2, axis=1)
    # a fraction outside [0, 1] is not a two-site curve: prefer the admissible ones
    amp_hi, amp_lo = coef[:, 1], coef[:, 2]
    admissible = (amp_hi * amp_lo) > 0
    if np.any(admissible):
        ss = np.where(admissible, ss, np.inf)
    k = int(np.argmin(ss))
    bottom, amp_hi_k, amp_lo_k = (float(v) for v in coef[k])
    span = amp_hi_k + amp_lo_k
    frac = amp_hi_k / span if span != 0 else 0.5
    frac = float(np.clip(frac, 0.05, 0.95))
    return np.array([grid[ii[k]] - shift_hi, grid[jj[k]] - shift_lo, frac, bottom + span, bottom])


TWO_SITES_FIT_KI = Model(
    name="two-sites-fit-ki",
    params=("logKiHi", "logKiLo", "FractionHi", "Top", "Bottom"),
    constants=("HotNM", "HotKdNMHi", "HotKdNMLo"),
    f=_two_sites_ki,
    initial=_two_sites_ki_init,
    log10_params=("logKiHi", "logKiLo"),
    bounds={"FractionHi": (0.0, 1.0)},
)


# ------------------------------------------------------------- saturation, one site specific


def _saturation_specific(x: Array, p: AnyArray, constants: Mapping[str, float],
                         dataset: IntArray) -> AnyArray:
    bmax, kd = p[0], p[1]
    result: AnyArray = bmax * x / (kd + x)
    return result


def _kd_grid(x: Array) -> Array:
    pos = x[x > 0]
    if pos.size == 0:
        raise AnalysisError("saturation data need positive radioligand concentrations (nM)")
    return 10.0 ** _log_grid(float(np.log10(pos.min())), float(np.log10(pos.max())))


def _saturation_specific_init(x: Array, y: Array, constants: Mapping[str, float],
                              dataset: IntArray) -> Array:
    x, y, _ = _finite(x, y)
    kd = _kd_grid(x)
    g = x[None, :] / (kd[:, None] + x[None, :])
    ggs = np.sum(g * g, axis=1)
    bmax = np.sum(g * y[None, :], axis=1) / np.where(ggs > 0, ggs, 1.0)
    ss = np.sum((y[None, :] - bmax[:, None] * g) ** 2, axis=1)
    k = int(np.argmin(ss))
    return np.array([bmax[k], kd[k]])


SATURATION_SPECIFIC = Model(
    name="saturation-specific",
    params=("Bmax", "Kd"),
    constants=(),
    f=_saturation_specific,
    initial=_saturation_specific_init,
)


# ------------------------------------------ saturation, total and nonspecific (global fit)


def _saturation_total_ns(x: Array, p: AnyArray, constants: Mapping[str, float],
                         dataset: IntArray) -> AnyArray:
    bmax, kd, ns, background = p[0], p[1], p[2], p[3]
    nonspecific = ns * x + background
    specific = bmax * x / (kd + x)
    result: AnyArray = np.where(np.asarray(dataset) == 0, specific + nonspecific, nonspecific)
    return result


def _saturation_total_ns_init(x: Array, y: Array, constants: Mapping[str, float],
                              dataset: IntArray) -> Array:
    x, y, ds = _finite(x, y, dataset)
    is_total = (ds == 0).astype(np.float64)
    kd = _kd_grid(x)
    g = is_total[None, :] * x[None, :] / (kd[:, None] + x[None, :])  # (K, n)
    a = np.stack([g, np.broadcast_to(x, g.shape), np.ones_like(g)], axis=-1)  # (K, n, 3)
    ata = np.einsum("kni,knj->kij", a, a)
    aty = np.einsum("kni,n->ki", a, y)
    ridge = 1e-10 * np.trace(ata, axis1=1, axis2=2)[:, None, None] * np.eye(3)
    coef = np.linalg.solve(ata + ridge, aty[..., None])[..., 0]
    ss = np.sum((y[None, :] - np.einsum("kni,ki->kn", a, coef)) ** 2, axis=1)
    k = int(np.argmin(ss))
    bmax, ns, background = (float(v) for v in coef[k])
    return np.array([bmax, kd[k], ns, background])


SATURATION_TOTAL_NONSPECIFIC = Model(
    name="saturation-total-nonspecific",
    params=("Bmax", "Kd", "NS", "Background"),
    constants=(),
    f=_saturation_total_ns,
    initial=_saturation_total_ns_init,
    datasets=("total", "nsb"),
)


# ------------------------------------------------- one site, heterologous with depletion


def _heterologous_depletion(x: Array, p: AnyArray, constants: Mapping[str, float],
                            dataset: IntArray) -> AnyArray:
    """Prism's "One site - heterologous with depletion" (Y, Hot and Bmax in cpm).

    KdCPM = KdNM*SpAct*Vol*1000 (nM x mL x 1000 = fmol, x cpm/fmol); R = NS+1;
    S = (1+10^(X-logKi))*KdCPM + Hot; a = -R; b = R*S + NS*Hot + Bmax; c = -Hot*(S*NS + Bmax);
    Y = (-b + sqrt(b^2-4ac))/(2a), evaluated as the algebraically equal 2c/(-b - sqrt(b^2-4ac))
    which does not cancel when 4ac << b^2.
    """
    log_ki, bmax, ns = p[0], p[1], p[2]
    hot = constants["Hot"]
    kd_cpm = constants["KdNM"] * constants["SpAct"] * constants["Vol"] * 1000.0
    r = ns + 1.0
    s = (1.0 + 10.0 ** (x - log_ki)) * kd_cpm + hot
    a = -r
    b = r * s + ns * hot + bmax
    c = -hot * (s * ns + bmax)
    result: AnyArray = 2.0 * c / (-b - np.sqrt(b * b - 4.0 * a * c))
    return result


def _heterologous_depletion_init(x: Array, y: Array, constants: Mapping[str, float],
                                 dataset: IntArray) -> Array:
    hot = _const(constants, "Hot")
    kd_cpm = (_const(constants, "KdNM") * _const(constants, "SpAct") * _const(constants, "Vol")
              * 1000.0)
    if hot <= 0 or kd_cpm <= 0:
        raise AnalysisError("constants Hot, KdNM, SpAct and Vol must be positive")
    x, y, ds = _finite(x, y)
    # plateaus from the Hill-slope -1 scan (robust to noise and to missing plateaus)
    c, top, bottom = _sigmoid_start(x, y)
    y_low = float(np.clip(bottom, 1e-9 * hot, 0.9 * hot))
    y_top = float(np.clip(top, y_low * 1.01, 0.99 * hot))
    ns = y_low / (hot - y_low)  # all receptors blocked: Y = NS*(Hot - Y)
    free = hot - y_top
    specific = max(y_top - ns * free, 1e-6 * hot)
    bmax = specific * (kd_cpm + free) / free  # no competitor: B = Bmax*F/(KdCPM + F)
    centres = _log_grid(float(x.min()), float(x.max()))
    ss = np.array([
        float(np.sum((y - _heterologous_depletion(x, np.array([lk, bmax, ns]), constants,
                                                  ds)) ** 2))
        for lk in centres
    ])
    log_ki = float(centres[int(np.argmin(ss))]) if np.any(np.isfinite(ss)) else c
    return np.array([log_ki, bmax, ns])


HETEROLOGOUS_DEPLETION = Model(
    name="heterologous-depletion",
    params=("logKi", "Bmax", "NS"),
    constants=("Hot", "KdNM", "SpAct", "Vol"),
    f=_heterologous_depletion,
    initial=_heterologous_depletion_init,
    log10_params=("logKi",),
)


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        ONE_SITE_FIT_LOGIC50,
        FOUR_PARAM_LOGISTIC,
        ONE_SITE_FIT_KI,
        TWO_SITES_FIT_KI,
        SATURATION_SPECIFIC,
        SATURATION_TOTAL_NONSPECIFIC,
        HETEROLOGOUS_DEPLETION,
    )
}


def get_model(name: str) -> Model:
    """The model called ``name`` (kebab case), or AnalysisError listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise AnalysisError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}"
        ) from None

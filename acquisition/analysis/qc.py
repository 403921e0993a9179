"""QC verdicts for a binding plate and its fits (pure; no I/O).

Every check returns a :class:`Verdict` carrying the number that decided it and the threshold it
was compared with, so a report can say *why* a plate failed. The criteria are the NIH Assay
Guidance Manual's for receptor binding (science.md, "Sigma-1 receptor binding"):

========================  =========================================================  =========
code                      fails when                                                 threshold
========================  =========================================================  =========
``hill-slope``            the 95% CI of the 4PL HillSlope excludes -1                 -1
``spans-50``              the competitor data do not reach both sides of 50%          50 %
                          specific binding, or the fitted IC50 lies outside the
                          tested concentrations
``nsb-fraction``          mean NSB above 50% of mean total binding                    50 %
``ligand-depletion``      more than 10% of the added radioligand bound (total wells)  10 %
``z-prime``               Z' = 1 - 3(sd_T + sd_N)/|mean_T - mean_N| below 0.4          0.4
``top-vs-total``          fitted Top more than 20% of the assay window (mean_T -       20 %
                          mean_N) away from mean_T
``bottom-vs-nsb``         fitted Bottom more than 20% of the window away from mean_N  20 %
``counting-error``        the worst well's %2-sigma above the threshold               10 %
``luminescence``          any well flagged for luminescence by the counter            0 wells
========================  =========================================================  =========

Degenerate data give failing verdicts instead of exceptions: ``no-data``, ``nan-values``,
``missing-controls``, ``all-equal``, ``single-concentration``, ``negative-specific`` (see
:func:`check_data`); :func:`try_fit` turns an :class:`AnalysisError` from the fitter into a
``fit`` verdict. ``+-20%`` for Top/Bottom is taken relative to the assay window rather
than to each control's own mean, so that a small NSB does not make the Bottom check stricter
than the Top check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from acquisition.analysis.fit import FitResult, Model, fit
from acquisition.analysis.reduce import Reduction
from acquisition.errors import AnalysisError

__all__ = [
    "BLOCKING_CODES",
    "Verdict",
    "all_passed",
    "check_bottom_vs_nsb",
    "check_counting_error",
    "check_data",
    "check_hill_slope",
    "check_ligand_depletion",
    "check_luminescence",
    "check_nsb_fraction",
    "check_spans_50",
    "check_top_vs_total",
    "check_z_prime",
    "evaluate",
    "failures",
    "try_fit",
    "z_prime",
]

NSB_MAX_FRACTION: Final = 0.5
DEPLETION_MAX_FRACTION: Final = 0.10
Z_PRIME_MIN: Final = 0.4
PLATEAU_TOLERANCE: Final = 0.20
COUNTING_ERROR_MAX_PCT: Final = 10.0

BLOCKING_CODES: Final = frozenset({
    "no-data",
    "nan-values",
    "missing-controls",
    "all-equal",
    "single-concentration",
    "negative-specific",
    "fit",
})
"""Verdict codes after which no fitted number should be reported."""


@dataclass(frozen=True)
class Verdict:
    """One QC check: ``value`` is the number that decided it, ``threshold`` its limit."""

    code: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str


def failures(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if not v.passed]


def all_passed(verdicts: Sequence[Verdict]) -> bool:
    return all(v.passed for v in verdicts)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


# ------------------------------------------------------------------------- degenerate data


def check_data(reduction: Reduction, *, min_points: int = 4) -> list[Verdict]:
    """Is there anything to fit? Returns only failing verdicts (empty list: the data are usable).

    ``min_points``: the fewest competitor points a fit needs (parameters + 1).
    """
    out: list[Verdict] = []
    raw = np.array([w.record.cpm for w in reduction.wells], dtype=np.float64)
    if raw.size == 0:
        return [Verdict("no-data", False, 0.0, 1.0, "no wells: nothing to analyse")]
    bad = [w.record.well for w in reduction.wells
           if not math.isfinite(w.record.cpm)
           or (w.record.log_conc is not None and not math.isfinite(w.record.log_conc))]
    if bad:
        out.append(Verdict(
            "nan-values", False, float(len(bad)), 0.0,
            f"{len(bad)} well(s) have a NaN or infinite count or concentration: "
            f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}",
        ))
    missing = [role for role, s in (("total", reduction.total), ("nsb", reduction.nsb))
               if s.n == 0]
    if missing:
        out.append(Verdict(
            "missing-controls", False, 0.0, 1.0,
            f"no {' and no '.join(missing)} wells: the assay window cannot be defined",
        ))
    elif math.isfinite(reduction.specific_cpm) and reduction.specific_cpm <= 0:
        out.append(Verdict(
            "negative-specific", False, reduction.specific_cpm, 0.0,
            f"specific binding is {_fmt(reduction.specific_cpm)} cpm (total "
            f"{_fmt(reduction.total.mean)} <= NSB {_fmt(reduction.nsb.mean)}): no binding window",
        ))
    plate_flat = bool(np.isfinite(raw).all() and raw.size > 1 and float(np.ptp(raw)) == 0.0)
    if plate_flat:
        out.append(Verdict(
            "all-equal", False, float(raw[0]), None,
            f"all {raw.size} wells read the same {_fmt(float(raw[0]))} cpm: no signal",
        ))
    x, y = reduction.x, reduction.y
    ok = np.isfinite(x) & np.isfinite(y)
    n_conc = int(np.unique(x[ok]).size)
    if x.size == 0:
        out.append(Verdict("no-data", False, 0.0, float(min_points),
                           "no competitor wells: no curve to fit"))
    elif n_conc < 2:
        out.append(Verdict(
            "single-concentration", False, float(n_conc), 2.0,
            f"competitor wells span {n_conc} concentration(s): a curve needs at least 2 "
            f"(and {min_points} points)",
        ))
    elif int(ok.sum()) < min_points:
        out.append(Verdict(
            "no-data", False, float(ok.sum()), float(min_points),
            f"{int(ok.sum())} usable competitor point(s): the fit needs at least {min_points}",
        ))
    elif not plate_flat and np.ptp(y[ok]) == 0.0:
        out.append(Verdict(
            "all-equal", False, float(y[ok][0]), None,
            f"all competitor wells read the same {_fmt(float(y[ok][0]))} cpm: no curve",
        ))
    return out


MAX_LOG_SE = 2.0
"""A log10 parameter (logKi, LogIC50) with an SE above two decades is not determined."""
MAX_LOG_PROFILE_WIDTH = 8.0
"""... nor one whose 95% profile interval spans more than eight decades."""


def undetermined(result: FitResult) -> str | None:
    """Why the fit's key (log10) parameters are not determined by the data, or None.

    Prism calls such fits "ambiguous"; we report no numbers for them rather than invent one.
    """
    for name, p in result.params.items():
        if not name.lower().startswith("log") or (p.se is None and p.ci_low is None):
            continue  # not a log parameter, or fixed
        if p.se is None or not math.isfinite(p.se) or p.se > MAX_LOG_SE:
            return f"{name} is not determined by the data (SE {p.se} log units)"
        if p.profile_low is None and p.profile_high is None:
            continue  # profile not computed
        if p.profile_low is None or p.profile_high is None:
            return f"{name} is not determined by the data (its 95% profile interval is open)"
        if p.profile_high - p.profile_low > MAX_LOG_PROFILE_WIDTH:
            return (f"{name} is not determined by the data (its 95% profile interval spans "
                    f"{p.profile_high - p.profile_low:.3g} decades)")
    return None


def try_fit(
    model: Model,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    constants: Mapping[str, float] | None = None,
    profile: bool = True,
) -> tuple[FitResult | None, Verdict]:
    """Fit, turning an :class:`AnalysisError` into a failing ``fit`` verdict."""
    try:
        result = fit(model, x, y, constants=constants, profile=profile)
    except AnalysisError as exc:
        return None, Verdict("fit", False, None, None, f"{model.name}: {exc}")
    why = undetermined(result)
    if why is not None:
        return None, Verdict("fit", False, None, None, f"{model.name}: ambiguous: {why}")
    if not result.converged:
        return result, Verdict("fit", False, None, None,
                               f"{model.name}: did not converge ({result.message})")
    return result, Verdict("fit", True, None, None, f"{model.name}: converged")


# ----------------------------------------------------------------------------- the checks


def _ci(result: FitResult, name: str) -> tuple[float | None, float | None]:
    p = result.params[name]
    if p.profile_low is not None and p.profile_high is not None:
        return p.profile_low, p.profile_high
    return p.ci_low, p.ci_high


HILL_CI_MAX_WIDTH = 4.0
"""A Hill-slope CI wider than this is taken as undetermined, not as consistent with -1."""


def check_hill_slope(hill_fit: FitResult) -> Verdict:
    """The variable-slope (4PL) fit's HillSlope CI (profile if available) must contain -1."""
    if "HillSlope" not in hill_fit.params:
        raise AnalysisError(f"check_hill_slope needs a four-param-logistic fit, got "
                            f"{hill_fit.model!r}")
    est = hill_fit.params["HillSlope"].estimate
    lo, hi = _ci(hill_fit, "HillSlope")
    if lo is None or hi is None:
        return Verdict("hill-slope", False, est, -1.0,
                       f"Hill slope {_fmt(est)} has no confidence interval: cannot test it")
    if hi - lo > HILL_CI_MAX_WIDTH:
        # A CI this wide (e.g. a plate of pure noise) contains -1 without telling anything.
        return Verdict("hill-slope", False, est, -1.0,
                       f"Hill slope {_fmt(est)} is undetermined (95% CI {_fmt(lo)} to "
                       f"{_fmt(hi)}): the data do not define a curve")
    if lo <= -1.0 <= hi:
        return Verdict("hill-slope", True, est, -1.0,
                       f"Hill slope {_fmt(est)} (95% CI {_fmt(lo)} to {_fmt(hi)}) is "
                       "consistent with -1")
    return Verdict("hill-slope", False, est, -1.0,
                   f"Hill slope {_fmt(est)} (95% CI {_fmt(lo)} to {_fmt(hi)}) excludes -1: "
                   "not simple one-site competition")


def check_spans_50(reduction: Reduction, result: FitResult | None = None) -> Verdict:
    """The replicate means must lie on both sides of 50% specific binding and the fitted IC50
    (EC50) inside the tested concentrations."""
    means = np.array([p.percent_specific.mean for p in reduction.points], dtype=np.float64)
    means = means[np.isfinite(means)]
    if means.size == 0:
        return Verdict("spans-50", False, None, 50.0, "no competitor data to test the 50% span")
    hi, lo = float(means.max()), float(means.min())
    if hi < 50.0:
        return Verdict("spans-50", False, hi, 50.0,
                       f"the curve never rises above 50% specific binding (highest {_fmt(hi)}%)")
    if lo > 50.0:
        return Verdict("spans-50", False, lo, 50.0,
                       f"the curve never falls below 50% specific binding (lowest {_fmt(lo)}%): "
                       "extend the concentration range")
    if result is not None:
        centre = _log_centre(result)
        x = reduction.x[np.isfinite(reduction.x)]
        if centre is not None and x.size and not (x.min() <= centre <= x.max()):
            return Verdict("spans-50", False, centre, 50.0,
                           f"the fitted log IC50 {_fmt(centre)} lies outside the tested range "
                           f"{_fmt(float(x.min()))} to {_fmt(float(x.max()))}")
    return Verdict("spans-50", True, lo, 50.0,
                   f"the data span 50% specific binding ({_fmt(lo)}% to {_fmt(hi)}%)")


def _log_centre(result: FitResult) -> float | None:
    """log EC50 of a competition fit (LogIC50, or logKi shifted back by Cheng-Prusoff)."""
    if "LogIC50" in result.params:
        return result.params["LogIC50"].estimate
    if "logKi" in result.params and "HotNM" in result.constants and "HotKdNM" in result.constants:
        shift = math.log10(1.0 + result.constants["HotNM"] / result.constants["HotKdNM"])
        return result.params["logKi"].estimate + shift
    return None


def check_nsb_fraction(reduction: Reduction) -> Verdict:
    pct = reduction.nsb_percent_of_total
    limit = 100.0 * NSB_MAX_FRACTION
    if not math.isfinite(pct):
        return Verdict("nsb-fraction", False, None, limit, "NSB fraction undefined (no controls)")
    ok = pct <= limit
    return Verdict("nsb-fraction", ok, pct, limit,
                   f"NSB is {_fmt(pct)}% of total binding"
                   + ("" if ok else f" (above {_fmt(limit)}%): the window is mostly noise"))


def check_ligand_depletion(reduction: Reduction) -> Verdict | None:
    """None when the added radioligand was not given (nothing to compare with)."""
    frac = reduction.fraction_bound
    if frac is None:
        return None
    pct, limit = 100.0 * frac, 100.0 * DEPLETION_MAX_FRACTION
    if not math.isfinite(pct):
        return Verdict("ligand-depletion", False, None, limit, "fraction bound undefined")
    if pct <= limit:
        return Verdict("ligand-depletion", True, pct, limit,
                       f"{_fmt(pct)}% of the added radioligand bound")
    return Verdict("ligand-depletion", False, pct, limit,
                   f"{_fmt(pct)}% of the added radioligand bound (above {_fmt(limit)}%): "
                   "depletion biases Ki; refit with the heterologous-depletion model or use "
                   "less membrane")


def z_prime(mean_t: float, sd_t: float, mean_n: float, sd_n: float) -> float:
    """Z' = 1 - 3(sd_T + sd_N)/|mean_T - mean_N| (NaN when the window is zero)."""
    window = abs(mean_t - mean_n)
    if window == 0 or not math.isfinite(window):
        return math.nan
    return 1.0 - 3.0 * (sd_t + sd_n) / window


def check_z_prime(reduction: Reduction) -> Verdict:
    t, n = reduction.total, reduction.nsb
    if t.n < 2 or n.n < 2:
        return Verdict("z-prime", False, None, Z_PRIME_MIN,
                       f"Z' needs at least 2 total and 2 NSB wells (have {t.n} and {n.n})")
    z = z_prime(t.mean, t.sd, n.mean, n.sd)
    if not math.isfinite(z):
        return Verdict("z-prime", False, None, Z_PRIME_MIN,
                       "Z' undefined: total and NSB wells have the same mean")
    ok = z >= Z_PRIME_MIN
    return Verdict("z-prime", ok, z, Z_PRIME_MIN,
                   f"Z' = {z:.3f}" + ("" if ok else f" (below {Z_PRIME_MIN}): the window is too "
                                                   "small for its scatter"))


def _plateau(code: str, label: str, fitted: float, control: float, *, control_name: str,
             window: float) -> Verdict:
    limit = 100.0 * PLATEAU_TOLERANCE
    if not (math.isfinite(window) and window > 0 and math.isfinite(control)):
        return Verdict(code, False, None, limit, f"no assay window to compare {label} with")
    dev = 100.0 * (fitted - control) / window
    ok = abs(dev) <= limit
    return Verdict(code, ok, dev, limit,
                   f"fitted {label} {_fmt(fitted)} is {dev:+.1f}% of the window from the "
                   f"{control_name} wells ({_fmt(control)})"
                   + ("" if ok else f": outside +-{_fmt(limit)}%"))


def check_top_vs_total(reduction: Reduction, result: FitResult) -> Verdict:
    return _plateau("top-vs-total", "Top", result.params["Top"].estimate, reduction.total.mean,
                    control_name="total", window=reduction.specific_cpm)


def check_bottom_vs_nsb(reduction: Reduction, result: FitResult) -> Verdict:
    return _plateau("bottom-vs-nsb", "Bottom", result.params["Bottom"].estimate,
                    reduction.nsb.mean, control_name="NSB", window=reduction.specific_cpm)


def check_counting_error(reduction: Reduction,
                         threshold_pct: float = COUNTING_ERROR_MAX_PCT) -> Verdict | None:
    """The worst %2-sigma among the non-blank wells; None when no well reports it."""
    worst: tuple[float, str] | None = None
    for w in reduction.wells:
        if w.record.role == "blank":
            continue
        pct = w.record.pct_2sigma
        if pct is not None and (worst is None or not pct <= worst[0]):
            worst = (pct, w.record.well)
    if worst is None:
        return None
    pct, well = worst
    ok = pct <= threshold_pct
    return Verdict("counting-error", ok, pct, threshold_pct,
                   f"worst counting error {_fmt(pct)}% 2-sigma (well {well})"
                   + ("" if ok else f", above {_fmt(threshold_pct)}%: count longer"))


def check_luminescence(reduction: Reduction) -> Verdict:
    flagged = [w.record.well for w in reduction.wells if w.record.luminescent]
    if not flagged:
        return Verdict("luminescence", True, 0.0, 0.0, "no well flagged for luminescence")
    return Verdict("luminescence", False, float(len(flagged)), 0.0,
                   f"{len(flagged)} well(s) flagged for luminescence: "
                   f"{', '.join(flagged[:8])}{' ...' if len(flagged) > 8 else ''}; "
                   "dark-adapt and recount")


def evaluate(
    reduction: Reduction,
    result: FitResult | None = None,
    *,
    hill_fit: FitResult | None = None,
    counting_threshold_pct: float = COUNTING_ERROR_MAX_PCT,
) -> list[Verdict]:
    """All applicable verdicts for a plate. ``result`` is the competition fit (with Top and
    Bottom); ``hill_fit`` a four-param-logistic fit for the Hill-slope check. The degenerate-data
    verdicts come first; after one of them no fitted-parameter check is made."""
    verdicts = check_data(reduction)
    blocked = any(v.code in BLOCKING_CODES for v in verdicts)
    verdicts.append(check_luminescence(reduction))
    counting = check_counting_error(reduction, counting_threshold_pct)
    if counting is not None:
        verdicts.append(counting)
    if reduction.total.n and reduction.nsb.n:
        verdicts.append(check_nsb_fraction(reduction))
        verdicts.append(check_z_prime(reduction))
    depletion = check_ligand_depletion(reduction)
    if depletion is not None:
        verdicts.append(depletion)
    if blocked:
        return verdicts
    verdicts.append(check_spans_50(reduction, result))
    if result is not None and "Top" in result.params and "Bottom" in result.params:
        verdicts.append(check_top_vs_total(reduction, result))
        verdicts.append(check_bottom_vs_nsb(reduction, result))
    if hill_fit is not None:
        verdicts.append(check_hill_slope(hill_fit))
    return verdicts

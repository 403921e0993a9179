"""The membrane test from a voltage-clamp step, and a trace decimated for display.

From a step of ``dV`` (science.md, "Whole-cell patch clamp"): the steady current gives the
total resistance ``Rt = dV / dI_ss = Ra + Rm``; the transient above the new steady level
decays with ``tau = Cm * Ra * Rm / Rt`` and carries the charge
``Q = dV * Cm * Rm**2 / Rt**2``. From ``Rt``, ``tau`` and ``Q``::

    Rm = Q * Rt**2 / (tau * dV + Q * Rt),   Ra = Rt - Rm,   Cm = Q * Rt**2 / (dV * Rm**2)

This charge-and-tau route, unlike the transient's peak (``dV / Ra``), survives the
amplifier's Bessel filter: the filter moves charge in time but keeps it. ``tau`` is the
slope of ``log(I - I_ss)`` over the decay, from its peak down to a tenth of it.

:func:`decimate` keeps a trace's shape in at most ``max_points``: the minimum and maximum of
each bin, in time order, so a fast transient is not averaged away in what goes over MQTT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from acquisition.errors import AnalysisError

__all__ = ["MembraneTest", "decimate", "membrane_test"]

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MembraneTest:
    rt_ohm: float
    ra_ohm: float
    rm_ohm: float
    cm_f: float
    tau_s: float
    baseline_a: float  # the holding current before the step
    steady_a: float  # the current at the end of the step
    ra_peak_ohm: float | None = None
    """Ra by the transient's peak, dV / (I_peak - I_baseline): the textbook estimate, biased
    high by any low-pass filter (the peak is cut); ``ra_ohm`` is the charge method's."""

    def as_dict(self) -> dict[str, float | None]:
        return {"rt_ohm": self.rt_ohm, "ra_ohm": self.ra_ohm, "rm_ohm": self.rm_ohm,
                "cm_f": self.cm_f, "tau_s": self.tau_s, "baseline_a": self.baseline_a,
                "steady_a": self.steady_a, "ra_peak_ohm": self.ra_peak_ohm}  # fmt: skip


def membrane_test(
    current_a: Array, rate_hz: float, step_start: int, step_end: int, dv_v: float
) -> MembraneTest:
    """The test of the step ``dv_v`` applied from sample ``step_start`` to ``step_end``
    (exclusive). AnalysisError when the data cannot give one (no transient, a step too
    short to settle: the last fifth of it must be flat)."""
    i = np.asarray(current_a, dtype=np.float64)
    if not (0 < step_start < step_end <= len(i)) or dv_v == 0:
        raise AnalysisError("membrane test: a step inside the sweep, of a non-zero dV")
    base = float(np.mean(i[max(0, step_start - max(1, step_start // 2)) : step_start]))
    n = step_end - step_start
    tail = i[step_end - max(2, n // 5) : step_end]
    steady = float(np.mean(tail))
    di_ss = steady - base
    if di_ss == 0 or not math.isfinite(di_ss):
        raise AnalysisError("membrane test: no steady change in current (open circuit?)")
    rt = dv_v / di_ss
    excess = (i[step_start:step_end] - steady) * math.copysign(1.0, dv_v)
    peak_at = int(np.argmax(excess))
    peak = float(excess[peak_at])
    noise = float(np.std(tail)) if len(tail) > 2 else 0.0
    if peak <= 5 * noise or peak <= 0:
        raise AnalysisError("membrane test: no capacitive transient above the noise")
    decay = excess[peak_at:]
    below = np.nonzero(decay < peak / 10)[0]
    if len(below) == 0 or below[0] < 3:
        raise AnalysisError("membrane test: the transient does not decay within the step")
    seg = decay[: below[0]]
    t = np.arange(len(seg)) / rate_hz
    slope = float(np.polyfit(t, np.log(seg), 1)[0])
    if slope >= 0:
        raise AnalysisError("membrane test: the transient does not decay")
    tau = -1.0 / slope
    dt = 1.0 / rate_hz
    q = float(np.trapezoid(excess, dx=dt))  # the whole step: the settled part adds noise only
    if peak_at == 0:  # unfiltered: the charge before the first sample, from the exponential
        q += float(excess[0]) * tau * (math.exp(dt / tau) - 1.0)
    dv = abs(dv_v)
    rt = abs(rt)
    rm = q * rt**2 / (tau * dv + q * rt)
    ra = rt - rm
    cm = q * rt**2 / (dv * rm**2)
    peak_i = float(i[step_start + peak_at]) - base
    ra_peak = abs(dv_v / peak_i) if peak_i != 0 else None
    return MembraneTest(rt, ra, rm, cm, tau, base, steady, ra_peak)


def decimate(trace: Array, max_points: int = 1000) -> Array:
    """At most ``max_points`` samples keeping the trace's extremes (min and max per bin, in
    the order they occur); a trace that fits is returned as it is."""
    x = np.asarray(trace, dtype=np.float64)
    if max_points < 2:
        raise ValueError("max_points: at least 2")
    if len(x) <= max_points:
        return x
    bins = max_points // 2
    edges = np.linspace(0, len(x), bins + 1).astype(int)
    out = np.empty(2 * bins)
    for b in range(bins):
        chunk = x[edges[b] : edges[b + 1]]
        lo, hi = int(np.argmin(chunk)), int(np.argmax(chunk))
        first, second = (lo, hi) if lo <= hi else (hi, lo)
        out[2 * b], out[2 * b + 1] = chunk[first], chunk[second]
    return out

"""One recorded sweep's summary: what goes over MQTT while its samples go to the spool.

From the current (A) and the command at the cell (V), with where the sweep's membrane-test
pulse and ramp are (from the waveform, not guessed from the trace): the holding current
(before the command leaves the holding: the leak), the peak (the largest excursion from it,
signed; on a ramp, within the ramp past its jump's transient), the steady current at the end
of the pulse, the membrane test on the pulse (Ra, Rm, Cm, :mod:`.membrane`) and, on a ramp,
the persistent current: the ramp's current less the linear leak fitted where the membrane is
below -70 mV (no INaP there; the first 10 ms after the jump to the ramp's start, its
capacitive transient, left out), at its most inward, and the potential where that is; a ramp
with no stretch below -70 mV gives none.

QC flags name what a patch-clamper would reject a sweep for (science.md, after ipfx): the
access outside 1-20 MOhm or changed by more than 20 % from the run's first sweep, Ra/Rin
above 0.15, the leak beyond +-100 pA, the input resistance fallen by more than 30 % from the
first (a seal giving way), the current saturating the digitizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from acquisition.analysis.membrane import decimate, membrane_test
from acquisition.errors import AnalysisError

__all__ = ["Reference", "SweepFigures", "summarize_sweep"]

Array = npt.NDArray[np.float64]
QC_RA_OHM = (1e6, 20e6)
QC_RA_CHANGE = 0.20
QC_RA_OVER_RIN = 0.15
QC_LEAK_A = 100e-12
QC_RIN_FALL = 0.30
LEAK_BELOW_V = -0.070  # a ramp's leak is fitted below this (INaP opens above about -60 mV)
SMOOTH_S = 0.005
SETTLE_S = 0.010  # the capacitive transient of the jump to the ramp's start, left out of the fit


@dataclass(frozen=True)
class Reference:
    """The run's first sweep's access and input resistance, what later sweeps compare to."""

    ra_ohm: float | None = None
    input_ohm: float | None = None


@dataclass(frozen=True)
class SweepFigures:
    holding_a: float | None
    peak_a: float | None
    steady_a: float | None
    ra_ohm: float | None = None
    rm_ohm: float | None = None
    cm_f: float | None = None
    input_ohm: float | None = None
    inap_a: float | None = None
    inap_v: float | None = None
    qc: list[str] = field(default_factory=list)
    trace: list[float] = field(default_factory=list)


def summarize_sweep(
    current_a: Array, command_v: Array, rate_hz: float, *,
    pulse: tuple[int, int, float] | None = None, ramp: tuple[int, int] | None = None,
    reference: Reference | None = None, saturated: bool = False, max_points: int = 1000,
) -> SweepFigures:  # fmt: skip
    """``pulse``: (start, end, dV) of the membrane-test pulse; ``ramp``: (start, end)."""
    i = np.asarray(current_a, dtype=np.float64)
    cmd = np.asarray(command_v, dtype=np.float64)
    qc: list[str] = ["the current saturated the digitizer"] if saturated else []
    first_move = pulse[0] if pulse else (ramp[0] if ramp else len(i))
    head = i[: max(1, min(first_move, len(i)))]
    holding = float(np.mean(head[len(head) // 5 :])) if len(i) else None
    peak = steady = ra = rm = cm = rt = inap = inap_v = None
    if holding is not None:
        # on a ramp, the peak of the ramp's current (past the jump's transient), not the
        # capacitive spikes of the jumps; otherwise the sweep's largest excursion
        a, b = (ramp[0] + round(SETTLE_S * rate_hz), ramp[1]) if ramp else (0, len(i))
        window = i[a:b] if b > a else i
        peak = float(window[int(np.argmax(np.abs(window - holding)))])
        if abs(holding) > QC_LEAK_A:
            qc.append(f"leak {holding * 1e12:.0f} pA beyond +-100 pA")
    if pulse is not None:
        start, end, dv = pulse
        steady = float(np.mean(i[end - max(2, (end - start) // 5) : end]))
        try:
            test = membrane_test(i, rate_hz, start, end, dv)
        except AnalysisError as exc:
            qc.append(str(exc))
        else:
            ra, rm, cm, rt = test.ra_ohm, test.rm_ohm, test.cm_f, test.rt_ohm
            qc += _qc_access(ra, rt, reference or Reference())
    if ramp is not None:
        inap, inap_v = _persistent(i, cmd, rate_hz, *ramp)
    trace = [float(x) for x in decimate(i, max_points)] if len(i) else []
    return SweepFigures(holding, peak, steady, ra, rm, cm, rt, inap, inap_v, qc, trace)


def _qc_access(ra: float, rt: float, ref: Reference) -> list[str]:
    out: list[str] = []
    lo, hi = QC_RA_OHM
    if not lo <= ra <= hi:
        out.append(f"access resistance {ra / 1e6:.1f} MOhm is outside 1-20 MOhm")
    if ref.ra_ohm and abs(ra / ref.ra_ohm - 1) > QC_RA_CHANGE:
        out.append(f"access changed {100 * (ra / ref.ra_ohm - 1):+.0f} % from the first sweep "
                   f"({ref.ra_ohm / 1e6:.1f} -> {ra / 1e6:.1f} MOhm)")  # fmt: skip
    rin = rt - ra
    if rin > 0 and ra / rin > QC_RA_OVER_RIN:
        out.append(f"Ra/Rin {ra / rin:.2f} is above 0.15")
    if ref.input_ohm and rt < (1 - QC_RIN_FALL) * ref.input_ohm:
        out.append(f"input resistance fell to {rt / 1e6:.0f} MOhm from "
                   f"{ref.input_ohm / 1e6:.0f} (the seal giving way?)")  # fmt: skip
    return out


def _persistent(i: Array, cmd: Array, rate_hz: float, start: int,
                end: int) -> tuple[float | None, float | None]:  # fmt: skip
    """The ramp's leak-subtracted current at its most inward, and the potential there."""
    v, cur = cmd[start:end], i[start:end]
    if len(v) < 20:
        return None, None
    width = max(1, round(SMOOTH_S * rate_hz))
    smooth = np.convolve(cur, np.ones(width) / width, mode="same")
    settled = np.arange(len(v)) >= round(SETTLE_S * rate_hz)  # past the jump's transient
    below = (v <= LEAK_BELOW_V) & settled
    if below.sum() < max(10, len(v) // 20):
        return None, None  # no stretch below INaP's activation to fit the leak on: no value
    slope, intercept = np.polyfit(v[below], cur[below], 1)
    rest = ~below
    rest[: width] = rest[-width:] = False  # the smoothing's edges
    if not rest.any():
        return None, None
    residual = smooth - (slope * v + intercept)
    at = int(np.argmin(np.where(rest, residual, np.inf)))
    return float(residual[at]), float(v[at])

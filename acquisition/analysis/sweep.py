"""One recorded sweep's summary: what goes over MQTT while its samples go to the spool.

From the current (A) and the command at the cell (V): the holding current (before the
command leaves the holding), the peak (the largest excursion from it, signed), the steady
current at the end of a step, and for a step of at least 1 mV the membrane test (Ra, Rm,
Cm, :mod:`.membrane`). QC flags name what a patch-clamper would reject the sweep for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from acquisition.analysis.membrane import decimate, membrane_test
from acquisition.errors import AnalysisError

__all__ = ["QC_LIMITS", "SweepFigures", "summarize_sweep"]

Array = npt.NDArray[np.float64]
QC_LIMITS = {"ra_ohm": 25e6, "holding_a": 200e-12, "rm_ohm": 100e6}


@dataclass(frozen=True)
class SweepFigures:
    holding_a: float | None
    peak_a: float | None
    steady_a: float | None
    ra_ohm: float | None = None
    rm_ohm: float | None = None
    cm_f: float | None = None
    input_ohm: float | None = None
    qc: list[str] = field(default_factory=list)
    trace: list[float] = field(default_factory=list)


def summarize_sweep(current_a: Array, command_v: Array, rate_hz: float, holding_v: float, *,
                    saturated: bool = False, max_points: int = 1000,
                    tolerance_v: float = 1e-6) -> SweepFigures:  # fmt: skip
    """``tolerance_v``: how far the command may be from the holding and still be at it
    (half the resolution it was stored with)."""
    i = np.asarray(current_a, dtype=np.float64)
    cmd = np.asarray(command_v, dtype=np.float64)
    moved = np.nonzero(np.abs(cmd - holding_v) > tolerance_v)[0]
    first_move = int(moved[0]) if len(moved) else len(i)
    head = i[: max(1, min(first_move, len(i)))]
    holding = float(np.mean(head[len(head) // 5 :])) if len(head) else None
    qc: list[str] = ["the current saturated the digitizer"] if saturated else []
    peak = steady = ra = rm = cm = rt = None
    if holding is not None and len(i):
        at = int(np.argmax(np.abs(i - holding)))
        peak = float(i[at])
    if holding is not None and abs(holding) > QC_LIMITS["holding_a"]:
        qc.append(f"holding current {holding * 1e12:.0f} pA is beyond +-200 pA")
    step = _single_step(cmd, holding_v, tolerance_v)
    if step is not None:
        start, end, dv = step
        steady = float(np.mean(i[end - max(2, (end - start) // 5) : end]))
        if abs(dv) >= 1e-3:
            try:
                test = membrane_test(i, rate_hz, start, end, dv)
            except AnalysisError as exc:
                qc.append(str(exc))
            else:
                ra, rm, cm, rt = test.ra_ohm, test.rm_ohm, test.cm_f, test.rt_ohm
                if ra > QC_LIMITS["ra_ohm"]:
                    qc.append(f"access resistance {ra / 1e6:.1f} MOhm is above 25 MOhm")
                if rm < QC_LIMITS["rm_ohm"]:
                    qc.append(f"membrane resistance {rm / 1e6:.0f} MOhm is below 100 MOhm")
    trace = [float(x) for x in decimate(i, max_points)] if len(i) else []
    return SweepFigures(holding, peak, steady, ra, rm, cm, rt, qc, trace)


def _single_step(cmd: Array, holding_v: float, tolerance_v: float
                 ) -> tuple[int, int, float] | None:  # fmt: skip
    """(start, end, dV) if the command is one rectangular step away from the holding."""
    away = np.abs(cmd - holding_v) > tolerance_v
    edges = np.nonzero(np.diff(away.astype(np.int8)))[0]
    if len(edges) != 2 or away[0]:
        return None
    start, end = int(edges[0]) + 1, int(edges[1]) + 1
    level = cmd[start:end]
    if np.ptp(level) > 2 * tolerance_v:
        return None
    return start, end, float(level[0] - holding_v)

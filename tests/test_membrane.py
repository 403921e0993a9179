"""The membrane test finds the simulated model cell's Ra, Rm and Cm (its truth), filtered
or not; the decimated trace keeps the transient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import bessel, lfilter

from acquisition.analysis.membrane import decimate, membrane_test
from acquisition.errors import AnalysisError
from simulators.patch_cell import MODEL_CELL


def _step(rate: float, dv: float = -0.005) -> tuple[np.ndarray, int, int]:
    n = int(0.040 * rate)
    command = np.full(n, -0.070)
    start, end = n // 4, 3 * n // 4
    command[start:end] += dv
    current, _ = MODEL_CELL.voltage_clamp(command, rate)
    return current, start, end


@pytest.mark.parametrize("rate", [20_000.0, 100_000.0])
def test_the_membrane_test_finds_the_model_cell(rate: float) -> None:
    current, start, end = _step(rate)
    got = membrane_test(current, rate, start, end, -0.005)
    assert got.rt_ohm == pytest.approx(510e6, rel=0.01)
    assert got.rm_ohm == pytest.approx(500e6, rel=0.02)
    assert got.ra_ohm == pytest.approx(10e6, rel=0.10)
    assert got.cm_f == pytest.approx(33e-12, rel=0.05)
    assert got.tau_s == pytest.approx(MODEL_CELL.tau_s(), rel=0.05)


def test_through_a_2_khz_bessel_filter_the_charge_still_gives_rm_and_cm() -> None:
    """What the reference recording shows (science.md): the peak is filtered away, the
    charge and the decay are not."""
    rate = 100_000.0
    current, start, end = _step(rate)
    b, a = bessel(4, 2_000.0, fs=rate, norm="mag")
    filtered = lfilter(b, a, current - current[0]) + current[0]
    got = membrane_test(filtered, rate, start, end, -0.005)
    assert got.rm_ohm == pytest.approx(500e6, rel=0.03)
    assert got.cm_f == pytest.approx(33e-12, rel=0.15)
    peak = abs(float(np.min(filtered[start:end] - filtered[start - 1])))
    assert peak < 0.8 * 0.005 / 10e6, "the filter cuts the peak (dV/Ra) down"


def test_no_transient_is_an_analysis_error_not_a_number() -> None:
    flat = np.zeros(1000)
    with pytest.raises(AnalysisError, match="no steady change"):
        membrane_test(flat, 20_000.0, 250, 750, -0.005)


def test_decimate_keeps_the_extremes_in_order() -> None:
    current, _, _ = _step(100_000.0)
    small = decimate(current, 1000)
    assert len(small) <= 1000
    assert small.min() == current.min() and small.max() == current.max()
    assert np.array_equal(decimate(current[:500], 1000), current[:500])


def test_on_a_real_model_cell_recording_the_charge_gives_its_nominal_rm_and_cm() -> None:
    """A PATCH-1U model cell (Rm 500 MOhm +-1%, Cm 33 pF +-10%) recorded through a 2 kHz
    Bessel filter at 20 kHz (tests/data/patchclamp): the membrane test on the mean sweep."""
    import pyabf

    abf = pyabf.ABF(str(Path(__file__).parent / "data" / "patchclamp" / "model_vc_step.abf"))
    sweeps = []
    for number in abf.sweepList:
        abf.setSweep(number)
        sweeps.append(abf.sweepY * 1e-12)  # pA -> A
    command = abf.sweepC * 1e-3  # mV -> V
    start, end = (int(i) + 1 for i in np.nonzero(np.diff(command))[0][:2])
    got = membrane_test(np.mean(sweeps, axis=0), float(abf.sampleRate), start, end,
                        float(command[start] - command[0]))  # fmt: skip
    assert got.rm_ohm == pytest.approx(500e6, rel=0.02)
    assert got.cm_f == pytest.approx(33e-12, rel=0.10)
    assert 5e6 < got.ra_ohm < 20e6


def test_ra_by_the_peak_is_right_unfiltered_and_biased_high_through_a_filter() -> None:
    """Both methods, reported side by side: the peak's dV / I_peak finds Ra on the raw
    current at 100 kHz and overestimates it behind a 2 kHz Bessel, the charge does not."""
    rate = 100_000.0
    current, start, end = _step(rate)
    raw = membrane_test(current, rate, start, end, -0.005)
    assert raw.ra_peak_ohm == pytest.approx(10e6, rel=0.06)
    b, a = bessel(4, 2_000.0, fs=rate, norm="mag")
    filtered = lfilter(b, a, current - current[0]) + current[0]
    cut = membrane_test(filtered, rate, start, end, -0.005)
    assert cut.ra_peak_ohm is not None and cut.ra_peak_ohm > 1.5 * 10e6
    assert cut.as_dict()["ra_peak_ohm"] == cut.ra_peak_ohm

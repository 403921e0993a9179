"""The simulated cell's currents: the textbook voltage-clamp transient on the model cell,
INaP on a slow ramp, and the drugs acting through the bath as the truth says."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from simulators.patch_cell import MODEL_CELL, Bath, PatchCell, inap_scale, nmda_scale


def test_a_step_on_the_model_cell_gives_the_textbook_transient_and_steady_current() -> None:
    rate = 200_000.0
    n = int(0.02 * rate)
    command = np.full(n, -0.070)
    command[n // 4 :] = -0.060  # a 10 mV step at 5 ms
    current, _ = MODEL_CELL.voltage_clamp(command, rate)
    after = current[n // 4 :]
    steady = float(np.mean(after[-200:]))
    assert steady - float(current[0]) == pytest.approx(0.010 / (10e6 + 500e6), rel=0.02)
    excess = after - steady
    peak = excess[0]
    below = int(np.argmax(excess < peak / math.e))  # the first sample below 1/e of the peak
    tau = below / rate
    expected = 33e-12 * 10e6 * 500e6 / (10e6 + 500e6)  # Cm * Ra*Rm/(Ra+Rm) = 0.32 ms
    assert MODEL_CELL.tau_s() == pytest.approx(expected)
    assert tau == pytest.approx(expected, rel=0.10)
    assert peak == pytest.approx(0.010 / 10e6, rel=0.05)  # the charging current dV/Ra


def _ramp_inap(cell: PatchCell, bath: Bath) -> float:
    """The current at -40 mV on a slow ramp (-90 -> -20 mV over 1 s), less the same cell's
    passive response (leak and capacitive), as a leak subtraction does."""
    rate = 10_000.0
    command = np.linspace(-0.090, -0.020, int(rate))
    current, _ = cell.voltage_clamp(command, rate, bath)
    passive, _ = replace(cell, g_nap_s=0.0, g_nmda_s=0.0).voltage_clamp(command, rate, bath)
    i40 = int(np.argmin(np.abs(command + 0.040)))
    return float(current[i40] - passive[i40])


def test_inap_shows_on_a_slow_ramp_and_dheas_inhibits_it_through_s1r() -> None:
    cell = PatchCell()
    control = _ramp_inap(cell, Bath())
    assert control < -10e-12, "an inward persistent sodium current at -40 mV"
    dheas = _ramp_inap(cell, Bath({"DHEA-S": 10e-6}))
    expected = 1 - 0.40 * 10e-6 / (10e-6 + 1e-6)  # the truth: 36% inhibition at 10 uM
    assert inap_scale(Bath({"DHEA-S": 10e-6}), cell.effects) == pytest.approx(expected)
    assert dheas / control == pytest.approx(expected, rel=0.05)
    blocked = _ramp_inap(cell, Bath({"DHEA-S": 10e-6, "NE-100": 100e-9}))
    assert blocked / control > 0.99, "NE-100 at 100 Ki occupies S1R: DHEA-S has no effect"
    assert _ramp_inap(MODEL_CELL, Bath()) == pytest.approx(0.0, abs=1e-13)  # a passive cell


def test_nmda_evokes_an_inward_current_that_preg_s_potentiates() -> None:
    cell = PatchCell()
    rate = 10_000.0
    command = np.full(2000, -0.040)
    base, _ = cell.voltage_clamp(command, rate, Bath())
    nmda, _ = cell.voltage_clamp(command, rate, Bath({"NMDA": 100e-6}))
    pregs, _ = cell.voltage_clamp(command, rate, Bath({"NMDA": 100e-6, "PREG-S": 50e-6}))
    evoked = float(nmda[-1] - base[-1])
    potentiated = float(pregs[-1] - base[-1])
    assert evoked < -5e-12
    factor = nmda_scale(Bath({"PREG-S": 50e-6}), cell.effects)
    assert potentiated / evoked == pytest.approx(factor, rel=0.05) and factor > 1.5


def test_the_bath_is_what_the_perfusion_mixed() -> None:
    from simulators.perfusion_bath import BathModel

    solutions = {2: {"DHEA-S": 10e-6}, 3: {"DHEA-S": 10e-6, "NE-100": 100e-9}}
    bath = BathModel(flow_ul_per_s=30.0, dead_volume_ul=60.0, exchange_tau_s=20.0)
    bath.set_inlet(0.0, [2])  # DHEA-S from t = 0: it arrives after 2 s of dead volume
    early = Bath.mixed(bath.composition(1.0), solutions)
    late = Bath.mixed(bath.composition(2.0 + 5 * 20.0), solutions)
    assert early.of("DHEA-S") == 0.0
    assert late.of("DHEA-S") == pytest.approx(10e-6, rel=0.01)
    cell = PatchCell()
    assert inap_scale(late, cell.effects) < inap_scale(early, cell.effects)


def test_a_depolarising_step_opens_the_transient_sodium_current_which_inactivates() -> None:
    """From -80 mV to -20 mV: a fast inward current peaking within milliseconds and gone
    (inactivated) by 10 ms; the same step on a cell without INaT has no such peak."""
    rate = 100_000
    cmd = np.full(3000, -0.080)
    cmd[1000:] = -0.020
    with_na, _ = PatchCell().voltage_clamp(cmd, rate)
    without, _ = replace(PatchCell(), g_nat_s=0.0).voltage_clamp(cmd, rate)
    sodium = with_na - without
    peak_at = int(np.argmin(sodium[1000:])) + 1000
    assert sodium[peak_at] < -0.3e-9  # hundreds of pA inward
    assert (peak_at - 1000) / rate < 3e-3  # the membrane charges (Cm x Ra), then m opens
    assert abs(sodium[2900]) < 0.05 * abs(sodium[peak_at])  # inactivated


def test_a_recording_computed_block_by_block_is_the_same_as_at_once() -> None:
    """The membrane and the sodium gates carry over from one block to the next: a step
    cut by a block boundary mid-transient gives the same current as computed whole."""
    rate = 50_000
    cmd = np.full(4000, -0.080)
    cmd[1990:] = -0.020  # the boundary at 2000 falls 0.2 ms into the step
    cell = PatchCell()
    whole, _ = cell.voltage_clamp(cmd, rate)
    state: dict[str, float] = {}
    first, _ = cell.voltage_clamp(cmd[:2000], rate, state=state)
    second, _ = cell.voltage_clamp(cmd[2000:], rate, state=state)
    assert np.allclose(np.concatenate([first, second]), whole, rtol=0, atol=1e-15)

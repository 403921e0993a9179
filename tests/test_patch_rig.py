"""The simulated patch rig on its own (no wire): the patch's stages, the analog path's
noise and saturation, its faults seen by the sweep summary, the bath it answers, and its
settings refused or reported through the bench."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.analysis.sweep import Reference, summarize_sweep
from drivers.clock import VirtualClock
from simulators.bench import start_bench
from simulators.config import BenchConfig
from simulators.kinds import BenchError
from simulators.patch_rig import NOISE_A, PatchRig, RigSpec

RATE = 20_000


def _step(rig: PatchRig, dv: float = -0.010) -> tuple[np.ndarray, np.ndarray]:
    """A 200 ms sweep with a 100 ms step of ``dv`` from the holding: (current A, command V)."""
    ch = rig.channels[1]
    ch.test_enable = False  # a recording turns the seal test off
    cmd_at_cell = np.full(4000, ch.holding)
    cmd_at_cell[400:2400] += dv
    primary, _ = rig.respond(1, (cmd_at_cell - ch.holding) / 0.020, RATE)
    return primary / ch.scale_v_per_a(), cmd_at_cell


def test_the_patch_goes_from_bath_to_a_gigaseal_to_whole_cell() -> None:
    clock = VirtualClock()
    rig = PatchRig(RigSpec(stage="bath"), clock)
    assert rig.resistance_ohm() == pytest.approx(5e6)
    rig.move_to("cell_attached")
    assert rig.resistance_ohm() < 1e9  # the seal is still forming
    clock.advance(120)
    assert rig.resistance_ohm() > 1e9  # a gigaseal
    rig.move_to("whole_cell")
    rm = 1 / (1 / 500e6 + 1 / 3e9)
    assert rig.resistance_ohm() == pytest.approx(10e6 + rm, rel=1e-6)
    clock.advance(600)  # access creeps up half a per cent a minute
    assert rig.ra_ohm() == pytest.approx(10e6 * 1.05)


def test_feedback_noise_by_range_and_saturation_at_10_v() -> None:
    rig = PatchRig(RigSpec(cell="model_cell", stage="bath"), VirtualClock())
    ch = rig.channels[1]
    ch.lpf_hz, ch.test_enable = None, False
    for rf in (50e9, 500e6, 50e6):
        ch.feedback_ohm = rf
        out, _ = rig.respond(1, np.zeros(20_000), RATE)
        noise_a = np.std(out / ch.scale_v_per_a())
        assert noise_a == pytest.approx(NOISE_A[rf], rel=0.05)
    ch.feedback_ohm, ch.gain = 500e6, 2000
    out, _ = rig.respond(1, np.full(100, 5.0), RATE)  # +100 mV on 5 MOhm in the bath: 20 nA
    assert out.max() == 10.0


def test_a_bessel_filter_keeps_the_noise_down() -> None:
    rig = PatchRig(RigSpec(cell="model_cell", stage="bath"), VirtualClock())
    ch = rig.channels[1]
    ch.lpf_hz, ch.test_enable = None, False
    raw, _ = rig.respond(1, np.zeros(20_000), 100_000)
    ch.lpf_hz = 2_000
    filtered, _ = rig.respond(1, np.zeros(20_000), 100_000)
    assert np.std(filtered) < 0.35 * np.std(raw)  # a 2 kHz of 50 kHz bandwidth


def test_rs_runaway_and_seal_loss_are_what_the_sweep_summary_flags() -> None:
    clock = VirtualClock()
    rig = PatchRig(RigSpec(cell="model_cell", ra_drift_per_min=0.0, electrode_offset_v=0.0),
                   clock)  # fmt: skip
    pulse = (400, 2400, -0.010)
    current, cmd = _step(rig)
    good = summarize_sweep(current, cmd, RATE, pulse=pulse)
    assert good.qc == [] and good.ra_ohm == pytest.approx(10e6, rel=0.1)
    first = Reference(good.ra_ohm, good.input_ohm)
    rig.inject_fault("rs_runaway")
    clock.advance(60)
    current, cmd = _step(rig)
    runaway = summarize_sweep(current, cmd, RATE, pulse=pulse, reference=first)
    assert runaway.ra_ohm == pytest.approx(50e6, rel=0.15)
    assert any("outside 1-20 MOhm" in q for q in runaway.qc)
    assert any("access changed +" in q and "from the first sweep" in q for q in runaway.qc)
    rig.move_to("whole_cell")  # a new cell, then its seal gives way
    rig.inject_fault("seal_loss")
    current, cmd = _step(rig)
    leaky = summarize_sweep(current, cmd, RATE, pulse=pulse, reference=first)
    assert leaky.rm_ohm == pytest.approx(1 / (1 / 500e6 + 1 / 100e6), rel=0.1)
    assert any("input resistance fell" in q for q in leaky.qc)
    assert leaky.input_ohm is not None and leaky.input_ohm < 0.3 * good.input_ohm  # type: ignore[operator]


def test_the_cell_sits_in_the_bath_the_perfusion_makes() -> None:
    composition = {1: 0.25, 3: 0.75}
    spec = RigSpec(solutions={"3": {"DHEA-S": 10e-6}})
    rig = PatchRig(spec, VirtualClock(), bath=lambda: composition)
    assert rig.bath().of("DHEA-S") == pytest.approx(7.5e-6)
    assert rig.truth()["bath_molar"] == {"DHEA-S": pytest.approx(7.5e-6)}


@pytest.mark.parametrize(("rig", "error"), [
    ({"bogus": 1}, "simulation.rig.bogus: no such setting"),
    ({"cell": "squid"}, "simulation.rig.cell: 'neuron' or 'model_cell'"),
    ({"solutions": {"9": {"NMDA": 1e-5}}}, "simulation.rig.solutions.9: a valve 1-8"),
])  # fmt: skip
async def test_rig_settings_are_checked_when_the_bench_starts(rig: dict[str, object],
                                                              error: str) -> None:  # fmt: skip
    config = BenchConfig.model_validate({
        "simulation": {"rig": rig, "control_port": 0},
        "instruments": [{"id": "amp", "kind": "amplifier", "address": "tcp://127.0.0.1:0"}],
    })  # fmt: skip
    with pytest.raises(BenchError, match=error.replace(".", r"\.")):
        await start_bench(config, VirtualClock())


async def test_the_truth_reports_the_rig_and_its_true_effects() -> None:
    config = BenchConfig.model_validate({
        "simulation": {"rig": {"dheas_inap_max_inhibition": 0.55}, "control_port": 0},
        "instruments": [{"id": "amp", "kind": "amplifier", "address": "tcp://127.0.0.1:0"},
                        {"id": "dig", "kind": "digitizer", "address": "tcp://127.0.0.1:0"}],
    })  # fmt: skip
    bench = await start_bench(config, VirtualClock())
    try:
        truth = bench.control.handle(b'{"op": "truth"}')["truth"]["patch_rig"]
        assert truth["effects"]["dheas_inap_max_inhibition"] == 0.55
        assert truth["stage"] == "whole_cell"
        moved = bench.control.handle(b'{"op": "patch", "stage": "bath"}')
        assert moved["ok"] and moved["rig"]["stage"] == "bath"
    finally:
        await bench.stop()


def test_a_slow_ramp_shows_the_persistent_current_that_dheas_reduces_and_ne100_keeps() -> None:
    from acquisition.waveforms import RampWaveform, command_at_cell, segments

    wave = RampWaveform.model_validate({"shape": "ramp", "from": "-100 mV", "to": "+20 mV",
                                        "duration": "2 s"})  # fmt: skip
    cmd = command_at_cell(wave, -0.070, RATE)
    seg = segments(wave, RATE)
    assert seg["pulse"] is not None and seg["ramp"] is not None
    pulse = (int(seg["pulse"][0]), int(seg["pulse"][1]), float(seg["pulse"][2]))
    ramp = (int(seg["ramp"][0]), int(seg["ramp"][1]))

    def inap(solution: dict[str, float]) -> float:
        rig = PatchRig(RigSpec(ra_drift_per_min=0.0, electrode_offset_v=0.0,
                               solutions={"3": solution}), VirtualClock(),
                       bath=lambda: {3: 1.0})  # fmt: skip
        ch = rig.channels[1]
        ch.test_enable, ch.lpf_hz = False, 2_000.0
        primary, _ = rig.respond(1, (cmd - ch.holding) / 0.020, RATE)
        fig = summarize_sweep(primary / ch.scale_v_per_a(), cmd, RATE, pulse=pulse, ramp=ramp)
        assert fig.inap_v is not None and -0.060 < fig.inap_v < -0.010
        assert fig.ra_ohm == pytest.approx(10e6, rel=0.2)  # the ramp's own test pulse
        assert fig.inap_a is not None
        return fig.inap_a

    control = inap({})
    dheas = inap({"DHEA-S": 10e-6})
    blocked = inap({"DHEA-S": 10e-6, "NE-100": 1e-6})
    assert control < -50e-12  # inward, tens of pA and more
    assert dheas > 1.1 * control  # less inward: inhibited
    assert blocked == pytest.approx(control, rel=0.05)  # NE-100 occupies S1R


def test_no_persistent_current_reads_as_none_not_as_the_jumps_transient() -> None:
    """A cell without INaP: the leak fit leaves the ramp's start transient out, so what is
    left is next to nothing (it read -35 pA when the fit included the transient)."""
    from acquisition.waveforms import RampWaveform, command_at_cell, segments

    wave = RampWaveform.model_validate({"shape": "ramp", "from": "-100 mV", "to": "+20 mV",
                                        "duration": "2 s"})  # fmt: skip
    cmd = command_at_cell(wave, -0.070, RATE)
    seg = segments(wave, RATE)
    rig = PatchRig(RigSpec(g_nap_s=0.0, g_nat_s=0.0, ra_drift_per_min=0.0), VirtualClock())
    ch = rig.channels[1]
    ch.test_enable, ch.lpf_hz = False, 2_000.0
    primary, _ = rig.respond(1, (cmd - ch.holding) / 0.020, RATE)
    ramp = (int(seg["ramp"][0]), int(seg["ramp"][1]))  # type: ignore[index]
    fig = summarize_sweep(primary / ch.scale_v_per_a(), cmd, RATE, ramp=ramp)
    assert fig.inap_a is not None and abs(fig.inap_a) < 10e-12


def test_the_qc_reference_is_the_first_sweep_that_passed() -> None:
    from acquisition.spool import SpooledSweep
    from acquisition.steps.record import run_reference

    def spooled(index: int, ra: float, qc: list[str]) -> SpooledSweep:
        return SpooledSweep(index, {"figures": {"ra_ohm": ra, "input_ohm": 5e8}, "qc": qc},
                            {})  # fmt: skip

    sweeps = [spooled(1, 25e6, ["access resistance 25.0 MOhm is outside 1-20 MOhm"]),
              spooled(2, 8e6, [])]  # fmt: skip
    assert run_reference(sweeps).ra_ohm == 8e6  # not the failing first one


def test_only_a_small_step_is_a_membrane_test() -> None:
    from acquisition.waveforms import StepWaveform, segments

    def pulse(step: str, at: str = "20 ms") -> object:
        wave = StepWaveform.model_validate({"shape": "step", "step": step, "at": at,
                                            "width": "100 ms", "length": "200 ms"})  # fmt: skip
        return segments(wave, RATE)["pulse"]

    assert pulse("-10 mV") == [400, 2400, pytest.approx(-0.010)]
    assert pulse("+40 mV") is None  # an activation step: a stimulus, no access QC on it
    assert pulse("-10 mV", at="0 ms") is None  # no baseline before it to measure from

"""The patch-clamp steps before recording, through the daemon on the simulated rig: the
seal test, break-in, membrane test, compensation and holding; and their failures (a cell
that will not seal, a patch that will not rupture) never reported as a whole cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acquisition.protocols import parse_protocol, plan
from devtools.mosquitto import MosquittoBroker
from tests.crash_lab import Lab, lab_stack

pytestmark = pytest.mark.slow

KINDS = ("perfusion", "amplifier", "digitizer")
RIG = """
[simulation.rig]
cell = "neuron"
stage = "bath"
"""

PATCH = """
name = "patch-a-cell"
[[steps]]
type = "seal_test"
threshold = "1 GOhm"
timeout = "2 min"
[[steps]]
type = "break_in"
timeout = "30 s"
[[steps]]
type = "membrane_test"
tests = 3
[[steps]]
type = "compensate"
rs_correction = "60 %"
[[steps]]
type = "set_holding"
holding = "-60 mV"
"""


def test_the_plan_of_the_patch_steps() -> None:
    protocol, _ = parse_protocol(PATCH)
    lines = [line.settings for line in plan(protocol).steps]
    assert lines[0] == "seal test 10 mV at 50 Hz until 1.00 GOhm"
    assert lines[1].startswith("rupture the patch at -70 mV")
    assert lines[2] == "3 x -10 mV at -70 mV: Ra, Rm, Cm"
    assert "Rs 60 % correction" in lines[3] and lines[4] == "hold at -60 mV"


def _finished(lab: Lab, run: str) -> dict[str, dict[str, Any]]:
    return {d["step"]: d["detail"] for d in lab.documents(run)
            if d["kind"] == "step" and d["phase"] == "finished"}  # fmt: skip


async def test_a_cell_is_sealed_broken_into_measured_and_compensated(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=RIG) as lab:  # fmt: skip
        run = await lab.start(PATCH)
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", final
        done = _finished(lab, run)
        assert done["seal_test"]["seal_ohm"] >= 1e9 and done["seal_test"]["stage"] == \
            "cell_attached"  # fmt: skip
        assert "moved the pipette onto a new cell" in done["seal_test"]["by"]
        assert done["break_in"]["stage"] == "whole_cell"
        assert done["break_in"]["cm_f"] == pytest.approx(33e-12, rel=0.15)
        test = done["membrane_test"]
        assert test["ra_ohm"] == pytest.approx(10e6, rel=0.15)
        assert test["cm_f"] == pytest.approx(33e-12, rel=0.15)
        rin = 1 / (1 / 500e6 + 1 / 3e9)  # the membrane and the seal in parallel
        assert test["rm_ohm"] == pytest.approx(rin, rel=0.10)
        assert test["qc"] == [] and test["tests"] == 3
        comp = done["compensate"]
        assert comp["whole_cell_cm_f"] == pytest.approx(33e-12, rel=0.05)
        assert comp["rs_enable"] is True and comp["rs_correction_pct"] == 60.0
        assert done["set_holding"] == {"holding_v": pytest.approx(-0.060), "enabled": True,
                                       "index": 5}  # fmt: skip
        amp = (await lab.sim("state", instrument="amplifier"))["channels"]["1"]
        assert amp["holding"] == pytest.approx(-0.060) and amp["rs_correction_pct"] == 60.0


async def test_a_cell_that_will_not_seal_is_a_fault_never_a_seal(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=RIG) as lab:  # fmt: skip
        await lab.sim("fault", instrument="amplifier", kind="no_seal")
        run = await lab.start(PATCH.replace('timeout = "2 min"', 'timeout = "20 s"'))
        state = await lab.wait(run, lambda s: s["state"] == "awaiting-recovery", "a fault")
        message = state["message"]
        assert "no seal of 1.00 GOhm within 20 s (best " in message, state
        best = float(message.split("(best ")[1].split(" MOhm")[0])
        assert 50 < best < 305  # growing towards the cell's 300 MOhm ceiling, never past it
        await lab.client.request("run.abort", {"run": run})
        assert (await lab.wait_ended(run))["state"] == "aborted"
        assert "seal_test" not in _finished(lab, run)


async def test_a_patch_that_does_not_rupture_is_not_a_whole_cell_until_it_does(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=RIG) as lab:  # fmt: skip
        await lab.sim("fault", instrument="amplifier", kind="no_break_in")
        run = await lab.start(PATCH)
        state = await lab.wait(run, lambda s: s["state"] == "awaiting-recovery", "a fault")
        assert "no whole-cell access within 30 s" in state["message"], state
        assert "not a cell yet" in state["message"] or "transient" in state["message"]
        await lab.client.request("run.recover", {"run": run, "action": "retry"})
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", final  # the second suction ruptured it
        assert _finished(lab, run)["break_in"]["stage"] == "whole_cell"


async def test_a_seal_giving_way_mid_recording_flags_the_sweeps_then_pauses_the_run(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    protocol = """
name = "watch-the-seal"
[[steps]]
type = "record"
stimulus = "membrane-test"
sweeps = 40
interval = "3 s"
on_qc_fail = "pause"
qc_fail_sweeps = 2
subject = { subject_id = "sim", species = "Rattus norvegicus", sex = "U", age = "P21D" }
[steps.waveform]
shape = "step"
step = "-10 mV"
width = "100 ms"
length = "200 ms"
"""
    rig = RIG.replace('"bath"', '"whole_cell"')
    async with lab_stack(tmp_path, broker, time_scale=20.0, kinds=KINDS,
                         simulation_extra=rig) as lab:  # fmt: skip
        run = await lab.start(protocol)
        await lab.wait(run, lambda s: (s.get("progress") or {}).get("done", 0) >= 4, "4 sweeps")
        await lab.sim("fault", instrument="amplifier", kind="seal_loss")
        state = await lab.wait(run, lambda s: s["state"] == "paused", "the QC pause")
        assert "2 sweeps in a row failed QC" in state["message"], state
        assert "input resistance fell" in state["message"]
        sweeps = [d["reading"] for d in lab.documents(run)
                  if d["kind"] == "data" and d.get("stream") == "sweep"]  # fmt: skip
        flagged = [s for s in sweeps if s["qc"]]
        assert len(flagged) >= 2 and all(not s["qc"] for s in sweeps[:4])  # kept, flagged
        await lab.client.request("run.abort", {"run": run})
        assert (await lab.wait_ended(run))["state"] == "aborted"


def test_protocol_checks_of_the_patch_steps() -> None:
    from acquisition.errors import ConfigError

    with pytest.raises(ConfigError, match="a step other than 0 mV"):
        parse_protocol('name = "x"\n[[steps]]\ntype = "membrane_test"\nstep = "0 mV"\n')
    recorded_in_a_solution = """
name = "y"
[[steps]]
type = "perfuse"
valve = 1
solution = "baseline"
[[steps]]
type = "record"
stimulus = "m"
sweeps = 2
subject = { subject_id = "s", species = "Rattus norvegicus", sex = "U", age = "P21D" }
[steps.waveform]
shape = "step"
step = "-10 mV"
width = "10 ms"
length = "40 ms"
[[steps]]
type = "analyze_effect"
baseline = "baseline"
"""
    parse_protocol(recorded_in_a_solution)  # the record step's condition is its solution's
    with pytest.raises(ConfigError, match="the condition of a record step before it"):
        parse_protocol(recorded_in_a_solution.replace('baseline = "baseline"',
                                                      'baseline = "control"'))

"""The record step through the daemon on the simulated patch rig: perfuse then 50 sweeps,
spooled and summarised, an NWB file that pynwb and nwbinspector accept."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.cli.client import DaemonClient
from acquisition.protocols import parse_protocol, plan
from acquisition.waveforms import StepWaveform, command_at_cell
from devtools.mosquitto import MosquittoBroker
from tests.e2e import lab_stack, wait_connected, wait_run_state

RIG = """
[simulation.rig]
cell = "model_cell"
ra_drift_per_min = 0.0
electrode_offset_v = 0.0

[simulation.rig.solutions]
3 = { "DHEA-S" = 10e-6 }
"""

PROTOCOL = """
name = "membrane-test-in-drug"
[[steps]]
type = "perfuse"
valve = 3
solution = "aCSF + DHEA-S 10 uM"
[[steps]]
type = "record"
stimulus = "membrane-test"
sweeps = 50
interval = "1 s"
holding = "-70 mV"
rate = "20 kHz"
subject = { subject_id = "model-cell-1", species = "Rattus norvegicus", sex = "U", age = "P21D" }
[steps.waveform]
shape = "step"
step = "-10 mV"
at = "20 ms"
width = "100 ms"
length = "200 ms"
"""


def test_the_plan_and_the_command() -> None:
    protocol, _ = parse_protocol(PROTOCOL)
    line = plan(protocol).steps[1]
    assert "membrane-test: 50 x step -10 mV for 100 ms" in line.settings
    assert line.duration_s == pytest.approx(50.0)
    wave = StepWaveform(shape="step", step="-10 mV", at="20 ms", width="100 ms",
                        length="200 ms")  # type: ignore[arg-type]  # fmt: skip
    cmd = command_at_cell(wave, -0.070, 20_000)
    assert len(cmd) == 4000 and cmd[0] == -0.070 and cmd[400] == pytest.approx(-0.080)
    assert cmd[2400] == -0.070


def _documents(journal: Path, run: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows = db.execute("SELECT payload FROM documents WHERE run = ? ORDER BY seq", (run,))
        return [json.loads(r[0]) for r in rows.fetchall()]


@pytest.mark.slow
async def test_perfuse_and_record_end_with_an_nwb_file_pynwb_and_nwbinspector_accept(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    from nwbinspector import Importance, inspect_nwbfile
    from pynwb import NWBHDF5IO

    with lab_stack(tmp_path, broker.port, kinds=("perfusion", "amplifier", "digitizer"),
                   time_scale=20.0, simulation_extra=RIG) as stack:  # fmt: skip
        async with DaemonClient(stack.config) as client:
            await wait_connected(client)
            amp = next(i for i in await client.request("instruments")
                       if i["kind"] == "amplifier")  # fmt: skip
            assert amp["readings"]["mode"] == "VC"
            run = (await client.request("run.start", {"protocol": "membrane-test-in-drug",
                                                      "protocol_toml": PROTOCOL}))["run"]
            await wait_run_state(client, run, "completed", timeout_s=60)
        docs = _documents(stack.lab.journal_path, run)
    sweeps = [d["reading"] for d in docs if d["kind"] == "data" and d["stream"] == "sweep"]
    assert [s["sweep"] for s in sweeps] == list(range(1, 51))
    for s in sweeps:
        assert s["solution"] == "aCSF + DHEA-S 10 uM" and s["samples"] == 4000
        assert s["ra_ohm"] == pytest.approx(10e6, rel=0.15)
        assert s["rm_ohm"] == pytest.approx(500e6, rel=0.05)
        assert s["cm_f"] == pytest.approx(33e-12, rel=0.10)
        assert s["qc"] == [] and 0 < len(s["trace"]) <= 1000
    (artifact,) = [d for d in docs if d["kind"] == "artifact"]
    assert artifact["media_type"] == "application/x-nwb" and "50 sweeps" in artifact["holds"]
    nwb_file = stack.lab.journal_path.parent / "data" / artifact["path"]
    assert nwb_file.stat().st_size == artifact["size_bytes"]
    with NWBHDF5IO(str(nwb_file), "r") as io:
        nwb = io.read()
        assert len(nwb.intracellular_recordings) == 50
        assert sorted(int(s.sweep_number) for s in nwb.acquisition.values()) == \
            list(range(1, 51))  # fmt: skip
        conditions = nwb.icephys_experimental_conditions
        assert list(conditions["condition"].data[:]) == ["aCSF + DHEA-S 10 uM"]
        resp = nwb.acquisition["response_00003"]
        stim = nwb.stimulus["stimulus_00003"]
        telegraph = json.loads(resp.comments)["telegraph"]
        assert telegraph["mode"] == "VC" and telegraph["ext_cmd_sensitivity"] == 0.020
        current = resp.data[:] * resp.conversion
        command = stim.data[:] * stim.conversion
        assert command[0] == pytest.approx(-0.070, abs=1e-5)
        steady = np.mean(current[1800:2400]) - np.mean(current[100:400])
        assert steady == pytest.approx(-0.010 / 510e6, rel=0.03)  # dV / (Ra + Rm)
    critical = [m for m in inspect_nwbfile(nwbfile_path=str(nwb_file))
                if m.importance == Importance.CRITICAL]  # fmt: skip
    assert critical == [], [m.message for m in critical]

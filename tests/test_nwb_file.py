"""The NWB file written from a run's spool: every sweep with its stimulus, telegraph and
condition, readable by pynwb, and nothing nwbinspector calls critical."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from acquisition.nwb_file import NwbRun, write_nwb
from acquisition.spool import SpooledSweep, SweepSpool, read_spool

RATE = 20_000.0
V_PER_COUNT = 20.0 / 65536  # +-10 V over 16 bits
A_PER_COUNT = V_PER_COUNT / 0.5e9  # 0.5 V/nA: the primary output's gain


def _sweep(index: int, condition: str, solution: str) -> SpooledSweep:
    t = np.arange(2000) / RATE
    command_v = np.where((t > 0.02) & (t < 0.07), -0.010, -0.070)  # a 50 ms step to -10 mV
    current_a = (command_v + 0.070) / 510e6 + 1e-12 * np.sin(t * 2e3)  # dV / (Ra + Rm)
    return SpooledSweep(
        index=index,
        meta={"sample_rate_hz": RATE, "starting_time_s": 2.0 * index,
              "stimulus": "step -70 -> -10 mV, 50 ms", "stimulus_type": "step",
              "condition": condition, "solution": solution, "holding_v": -0.070,
              "telegraph": {"mode": "VC", "gain_v_per_a": 0.5e9, "lpf_hz": 10_000.0,
                            "cm_pf": 33.0, "rs_mohm": 10.0, "ext_cmd_mv_per_v": 20.0},
              "compensation": {"capacitance_slow_f": 33e-12, "rs_correction_pct": 70.0,
                               "rs_prediction_pct": 70.0, "rs_bandwidth_hz": 1000.0}},
        channels={"im": np.round(current_a / A_PER_COUNT).astype(np.int16),
                  "command": np.round(command_v / V_PER_COUNT).astype(np.int16)},
        units={"im": "A", "command": "V"}, scales={"im": A_PER_COUNT, "command": V_PER_COUNT},
    )  # fmt: skip


PLAN = [("baseline", "aCSF")] * 3 + [("DHEA-S 10 uM", "aCSF + DHEA-S")] * 3 + [
    ("washout", "aCSF")] * 2


def test_a_spooled_run_becomes_an_nwb_file_pynwb_reads_and_nwbinspector_accepts(
    tmp_path: Path,
) -> None:
    from nwbinspector import Importance, inspect_nwbfile
    from pynwb import NWBHDF5IO

    spool_path = tmp_path / "runs" / "R1" / "sweeps.spool"
    with SweepSpool.open(spool_path) as spool:
        for i, (condition, solution) in enumerate(PLAN, start=1):
            spool.append(_sweep(i, condition, solution))
    sweeps = read_spool(spool_path).sweeps
    run = NwbRun(run="R1", started_at=datetime(2026, 12, 2, 9, 0, tzinfo=UTC),
                 description="whole-cell VC, DHEA-S on INaP (simulated)", cell_id="cell-1",
                 lab="test lab", experimenter=["Doe, Jane"],
                 subject={"subject_id": "sim-1", "species": "Rattus norvegicus", "sex": "U",
                          "age": "P21D", "description": "the simulator's model cell"})  # fmt: skip
    out = tmp_path / "runs" / "R1" / "R1.nwb"
    written = write_nwb(out, run, list(reversed(sweeps)))  # written in sweep order anyway
    assert written.sweeps == 8 and written.conditions == ["baseline", "DHEA-S 10 uM", "washout"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["R1.nwb", "sweeps.spool"]

    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert nwb.identifier == "assay-run-R1" and nwb.session_id == "R1"
        assert len(nwb.intracellular_recordings) == 8
        assert len(nwb.icephys_sequential_recordings) == 3
        conditions = nwb.icephys_experimental_conditions  # (to_dataframe warns in pandas 3)
        assert list(conditions["condition"].data[:]) == ["baseline", "DHEA-S 10 uM", "washout"]
        assert list(conditions["solution"].data[:]) == ["aCSF", "aCSF + DHEA-S", "aCSF"]
        first = _sweep(1, *PLAN[0])
        resp = nwb.acquisition["response_00001"]
        stim = nwb.stimulus["stimulus_00001"]
        assert np.array_equal(resp.data[:], first.channels["im"])
        assert np.array_equal(stim.data[:], first.channels["command"])
        assert resp.conversion == pytest.approx(A_PER_COUNT) and resp.rate == RATE
        steady = float(np.mean(resp.data[1000:1300])) * resp.conversion
        assert steady == pytest.approx(0.060 / 510e6, rel=0.01)  # dV / (Ra + Rm), in A
        assert json.loads(resp.comments)["telegraph"]["cm_pf"] == 33.0
        assert resp.resistance_comp_correction == 70.0 and resp.sweep_number == 1

    critical = [m for m in inspect_nwbfile(nwbfile_path=str(out))
                if m.importance == Importance.CRITICAL]  # fmt: skip
    assert critical == [], [m.message for m in critical]


def test_a_sweep_without_its_channels_is_refused(tmp_path: Path) -> None:
    bad = SpooledSweep(1, {"sample_rate_hz": RATE}, {"im": np.zeros(4, np.int16)})
    run = NwbRun("R2", datetime(2026, 12, 2, tzinfo=UTC), "x")
    with pytest.raises(ValueError, match="missing command"):
        write_nwb(tmp_path / "x.nwb", run, [bad])
    assert not (tmp_path / "x.nwb").exists()

"""Issue 3's proof: load -> incubate -> harvest -> count on the simulated bench, through the
real drivers and the virtual operator, gives counts that follow the world's truth.

Everything runs as it would in a lab: ``assay-sim bench`` in its own process serving the
counter (VISA socket), incubator (Modbus TCP) and harvester (a pty), one shared world; the
test drives them over those wires. Simulated time runs 3000x faster than real time.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from acquisition.config import load_config
from devtools.scripted_assay import AssayOutcome, run_scripted_assay
from devtools.stack import SimBenchProcess, free_port, write_lab_config
from drivers.clock import ScaledClock

pytestmark = pytest.mark.slow
SCALE = 3000.0
ROWS = "ABC"  # progesterone, in triplicate, columns 3 (1e-5 M) .. 12 (1e-11 M)


def _bench(tmp_path: Path) -> tuple[SimBenchProcess, Path]:
    lab = write_lab_config(
        tmp_path,
        broker_port=free_port(),  # no broker needed: the drivers talk to the bench directly
        time_scale=SCALE,
        kinds=("counter", "incubator", "harvester"),
        simulation_extra="[simulation.incubator]\nambient_c = 20.0\ninitial_c = 20.0\n",
    )
    return SimBenchProcess(lab), lab.config_path


def _mean(out: AssayOutcome, wells: list[str]) -> float:
    return statistics.fmean(out.wells[w].ccpm for w in wells)


async def test_counts_follow_the_one_site_truth_and_a_short_cold_incubation_binds_less(
    tmp_path: Path,
) -> None:
    sim, config_path = _bench(tmp_path)
    with sim:
        config = load_config(config_path)
        clock = ScaledClock(SCALE)
        full = await run_scripted_assay(config, clock, plate_id="P37", minutes=90, celsius=37)
        short = await run_scripted_assay(config, clock, plate_id="P20", minutes=10, celsius=20)

    assert len(full.wells) == 96 and full.mat_id.startswith("P37")
    total = _mean(full, [f"{r}1" for r in "ABCDEFGH"])
    nsb = _mean(full, [f"{r}2" for r in "ABCDEFGH"])
    assert total > 5 * nsb, (total, nsb)  # mostly specific binding, with PEI

    # The one-site model: specific binding at competitor C is 1 / (1 + C / IC50),
    # IC50 = Ki (1 + L / Kd) (Cheng-Prusoff). L = 5 nM (the layout's radioligand).
    truth = full.truth
    ic50_m = truth["ki_nm"]["progesterone"] * (1 + 5.0 / truth["kd_nm"]) * 1e-9
    concentrations = [10 ** (-5 - 6 * i / 9) for i in range(10)]  # columns 3..12
    for col, conc in zip(range(3, 13), concentrations, strict=True):
        wells = [f"{r}{col}" for r in ROWS]
        observed = (_mean(full, wells) - nsb) / (total - nsb)
        expected = 1 / (1 + conc / ic50_m)
        # Poisson on 3 x 60 s of counts plus pipetting scatter (2% CV) and the error of the
        # total and NSB means: 4 sigma is about 0.1, while a Ki off by 2x moves mid-curve
        # wells by about 0.16.
        counts = sum(full.wells[w].counts for w in wells)
        sigma = math.sqrt(counts) / counts * _mean(full, wells) / (total - nsb) + 0.025
        assert abs(observed - expected) < 4 * sigma, (col, conc, observed, expected)

    # Too short and too cold binds less, by what the kinetics say. The world records each
    # plate's temperature history as minutes-equivalent at 37 C; from the truth,
    # B/Beq = 1 - exp(-kobs t) with kobs = kon L + koff (L = 5 nM, no competitor).
    kobs = truth["kon_per_nm_per_min"] * 5.0 + truth["koff_per_min"]
    for out in (full, short):
        predicted = 1 - math.exp(-kobs * out.plate["equivalent_min_at_reference"])
        assert abs(out.plate["total_binding_of_equilibrium"] - predicted) < 0.05
    # 10 min at 20 C is worth ~2-3 min at 37 C (Q10): ignoring temperature it would be >= 0.63.
    assert short.plate["total_binding_of_equilibrium"] < 0.4
    assert full.plate["total_binding_of_equilibrium"] > 0.99
    # ... and the counts on the filter mat show exactly that ratio of specific binding.
    short_total = _mean(short, [f"{r}1" for r in "ABCDEFGH"])
    short_nsb = _mean(short, [f"{r}2" for r in "ABCDEFGH"])
    observed = (short_total - short_nsb) / (total - nsb)
    expected = (
        short.plate["total_binding_of_equilibrium"] / full.plate["total_binding_of_equilibrium"]
    )
    assert abs(observed - expected) < 0.08, (observed, expected)
    assert full.harvest.washes == 3 and full.harvest.peak_vacuum_bar < -0.3

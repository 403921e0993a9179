"""The seed's patch-clamp experiment through the daemon on the simulated rig, shortened:
seal test, break-in, membrane test, compensation, ramps in baseline, DHEA-S, DHEA-S +
NE-100 and washout, the effect analysed. The drug effect found is the simulated cell's
(with its true effect sizes, the default and a configured one), and none when the truth
has none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.analysis.sweep import summarize_sweep
from acquisition.waveforms import RampWaveform, command_at_cell, segments
from devtools.mosquitto import MosquittoBroker
from simulators.patch_cell import Bath, DrugEffects, PatchCell
from tests.crash_lab import Lab, lab_stack

pytestmark = pytest.mark.slow

KINDS = ("perfusion", "amplifier", "digitizer")
RAMP = '''[steps.waveform]
shape = "ramp"
from = "-100 mV"
to = "+20 mV"
duration = "2 s"
'''


def _protocol() -> str:
    steps = ['name = "s1r-short"', '[[steps]]\ntype = "seal_test"',
             '[[steps]]\ntype = "break_in"', '[[steps]]\ntype = "membrane_test"\ntests = 3',
             '[[steps]]\ntype = "compensate"',
             '[[steps]]\ntype = "set_holding"\nholding = "-70 mV"']
    plan = [("baseline", None, ""), ("DHEA-S", 3, "aCSF + DHEA-S 10 uM"),
            ("DHEA-S + NE-100", 4, "aCSF + DHEA-S 10 uM + NE-100 1 uM"), ("washout", 1, "aCSF")]
    for i, (condition, valve, solution) in enumerate(plan):
        if valve is not None:
            steps.append(f'[[steps]]\ntype = "perfuse"\nvalve = {valve}\nsolution = "{solution}"')
        subject = ('subject = { subject_id = "sim", species = "Rattus norvegicus", sex = "U", '
                   'age = "P21D" }\n') if i == 0 else ""
        steps.append(f'[[steps]]\ntype = "record"\nstimulus = "inap-ramp"\ncondition = '
                     f'"{condition}"\nsweeps = 6\ninterval = "3 s"\n{subject}{RAMP}')
    steps.append('[[steps]]\ntype = "analyze_effect"\nlast = 4')
    return "\n".join(steps) + "\n"


def _rig(extra: str = "") -> str:
    return f"""
[simulation.rig]
cell = "neuron"
stage = "bath"
{extra}
[simulation.rig.solutions]
3 = {{ "DHEA-S" = 10e-6 }}
4 = {{ "DHEA-S" = 10e-6, "NE-100" = 1e-6 }}
"""


def _expected_pct(effects: DrugEffects, bath: dict[str, float]) -> float:
    """What the ramp analysis gives on the simulated cell itself, noise-free: the truth of
    this measure (the persistent current includes a little of the transient current's
    window and of INaP below -70 mV that the leak fit takes, so it is not the conductance's
    ratio)."""
    rate = 20_000
    wave = RampWaveform.model_validate({"shape": "ramp", "from": "-100 mV", "to": "+20 mV",
                                        "duration": "2 s"})  # fmt: skip
    cmd = command_at_cell(wave, -0.070, rate)
    seg = segments(wave, rate)
    ramp = (int(seg["ramp"][0]), int(seg["ramp"][1]))  # type: ignore[index]
    cell = PatchCell(ra_ohm=10e6 * (1 - 0.95 * 0.70), rm_ohm=1 / (1 / 500e6 + 1 / 3e9),
                     effects=effects)  # fmt: skip
    out = []
    for molar in ({}, bath):
        current, _ = cell.voltage_clamp(cmd, rate, Bath(molar))
        out.append(summarize_sweep(current, cmd, rate, ramp=ramp).inap_a)
    return 100 * out[1] / out[0]  # type: ignore[operator]


async def _run(lab: Lab) -> tuple[str, dict[str, Any]]:
    run = await lab.start(_protocol())
    final = await lab.wait_ended(run)
    assert final["state"] == "completed", final
    results = await lab.client.request("results", {"run": run})
    return run, results


@pytest.mark.parametrize("inhibition", [0.40, 0.75])
async def test_dheas_inhibits_inap_ne100_prevents_it_washout_recovers(
    tmp_path: Path, broker: MosquittoBroker, inhibition: float
) -> None:
    extra = f"dheas_inap_max_inhibition = {inhibition}"
    async with lab_stack(tmp_path, broker, time_scale=50.0, kinds=KINDS,
                         simulation_extra=_rig(extra)) as lab:  # fmt: skip
        run, results = await _run(lab)
        truth = (await lab.sim("truth"))["truth"]["patch_rig"]["effects"]
        assert truth["dheas_inap_max_inhibition"] == inhibition
    effect = results["analysis"]
    assert effect["schema"] == "assay.effect/1" and effect["qc_flagged"] == 0
    pct = {c["condition"]: c["pct_of_baseline"] for c in effect["conditions"]}
    expected = _expected_pct(DrugEffects(dheas_inap_max_inhibition=inhibition),
                             {"DHEA-S": 10e-6})  # fmt: skip
    assert pct["DHEA-S"] == pytest.approx(expected, abs=2.0)  # the right sign and size
    assert pct["DHEA-S"] < 100 - 20 * inhibition  # a real inhibition, larger when larger
    assert pct["DHEA-S + NE-100"] == pytest.approx(100, abs=2.0)  # prevented through S1R
    assert pct["washout"] == pytest.approx(100, abs=2.0)  # recovered
    assert effect["cell_start"]["cm_f"] == pytest.approx(33e-12, rel=0.15)
    assert len(results["sweeps"]) == 24 and all(s["condition"] for s in results["sweeps"])
    (nwb,) = {a["path"] for a in results["artifacts"]}
    assert nwb.endswith(f"{run}.nwb")


async def test_no_effect_is_found_when_the_truth_has_none(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    rig = _rig("dheas_inap_max_inhibition = 0.0")
    async with lab_stack(tmp_path, broker, time_scale=50.0, kinds=KINDS,
                         simulation_extra=rig) as lab:  # fmt: skip
        _, results = await _run(lab)
    pct = {c["condition"]: c["pct_of_baseline"] for c in results["analysis"]["conditions"]}
    for condition in ("DHEA-S", "DHEA-S + NE-100", "washout"):
        assert pct[condition] == pytest.approx(100, abs=2.0), (condition, pct)
    json.dumps(results)  # the reply is plain JSON
    assert np.isfinite(list(pct.values())).all()

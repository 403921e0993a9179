"""Several simulated cells, one a run, pooled: the paired comparison across cells finds
DHEA-S's inhibition (the truth of every cell) significant, and NE-100 back at baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from acquisition.analysis.drug_effect import EffectResult, paired_across_cells
from devtools.mosquitto import MosquittoBroker
from tests.crash_lab import lab_stack
from tests.test_patch_experiment import KINDS, _protocol, _rig

pytestmark = pytest.mark.slow


async def test_three_cells_paired(tmp_path: Path, broker: MosquittoBroker) -> None:
    effects = []
    rig = _rig("cell_variability = 0.25\nseed = 5")
    async with lab_stack(tmp_path, broker, time_scale=50.0, kinds=KINDS,
                         simulation_extra=rig) as lab:  # fmt: skip
        for _ in range(3):
            run = await lab.start(_protocol())
            assert (await lab.wait_ended(run))["state"] == "completed"
            results = await lab.client.request("results", {"run": run})
            effects.append(EffectResult.model_validate(results["analysis"]))
        assert (await lab.sim("truth"))["truth"]["patch_rig"]["cell"] == 4  # the bench's + 3
    baselines = [e.conditions[0].mean for e in effects]
    assert len({round(b * 1e12) for b in baselines}) == 3  # three different cells
    drug, blocked, washout = paired_across_cells(effects)
    assert drug.n_cells == 3 and drug.t_p is not None and drug.t_p < 0.01
    assert drug.mean_pct_of_baseline == pytest.approx(68, abs=4)
    assert blocked.mean_pct_of_baseline == pytest.approx(100, abs=2)
    assert washout.mean_pct_of_baseline == pytest.approx(100, abs=2)

"""Monte Carlo check of the Ki confidence interval: 200 simulated 96-well competition plates of
known Ki, Poisson counting noise, fitted with One site - Fit Ki. The 95% profile-likelihood CI
of Ki (back-transformed from logKi) must cover the truth in 90-99% of the plates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.analysis.fit import fit
from acquisition.analysis.models import MODELS
from acquisition.analysis.reduce import WellRecord, cheng_prusoff_ic50, reduce_plate

KI_M = 1.0e-7  # 100 nM: a progesterone-like competitor at S1R
KD_NM = 5.0  # [3H](+)-pentazocine
HOT_NM = 5.0  # radioligand at about its Kd
SPECIFIC_CPM = 4000.0  # specific binding without competitor
NSB_CPM = 400.0
BACKGROUND_CPM = 20.0
COUNT_MIN = 1.0  # counting time per well
N_CONTROL = 6  # total wells and NSB wells each
LOG_CONC = np.linspace(-11.0, -4.25, 28)  # 28 concentrations x 3 replicates
N_PLATES = 200


def simulate_plate(rng: np.random.Generator) -> list[WellRecord]:
    """6 total + 6 NSB + 28 x 3 competitor wells = 96; counts ~ Poisson(rate * time)."""
    ic50_m = cheng_prusoff_ic50(KI_M, HOT_NM, KD_NM)

    def counted(rate_cpm: float) -> tuple[float, float]:
        counts = float(rng.poisson((rate_cpm + BACKGROUND_CPM) * COUNT_MIN))
        return counts / COUNT_MIN, counts

    wells: list[WellRecord] = []
    for i in range(N_CONTROL):
        cpm, n = counted(SPECIFIC_CPM + NSB_CPM)
        wells.append(WellRecord(f"T{i}", cpm, "total", counts=n))
        cpm, n = counted(NSB_CPM)
        wells.append(WellRecord(f"N{i}", cpm, "nsb", counts=n))
    for j, x in enumerate(LOG_CONC):
        rate = NSB_CPM + SPECIFIC_CPM / (1.0 + 10.0 ** x / ic50_m)
        for k in range(3):
            cpm, n = counted(rate)
            wells.append(WellRecord(f"C{j}.{k}", cpm, "competitor", float(x), counts=n))
    assert len(wells) == 96
    return wells


@pytest.mark.slow
def test_ki_confidence_interval_covers_the_truth_in_90_to_99_percent_of_plates() -> None:
    rng = np.random.default_rng(20240604)
    model = MODELS["one-site-fit-ki"]
    constants = {"HotNM": HOT_NM, "HotKdNM": KD_NM}
    covered_profile = covered_asymptotic = 0
    log_kis = []
    for _ in range(N_PLATES):
        r = reduce_plate(simulate_plate(rng), background_cpm=BACKGROUND_CPM)
        result = fit(model, r.x, r.y, constants=constants)
        assert result.converged, result.message
        ki = result.derived["Ki"]
        assert ki.profile_low is not None and ki.profile_high is not None
        assert ki.profile_low < ki.estimate < ki.profile_high
        covered_profile += ki.profile_low <= KI_M <= ki.profile_high
        assert ki.ci_low is not None and ki.ci_high is not None
        covered_asymptotic += ki.ci_low <= KI_M <= ki.ci_high
        log_kis.append(result.params["logKi"].estimate)
    coverage = covered_profile / N_PLATES
    assert 0.90 <= coverage <= 0.99, f"profile CI coverage {coverage:.3f}"
    assert 0.90 <= covered_asymptotic / N_PLATES <= 0.99
    # and the estimator is unbiased to well within its scatter
    mean, sd = float(np.mean(log_kis)), float(np.std(log_kis, ddof=1))
    assert abs(mean - math.log10(KI_M)) < 3 * sd / math.sqrt(N_PLATES)

"""Data reduction (acquisition.analysis.reduce) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.analysis.reduce import (
    DPM_PER_FMOL_PER_CI_PER_MMOL,
    WellRecord,
    added_radioligand_fmol,
    cpm_to_dpm,
    dpm_to_fmol,
    fmol_per_mg,
    fmol_to_dpm,
    reduce_plate,
    summarize,
)
from acquisition.errors import AnalysisError


def plate() -> list[WellRecord]:
    """Blanks 30 cpm; total net 2000 +- 100; NSB net 200 +- 20; competitor at two
    concentrations (net 1100 = 50% specific at 1e-8 M; net 380 and 420 at 1e-6 M)."""
    return [
        WellRecord("A1", 30.0, "blank"),
        WellRecord("A2", 30.0, "blank"),
        WellRecord("B1", 2030.0, "total", counts=2030, flags=()),
        WellRecord("B2", 2130.0, "total", counts=2130),
        WellRecord("B3", 1930.0, "total", counts=1930),
        WellRecord("C1", 230.0, "nsb", counts=230),
        WellRecord("C2", 250.0, "nsb", counts=250),
        WellRecord("C3", 210.0, "nsb", counts=210),
        WellRecord("D2", 1130.0, "competitor", log_conc=-8.0),
        WellRecord("D1", 1130.0, "competitor", log_conc=-8.0),
        WellRecord("E1", 410.0, "competitor", log_conc=-6.0),
        WellRecord("E2", 450.0, "competitor", log_conc=-6.0),
    ]


# ----------------------------------------------------------------- unit conversions


def test_one_ci_per_mmol_is_2_22_dpm_per_fmol() -> None:
    assert DPM_PER_FMOL_PER_CI_PER_MMOL == 2.22
    assert fmol_to_dpm(1.0, 1.0) == pytest.approx(2.22)
    # 1 pmol of 26.6 Ci/mmol [3H](+)-pentazocine: 26.6 nCi = 59052 dpm
    assert fmol_to_dpm(1000.0, 26.6) == pytest.approx(59052.0)
    assert dpm_to_fmol(59052.0, 26.6) == pytest.approx(1000.0)


def test_cpm_to_dpm_subtracts_background_then_divides_by_efficiency() -> None:
    assert cpm_to_dpm(1030.0, 0.4, background_cpm=30.0) == pytest.approx(2500.0)
    assert cpm_to_dpm(570.0, 0.57) == pytest.approx(1000.0)
    for bad in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(AnalysisError, match="efficiency"):
            cpm_to_dpm(100.0, bad)


def test_fmol_per_mg_and_added_radioligand() -> None:
    assert fmol_per_mg(50.0, 0.1) == pytest.approx(500.0)
    with pytest.raises(AnalysisError, match="protein"):
        fmol_per_mg(50.0, 0.0)
    # 4 nM in 250 uL is 1 pmol
    assert added_radioligand_fmol(4.0, 0.25) == pytest.approx(1000.0)
    with pytest.raises(AnalysisError, match="specific activity"):
        dpm_to_fmol(100.0, 0.0)


def test_summarize_gives_sample_sd_and_nan_for_too_few() -> None:
    s = summarize([1900.0, 2000.0, 2100.0])
    assert (s.n, s.mean, s.sd) == (3, 2000.0, pytest.approx(100.0))
    assert s.sem == pytest.approx(100.0 / math.sqrt(3))
    assert s.cv_pct == pytest.approx(5.0)
    one = summarize([5.0])
    assert one.mean == 5.0 and math.isnan(one.sd)
    none = summarize([])
    assert none.n == 0 and math.isnan(none.mean)


# --------------------------------------------------------------------- the plate


def test_background_total_nsb_and_specific_binding() -> None:
    r = reduce_plate(plate())
    assert r.background_cpm == pytest.approx(30.0)
    assert (r.total.n, r.total.mean, r.total.sd) == (3, pytest.approx(2000.0),
                                                     pytest.approx(100.0))
    assert (r.nsb.n, r.nsb.mean, r.nsb.sd) == (3, pytest.approx(200.0), pytest.approx(20.0))
    assert r.specific_cpm == pytest.approx(1800.0)
    assert r.percent_specific_of_total == pytest.approx(90.0)
    assert r.nsb_percent_of_total == pytest.approx(10.0)
    by_well = {w.record.well: w for w in r.wells}
    d1 = by_well["D1"]
    assert d1.net_cpm == pytest.approx(1100.0)
    assert d1.specific_cpm == pytest.approx(900.0)
    assert d1.percent_specific == pytest.approx(50.0)
    assert by_well["E1"].percent_specific == pytest.approx(100.0 * 180.0 / 1800.0)


def test_competitor_points_are_individual_replicates_sorted_by_x() -> None:
    r = reduce_plate(plate())
    np.testing.assert_array_equal(r.x, [-8.0, -8.0, -6.0, -6.0])
    np.testing.assert_allclose(r.y, [1100.0, 1100.0, 380.0, 420.0])
    np.testing.assert_allclose(r.y_percent, [50.0, 50.0, 10.0, 100.0 * 220.0 / 1800.0])
    assert [p.log_conc for p in r.points] == [-8.0, -6.0]
    e = r.points[1]
    assert e.net_cpm.n == 2
    assert e.net_cpm.mean == pytest.approx(400.0)
    assert e.net_cpm.sd == pytest.approx(math.sqrt(2 * 20.0**2))
    assert e.percent_specific.mean == pytest.approx(100.0 * 200.0 / 1800.0)


def test_explicit_background_overrides_the_blanks() -> None:
    r = reduce_plate(plate(), background_cpm=0.0)
    assert r.total.mean == pytest.approx(2030.0)
    assert r.specific_cpm == pytest.approx(1800.0)  # background cancels in the window
    no_blanks = [w for w in plate() if w.role != "blank"]
    r0 = reduce_plate(no_blanks)
    assert r0.background_cpm == 0.0
    assert any("background 0" in n for n in r0.notes)


def test_dpm_fmol_and_fmol_per_mg() -> None:
    r = reduce_plate(plate(), efficiency=0.5, specific_activity=26.6, protein_mg=0.1)
    assert r.total_dpm == pytest.approx(4000.0)
    assert r.specific_dpm == pytest.approx(3600.0)
    fmol = 3600.0 / (26.6 * 2.22)  # 60.96 fmol
    assert r.specific_fmol == pytest.approx(fmol)
    assert r.specific_fmol_per_mg == pytest.approx(fmol / 0.1)
    assert r.specific_fmol_per_mg == pytest.approx(609.63, rel=1e-4)
    d1 = next(w for w in r.wells if w.record.well == "D1")
    assert d1.dpm == pytest.approx(2200.0)
    assert d1.specific_fmol == pytest.approx(1800.0 / 59.052)
    assert d1.specific_fmol_per_mg == pytest.approx(1800.0 / 59.052 / 0.1)


def test_without_efficiency_no_dpm_is_made_up() -> None:
    r = reduce_plate(plate(), specific_activity=26.6, protein_mg=0.1)
    assert r.total_dpm is None and r.specific_fmol is None and r.specific_fmol_per_mg is None
    assert r.fraction_bound is None
    assert all(w.dpm is None for w in r.wells)


def test_fraction_of_added_radioligand_bound() -> None:
    # a counted aliquot: cpm over cpm
    assert reduce_plate(plate(), added_cpm=40000.0).fraction_bound == pytest.approx(0.05)
    # added DPM: total net 2000 cpm at 40% = 5000 dpm of 100000
    r = reduce_plate(plate(), efficiency=0.4, added_dpm=100000.0)
    assert r.fraction_bound == pytest.approx(0.05)
    # 5 nM in 0.25 mL at 26.6 Ci/mmol: 1250 fmol = 73815 dpm; bound 2000/0.5 = 4000 dpm
    r2 = reduce_plate(plate(), efficiency=0.5, specific_activity=26.6, radioligand_nm=5.0,
                      volume_ml=0.25)
    assert r2.fraction_bound == pytest.approx(4000.0 / 73815.0)


def test_well_record_validation_and_flags() -> None:
    with pytest.raises(AnalysisError, match="role"):
        WellRecord("A1", 1.0, "sample")  # type: ignore[arg-type]
    with pytest.raises(AnalysisError, match="concentration"):
        WellRecord("A1", 1.0, "competitor")
    w = WellRecord("A1", 100.0, "total", counts=400, flags=("L",))
    assert w.pct_2sigma == pytest.approx(10.0)
    assert w.luminescent
    assert WellRecord("A1", 100.0, "total", sigma2_pct=3.0, counts=400).pct_2sigma == 3.0
    assert WellRecord("A1", 100.0, "total").pct_2sigma is None


def test_from_a_count_run_reading() -> None:
    reading = {"well": "B7", "cpm": 1210.0, "ccpm": 1200.0, "counts": 1210, "sigma2_pct": 5.75,
               "flags": ["L"], "index": 3}
    w = WellRecord.from_reading(reading, "competitor", -7.5)
    assert (w.well, w.cpm, w.log_conc, w.sigma2_pct, w.flags) == ("B7", 1200.0, -7.5, 5.75,
                                                                  ("L",))
    assert WellRecord.from_reading(reading, "total", rate="cpm").cpm == 1210.0


def test_nan_counts_propagate_instead_of_raising() -> None:
    wells = [*plate(), WellRecord("F1", math.nan, "competitor", log_conc=-7.0)]
    r = reduce_plate(wells)
    assert np.isnan(r.y).sum() == 1
    assert r.total.mean == pytest.approx(2000.0)


def test_invalid_inputs_raise_analysis_error() -> None:
    with pytest.raises(AnalysisError, match="efficiency"):
        reduce_plate(plate(), efficiency=57.0)
    with pytest.raises(AnalysisError, match="protein"):
        reduce_plate(plate(), protein_mg=-1.0)

"""Binding physics (simulators.binding) and plate maps (simulators.plate_map): units,
equilibrium, Cheng-Prusoff, kinetics, temperature, filter, washes."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.binding import (
    BindingTruth,
    dpm_from_fmol,
    dpm_per_fmol,
    filter_spot,
    fmol_from_dpm,
    ic50_nm,
    mean_relaxing_temperature,
    one_site_specific_fmol,
    rate_factor,
    relax_temperature,
    wash_retention,
    well_equilibrium,
)
from simulators.plate_map import (
    WellContents,
    competition_layout,
    expand_wells,
    parse_plate_map,
    plate_map_from_toml,
)
from simulators.world_api import HarvestSettings

NO_DEPLETION = BindingTruth(ligand_depletion=False)
PEI3 = HarvestSettings(prewet_pei=True, washes=3, wash_volume_ml=1.0)


def total_well(**changes: object) -> WellContents:
    return replace(WellContents(role="total"), **changes)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- units


def test_dpm_per_fmol_from_the_curie() -> None:
    assert dpm_per_fmol(1.0) == pytest.approx(2.22)  # 2.22e12 dpm/Ci over 1e12 fmol/mmol
    assert dpm_from_fmol(1000.0, 1.0) == pytest.approx(2220.0)  # 1 pmol at 1 Ci/mmol = 1 nCi
    assert dpm_from_fmol(1.0, 26.6) == pytest.approx(59.052)
    assert fmol_from_dpm(dpm_from_fmol(57.3, 26.6), 26.6) == pytest.approx(57.3)
    # 1 uCi of a 26.6 Ci/mmol ligand is 1/26.6 nmol: 2.22e6 dpm either way
    assert dpm_from_fmol(1e6 / 26.6, 26.6) == pytest.approx(2.22e6)


def test_nanomolar_times_microlitre_is_femtomole() -> None:
    eq = well_equilibrium(NO_DEPLETION, total_well(radioligand_nm=4.0, volume_ul=250.0,
                                                   membrane_ug=0.0))
    assert eq.added_fmol == pytest.approx(1000.0)
    assert eq.receptor_fmol == 0.0 and eq.specific_fmol == 0.0


# ----------------------------------------------------------------------------- equilibrium


def test_one_site_half_occupancy_at_kd() -> None:
    t = NO_DEPLETION
    eq = well_equilibrium(t, total_well(radioligand_nm=t.kd_nm, membrane_ug=100.0))
    assert eq.receptor_fmol == pytest.approx(114.6)  # 1146 fmol/mg x 0.1 mg
    assert eq.specific_fmol == pytest.approx(eq.receptor_fmol / 2)
    assert one_site_specific_fmol(100.0, 1e6, 5.0) == pytest.approx(100.0, rel=1e-4)


@given(
    ligand_nm=st.floats(0.05, 200.0),
    kd_nm=st.floats(0.1, 100.0),
    ki_nm=st.floats(0.01, 10_000.0),
)
def test_cheng_prusoff_halves_specific_binding(ligand_nm: float, kd_nm: float,
                                               ki_nm: float) -> None:
    top = one_site_specific_fmol(100.0, ligand_nm, kd_nm)
    at_ic50 = one_site_specific_fmol(100.0, ligand_nm, kd_nm, ic50_nm(ki_nm, ligand_nm, kd_nm),
                                     ki_nm)
    assert at_ic50 == pytest.approx(top / 2, rel=1e-9)


def test_competitor_well_follows_cheng_prusoff_in_the_model() -> None:
    t = NO_DEPLETION
    top = well_equilibrium(t, total_well()).specific_fmol
    ic50 = ic50_nm(t.ki_nm["progesterone"], 5.0, t.kd_nm)
    well = total_well(role="competitor", competitor="progesterone", competitor_m=ic50 * 1e-9)
    assert well_equilibrium(t, well).specific_fmol == pytest.approx(top / 2)


def test_ligand_depletion_conserves_mass_and_stays_under_ten_percent() -> None:
    t = BindingTruth()
    eq = well_equilibrium(t, total_well())
    bound = eq.specific_fmol + eq.membrane_nsb_fmol
    assert eq.free_nm * eq.volume_ul + bound == pytest.approx(eq.added_fmol, rel=1e-9)
    assert eq.free_nm < 5.0
    assert 0.02 < bound / eq.added_fmol < 0.10  # the assay-guidance criterion holds
    assert eq.specific_fmol < well_equilibrium(NO_DEPLETION, total_well()).specific_fmol


def test_unknown_compounds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown competitor 'aspirin'"):
        well_equilibrium(BindingTruth(), total_well(role="competitor", competitor="aspirin",
                                                    competitor_m=1e-6))
    with pytest.raises(ValueError, match="unknown radioligand"):
        well_equilibrium(BindingTruth(), total_well(radioligand="[3H]DTG"))


@pytest.mark.parametrize("bad", [{"kd_nm": 0.0}, {"q10": -1.0}, {"filter_nsb_fraction": 2.0},
                                 {"ki_nm": {"x": 0.0}}, {"bmax_fmol_per_mg": math.nan}])
def test_truth_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BindingTruth(**bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- kinetics


def test_association_follows_one_exponential() -> None:
    t = NO_DEPLETION
    eq = well_equilibrium(t, total_well())
    kobs = (t.kon_per_nm_per_min * 5.0 + t.koff_per_min) / 60.0
    assert eq.kobs_ref_per_s == pytest.approx(kobs)
    assert t.koff_per_min == pytest.approx(t.kon_per_nm_per_min * t.kd_nm)
    half = math.log(2) / kobs
    assert eq.specific_at(half) == pytest.approx(eq.specific_fmol / 2)
    assert eq.specific_at(0.0) == 0.0
    assert eq.specific_at(90 * 60) > 0.99 * eq.specific_fmol  # the seed's 90 min is enough


def test_competitor_slows_the_approach_but_koff_bounds_it() -> None:
    t = NO_DEPLETION
    free = well_equilibrium(t, total_well()).kobs_ref_per_s
    blocked = well_equilibrium(t, total_well(role="nsb", competitor="haloperidol",
                                             competitor_m=1e-5)).kobs_ref_per_s
    assert t.koff_per_min / 60.0 < blocked < free


def test_temperature_dependence_q10() -> None:
    t = BindingTruth()
    assert rate_factor(t, 37.0) == 1.0
    assert rate_factor(t, 27.0) == pytest.approx(1 / t.q10)
    assert rate_factor(t, 37.0, shaking=True) == t.shaking_rate_factor
    eq = well_equilibrium(t, total_well())
    cold_short = eq.specific_at(600 * rate_factor(t, 20.0))
    warm_long = eq.specific_at(5400 * rate_factor(t, 37.0))
    assert cold_short < 0.4 * warm_long  # 10 min at 20 C binds measurably less


def test_plate_liquid_follows_the_air_with_a_lag() -> None:
    assert relax_temperature(21.0, 37.0, 300.0, 300.0) == pytest.approx(37 - 16 / math.e)
    assert relax_temperature(21.0, 37.0, 1.0, 0.0) == 37.0
    # the mean over a step is the integral of the exponential approach
    assert mean_relaxing_temperature(21.0, 37.0, 300.0, 300.0) == pytest.approx(
        37 - 16 * (1 - 1 / math.e))
    assert mean_relaxing_temperature(21.0, 37.0, 10.0, 0.0) == 37.0
    assert mean_relaxing_temperature(21.0, 37.0, 1e-9, 300.0) == pytest.approx(21.0)


# ----------------------------------------------------------------------------- filter


def _spot(settings: HarvestSettings, well: WellContents | None = None,
          clogged: float | None = None) -> float:
    t = BindingTruth()
    eq = well_equilibrium(t, well or total_well())
    return filter_spot(t, eq, eq.specific_fmol, settings, clogged_fraction=clogged).dpm


def test_pei_cuts_filter_nsb() -> None:
    nsb = total_well(role="nsb", competitor="haloperidol", competitor_m=1e-5)
    without = _spot(replace(PEI3, prewet_pei=False), nsb)
    with_pei = _spot(PEI3, nsb)
    assert with_pei < 0.5 * without
    total = _spot(PEI3)
    assert (total - with_pei) / total > 0.8  # >80 % specific at Kd: a good assay


def test_filter_blank_holds_only_filter_binding() -> None:
    t = BindingTruth()
    blank = total_well(role="blank", membrane_ug=0.0)
    eq = well_equilibrium(t, blank)
    spot = filter_spot(t, eq, 0.0, PEI3)
    assert spot.specific_fmol == 0 and spot.membrane_nsb_fmol == 0
    assert spot.filter_nsb_fmol == pytest.approx(t.filter_nsb_fraction_pei * eq.added_fmol)


def test_wash_dissociation_uses_koff_at_the_wash_temperature() -> None:
    t = BindingTruth()
    cold = wash_retention(t, PEI3)
    koff_4c = t.koff_per_min / 60.0 * rate_factor(t, 4.0)
    assert cold == pytest.approx(math.exp(-koff_4c * 3 * 5.0))
    warm = wash_retention(t, replace(PEI3, wash_temperature_c=37.0, wash_seconds_per_cycle=60))
    assert warm < 0.95 < 0.999 < cold


def test_washes_remove_the_trapped_free_radioligand() -> None:
    unwashed = _spot(replace(PEI3, washes=0))
    washed = _spot(PEI3)
    assert unwashed > washed * 1.2
    assert _spot(replace(PEI3, washes=1)) > washed


def test_clogged_well_keeps_a_share_of_an_unwashed_spot() -> None:
    full = _spot(replace(PEI3, washes=0))
    assert _spot(PEI3, clogged=0.1) == pytest.approx(0.1 * full)


# ----------------------------------------------------------------------------- plate maps


def test_well_ranges() -> None:
    assert expand_wells("A1") == ("A1",)
    assert expand_wells("B2:A1") == ("A1", "A2", "B1", "B2")
    assert len(expand_wells("A1:H12")) == 96
    assert expand_wells("A1, C12") == ("A1", "C12")
    for bad in ("I1", "A13", "A0", "A1:B2:C3", ""):
        with pytest.raises(ValueError):
            expand_wells(bad)


def test_plate_map_from_toml() -> None:
    plate = plate_map_from_toml(
        '[defaults]\nmembrane_ug = 50\nradioligand_nm = 2.5\n'
        '[wells."A1:H1"]\nrole = "total"\n'
        '[wells."A2:H2"]\nrole = "nsb"\ncompetitor = "haloperidol"\ncompetitor_m = 1e-5\n'
        '[wells.A3]\nrole = "competitor"\ncompetitor = "progesterone"\ncompetitor_m = 1e-7\n'
        'volume_ul = 200\n'
    )
    assert len(plate.wells) == 17
    assert plate.wells["C1"] == WellContents(role="total", membrane_ug=50, radioligand_nm=2.5)
    assert plate.wells["A3"].competitor_nm == pytest.approx(100.0)
    assert plate.wells["A3"].volume_ul == 200
    assert plate.role_wells("nsb") == tuple(f"{r}2" for r in "ABCDEFGH")


@pytest.mark.parametrize(("data", "message"), [
    ({"wells": {"A1": {"role": "total", "competitor": "haloperidol", "competitor_m": 1e-5}}},
     "no competitor"),
    ({"wells": {"A1": {"role": "nsb"}}}, "needs competitor"),
    ({"wells": {"A1:A2": {"role": "total"}, "A2": {"role": "total"}}}, "listed twice"),
    ({"wells": {"Z9": {"role": "total"}}}, "wells.Z9"),
    ({"wells": {"A1": {"role": "sample"}}}, "wells.A1.role"),
    ({"wells": {}}, "at least one well"),
    ({"wells": {"A1": {"role": "total", "volume": 3}}}, "wells.A1.volume"),
])
def test_bad_plate_maps_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_plate_map(data)


def test_competition_layout() -> None:
    plate = competition_layout(competitors=["progesterone"], replicates=2, points=8)
    assert len(plate.role_wells("total")) == 8 and len(plate.role_wells("nsb")) == 8
    assert plate.role_wells("competitor") == tuple(
        f"{r}{c}" for r in "AB" for c in range(3, 11))
    assert plate.wells["A3"].competitor_m == pytest.approx(1e-5)
    assert plate.wells["B10"].competitor_m == pytest.approx(1e-11)
    assert plate.wells["C3"].role == "blank" and plate.wells["C3"].radioligand_nm == 0
    assert "A11" not in plate.wells
    with pytest.raises(ValueError, match="do not fit"):
        competition_layout(competitors=["a", "b", "c"], replicates=3)
    with pytest.raises(ValueError, match="replicates"):
        competition_layout(replicates=0)

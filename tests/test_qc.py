"""QC verdicts (acquisition.analysis.qc): each one triggered and not triggered, and degenerate
data giving a clear failing verdict instead of an exception or a made-up number."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.analysis.fit import FitResult, fit
from acquisition.analysis.models import MODELS
from acquisition.analysis.qc import (
    BLOCKING_CODES,
    Verdict,
    all_passed,
    check_bottom_vs_nsb,
    check_counting_error,
    check_data,
    check_hill_slope,
    check_ligand_depletion,
    check_luminescence,
    check_nsb_fraction,
    check_spans_50,
    check_top_vs_total,
    check_z_prime,
    evaluate,
    failures,
    try_fit,
    z_prime,
)
from acquisition.analysis.reduce import Reduction, WellRecord, reduce_plate

HOT = {"HotNM": 5.0, "HotKdNM": 5.0}
X_LOG = np.arange(-10.0, -4.9, 0.5)  # 11 concentrations


def make_wells(
    *,
    top: float = 5000.0,
    nsb: float = 500.0,
    log_ki: float = -7.3,
    hill: float = -1.0,
    noise: float = 0.01,
    x_log: np.ndarray = X_LOG,
    seed: int = 1,
    total_sd: float | None = None,
    flags: dict[str, tuple[str, ...]] | None = None,
    count_min: float = 1.0,
) -> list[WellRecord]:
    """A competition plate: 4 total, 4 NSB, triplicate competitor wells (background 0)."""
    rng = np.random.default_rng(seed)
    flags = flags or {}
    log_ec50 = log_ki + math.log10(2.0)
    wells: list[WellRecord] = []
    sd_t = noise * top if total_sd is None else total_sd

    def add(name: str, cpm: float, role: str, log_conc: float | None = None) -> None:
        wells.append(WellRecord(name, cpm, role, log_conc,  # type: ignore[arg-type]
                                counts=max(cpm * count_min, 0.0), flags=flags.get(name, ())))

    for i in range(4):
        add(f"T{i}", top + rng.normal(0, sd_t), "total")
        add(f"N{i}", nsb + rng.normal(0, noise * top), "nsb")
    for j, xc in enumerate(x_log):
        mean = nsb + (top - nsb) / (1 + 10 ** ((log_ec50 - xc) * hill))
        for k in range(3):
            add(f"C{j}-{k}", mean + rng.normal(0, noise * top), "competitor", float(xc))
    return wells


def ki_fit(r: Reduction) -> FitResult:
    return fit(MODELS["one-site-fit-ki"], r.x, r.y, constants=HOT)


def hill_fit(r: Reduction) -> FitResult:
    return fit(MODELS["four-param-logistic"], r.x, r.y)


def codes(verdicts: list[Verdict]) -> set[str]:
    return {v.code for v in verdicts}


# ------------------------------------------------------------------- a good plate


def test_a_good_plate_passes_every_check() -> None:
    r = reduce_plate(make_wells(), added_cpm=100000.0)
    verdicts = evaluate(r, ki_fit(r), hill_fit=hill_fit(r))
    assert all_passed(verdicts), [v.message for v in failures(verdicts)]
    assert codes(verdicts) == {"luminescence", "counting-error", "nsb-fraction", "z-prime",
                               "ligand-depletion", "spans-50", "top-vs-total", "bottom-vs-nsb",
                               "hill-slope"}
    for v in verdicts:
        assert v.message and "\n" not in v.message


# ---------------------------------------------------------------- each check


def test_hill_slope() -> None:
    good = check_hill_slope(hill_fit(reduce_plate(make_wells())))
    assert good.passed and good.value == pytest.approx(-1.0, abs=0.1) and good.threshold == -1.0
    steep = check_hill_slope(hill_fit(reduce_plate(make_wells(hill=-2.0))))
    assert not steep.passed
    assert steep.value == pytest.approx(-2.0, rel=0.1)
    assert "excludes -1" in steep.message


def test_spans_50() -> None:
    r = reduce_plate(make_wells())
    assert check_spans_50(r, ki_fit(r)).passed
    # competitor too weak for the range: never falls below 50%
    weak = reduce_plate(make_wells(log_ki=-4.0))
    v = check_spans_50(weak)
    assert not v.passed and v.value is not None and v.value > 50.0
    assert "below 50%" in v.message
    # only the bottom of the curve was tested: never rises above 50%
    late = reduce_plate(make_wells(x_log=np.arange(-6.0, -3.9, 0.5)))
    v2 = check_spans_50(late)
    assert not v2.passed and v2.value is not None and v2.value < 50.0


def test_spans_50_checks_the_fitted_ic50_lies_in_the_range() -> None:
    r = reduce_plate(make_wells())
    result = ki_fit(r)
    shifted = fit(MODELS["one-site-fit-ki"], r.x, r.y, constants=HOT,
                  fixed={"logKi": -3.0}, profile=False)
    assert check_spans_50(r, result).passed
    v = check_spans_50(r, shifted)
    assert not v.passed and "outside the tested range" in v.message


def test_nsb_fraction() -> None:
    ok = check_nsb_fraction(reduce_plate(make_wells()))
    assert ok.passed and ok.value == pytest.approx(10.0, abs=1.0) and ok.threshold == 50.0
    bad = check_nsb_fraction(reduce_plate(make_wells(nsb=3000.0)))
    assert not bad.passed and bad.value == pytest.approx(60.0, abs=2.0)


def test_ligand_depletion_suggests_the_depletion_model() -> None:
    wells = make_wells()
    assert check_ligand_depletion(reduce_plate(wells)) is None  # nothing added: no verdict
    ok = check_ligand_depletion(reduce_plate(wells, added_cpm=100000.0))
    assert ok is not None and ok.passed and ok.value == pytest.approx(5.0, rel=0.05)
    bad = check_ligand_depletion(reduce_plate(wells, added_cpm=25000.0))
    assert bad is not None and not bad.passed
    assert bad.value == pytest.approx(20.0, rel=0.05) and bad.threshold == 10.0
    assert "heterologous-depletion" in bad.message


def test_z_prime() -> None:
    assert z_prime(2000.0, 100.0, 200.0, 20.0) == pytest.approx(1 - 3 * 120.0 / 1800.0)
    assert math.isnan(z_prime(5.0, 1.0, 5.0, 1.0))
    ok = check_z_prime(reduce_plate(make_wells()))
    assert ok.passed and ok.value is not None and ok.value > 0.8
    bad = check_z_prime(reduce_plate(make_wells(total_sd=2500.0)))
    assert not bad.passed and bad.value is not None and bad.value < 0.4
    assert bad.threshold == 0.4


def test_z_prime_needs_replicate_controls() -> None:
    wells = [w for w in make_wells() if w.well not in {"T1", "T2", "T3"}]
    v = check_z_prime(reduce_plate(wells))
    assert not v.passed and v.value is None and "at least 2" in v.message


def test_top_and_bottom_against_the_control_wells() -> None:
    r = reduce_plate(make_wells())
    result = ki_fit(r)
    assert check_top_vs_total(r, result).passed
    assert check_bottom_vs_nsb(r, result).passed
    # the controls disagree with the curve: total wells read 40% of the window too high
    # (the curve's Top stays at 5000) and NSB wells read 30% of the window too high
    wells = [
        WellRecord(w.well, w.cpm + (1800.0 if w.role == "total" else 0.0)
                   + (1350.0 if w.role == "nsb" else 0.0), w.role, w.log_conc)
        for w in make_wells()
    ]
    r2 = reduce_plate(wells)
    top = check_top_vs_total(r2, result)
    bottom = check_bottom_vs_nsb(r2, result)
    assert not top.passed and top.threshold == 20.0
    assert top.value is not None and top.value < -20.0
    assert not bottom.passed and bottom.value is not None and bottom.value < -20.0


def test_counting_error() -> None:
    r = reduce_plate(make_wells(count_min=1.0))  # NSB ~500 counts: 8.9% 2-sigma
    ok = check_counting_error(r)
    assert ok is not None and ok.passed and ok.value == pytest.approx(200 / math.sqrt(500),
                                                                      rel=0.1)
    bad = check_counting_error(reduce_plate(make_wells(count_min=0.5)))  # 250 counts: 12.6%
    assert bad is not None and not bad.passed and bad.threshold == 10.0
    assert "count longer" in bad.message
    assert check_counting_error(r, threshold_pct=5.0).passed is False  # type: ignore[union-attr]
    no_counts = [WellRecord(w.well, w.cpm, w.role, w.log_conc) for w in make_wells()]
    assert check_counting_error(reduce_plate(no_counts)) is None


def test_luminescence_flags() -> None:
    assert check_luminescence(reduce_plate(make_wells())).passed
    bad = check_luminescence(reduce_plate(make_wells(flags={"C3-1": ("L",), "T0": ("L", "P")})))
    assert not bad.passed and bad.value == 2.0
    assert "C3-1" in bad.message and "T0" in bad.message


# -------------------------------------------------------------- degenerate data


def test_all_wells_equal() -> None:
    wells = [WellRecord(w.well, 100.0, w.role, w.log_conc) for w in make_wells()]
    r = reduce_plate(wells)
    verdicts = evaluate(r)
    assert {"all-equal", "negative-specific"} <= codes(failures(verdicts))
    fitted, v = try_fit(MODELS["one-site-fit-ki"], r.x, r.y, constants=HOT)
    assert fitted is None and not v.passed and v.code == "fit"
    assert "equal" in v.message


def test_competitor_wells_all_equal() -> None:
    wells = [WellRecord(w.well, 1000.0, w.role, w.log_conc) if w.role == "competitor" else w
             for w in make_wells()]
    bad = failures(check_data(reduce_plate(wells)))
    assert codes(bad) == {"all-equal"}
    assert "competitor" in bad[0].message


def test_single_concentration() -> None:
    r = reduce_plate(make_wells(x_log=np.array([-7.0])))
    bad = check_data(r)
    assert codes(bad) == {"single-concentration"}
    assert bad[0].value == 1.0
    verdicts = evaluate(r)
    assert "spans-50" not in codes(verdicts)  # no fitted-number check after a blocking one
    fitted, v = try_fit(MODELS["one-site-fit-ki"], r.x, r.y, constants=HOT)
    assert fitted is None and not v.passed


def test_negative_specific_binding() -> None:
    r = reduce_plate(make_wells(top=400.0, nsb=500.0, noise=0.001))
    bad = check_data(r)
    assert "negative-specific" in codes(bad)
    v = next(v for v in bad if v.code == "negative-specific")
    assert v.value is not None and v.value < 0 and "no binding window" in v.message


def test_nan_values() -> None:
    wells = make_wells()
    wells[10] = WellRecord(wells[10].well, math.nan, wells[10].role, wells[10].log_conc)
    r = reduce_plate(wells)
    bad = check_data(r)
    assert "nan-values" in codes(bad)
    assert wells[10].well in next(v for v in bad if v.code == "nan-values").message
    # the fitter refuses NaN with an AnalysisError; try_fit makes that a verdict
    fitted, v = try_fit(MODELS["one-site-fit-ki"], r.x, r.y, constants=HOT)
    assert fitted is None and v.code == "fit" and "NaN" in v.message


def test_nan_concentration() -> None:
    wells = [*make_wells(), WellRecord("Z9", 1000.0, "competitor", math.nan)]
    assert "nan-values" in codes(check_data(reduce_plate(wells)))


def test_missing_controls_and_no_wells() -> None:
    no_nsb = [w for w in make_wells() if w.role != "nsb"]
    r = reduce_plate(no_nsb)
    assert "missing-controls" in codes(check_data(r))
    verdicts = evaluate(r)  # no crash, no Z'/NSB number made up
    assert "z-prime" not in codes(verdicts) and "nsb-fraction" not in codes(verdicts)
    empty = evaluate(reduce_plate([]))
    assert not all_passed(empty) and "no-data" in codes(empty)
    only_controls = [w for w in make_wells() if w.role != "competitor"]
    assert "no-data" in codes(check_data(reduce_plate(only_controls)))


def test_too_few_points() -> None:
    wells = [w for w in make_wells() if w.role != "competitor"]
    wells += [WellRecord("C1", 3000.0, "competitor", -8.0),
              WellRecord("C2", 1000.0, "competitor", -6.0)]
    bad = check_data(reduce_plate(wells))
    assert codes(bad) == {"no-data"} and "at least 4" in bad[0].message


def test_blocking_codes_cover_the_degenerate_verdicts() -> None:
    assert {"no-data", "nan-values", "missing-controls", "all-equal", "single-concentration",
            "negative-specific", "fit"} == BLOCKING_CODES


@pytest.mark.parametrize("case", ["equal", "single", "negative", "nan", "empty", "controls"])
def test_degenerate_data_never_raise_anything_but_analysis_error(case: str) -> None:
    wells = {
        "equal": [WellRecord(w.well, 7.0, w.role, w.log_conc) for w in make_wells()],
        "single": make_wells(x_log=np.array([-7.0])),
        "negative": make_wells(top=100.0, nsb=900.0),
        "nan": [WellRecord(w.well, math.nan, w.role, w.log_conc) for w in make_wells()],
        "empty": [],
        "controls": [w for w in make_wells() if w.role != "competitor"],
    }[case]
    r = reduce_plate(wells)
    fitted, fit_verdict = try_fit(MODELS["one-site-fit-ki"], r.x, r.y, constants=HOT)
    verdicts = [*evaluate(r, fitted), fit_verdict]
    assert not all_passed(verdicts)
    assert any(v.code in BLOCKING_CODES and not v.passed for v in verdicts)


def test_an_undetermined_hill_slope_is_not_called_consistent() -> None:
    """A plate of pure noise gives a 4PL whose Hill-slope CI is enormous: that fails."""
    import numpy as np

    from acquisition.analysis.fit import fit
    from acquisition.analysis.models import MODELS
    from acquisition.analysis.qc import check_hill_slope

    rng = np.random.default_rng(7)
    x = np.repeat(np.linspace(-11, -5, 10), 3)
    y = rng.poisson(1000, x.size).astype(float)
    verdict = check_hill_slope(fit(MODELS["four-param-logistic"], x, y))
    assert not verdict.passed
    assert "undetermined" in verdict.message

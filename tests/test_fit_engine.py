"""The fitting engine's mechanics: Jacobian, CIs, F test, fixed parameters, input validation."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
from scipy import stats

from acquisition.analysis import (
    Array,
    FitResult,
    IntArray,
    Model,
    extra_sum_of_squares,
    fit,
)
from acquisition.analysis._problem import Problem
from acquisition.errors import AnalysisError, AssayError

Consts = Mapping[str, float]


def _plateaus(x: Array, y: Array) -> tuple[float, float, float]:
    levels = np.unique(x)
    means = np.array([y[x == level].mean() for level in levels])
    top, bottom = float(means.max()), float(means.min())
    return top, bottom, float(levels[np.argmin(np.abs(means - (top + bottom) / 2))])


# --- models (Prism's equations, science.md) -------------------------------------------------


def _line_f(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
    return p[0] + p[1] * x


def _line_initial(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
    return np.array([0.0, 0.0])


LINE = Model("line", ("Intercept", "Slope"), (), _line_f, _line_initial)


def _one_site_f(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
    return p[1] + (p[0] - p[1]) / (1 + 10 ** (x - p[2]))


def _one_site_initial(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
    return np.array(_plateaus(x, y))


ONE_SITE = Model(
    "one-site-fit-logic50",
    ("Top", "Bottom", "logIC50"),
    (),
    _one_site_f,
    _one_site_initial,
    log10_params=("logIC50",),
)


def _two_sites_f(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
    top, bottom, frac, lo1, lo2 = p[0], p[1], p[2], p[3], p[4]
    span = top - bottom
    return bottom + span * frac / (1 + 10 ** (x - lo1)) + span * (1 - frac) / (1 + 10 ** (x - lo2))


def _two_sites_initial(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
    top, bottom, mid = _plateaus(x, y)
    return np.array([top, bottom, 0.5, mid - 1.0, mid + 1.0])


TWO_SITES = Model(
    "two-sites-fit-logic50",
    ("Top", "Bottom", "FractionHi", "logIC50Hi", "logIC50Lo"),
    (),
    _two_sites_f,
    _two_sites_initial,
    log10_params=("logIC50Hi", "logIC50Lo"),
    bounds={"FractionHi": (0.0, 1.0)},
)


def _fit_ki_f(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
    log_ec50 = np.log10(10 ** p[0] * (1 + c["HotNM"] / c["HotKdNM"]))
    return p[2] + (p[1] - p[2]) / (1 + 10 ** (x - log_ec50))


def _fit_ki_initial(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
    top, bottom, mid = _plateaus(x, y)
    return np.array([mid - math.log10(1 + c["HotNM"] / c["HotKdNM"]), top, bottom])


FIT_KI = Model(
    "one-site-fit-ki",
    ("logKi", "Top", "Bottom"),
    ("HotNM", "HotKdNM"),
    _fit_ki_f,
    _fit_ki_initial,
    log10_params=("logKi",),
)


def _global_saturation_f(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
    bmax, kd, ns, background = p[0], p[1], p[2], p[3]
    nonspecific = ns * x + background
    return np.where(d == 0, bmax * x / (kd + x) + nonspecific, nonspecific)


def _global_saturation_initial(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
    return np.array([float(np.ptp(y)), float(np.median(x)), 1.0, float(np.min(y))])


GLOBAL_SATURATION = Model(
    "saturation-total-nonspecific",
    ("Bmax", "KdNM", "NS", "Background"),
    (),
    _global_saturation_f,
    _global_saturation_initial,
    datasets=("total", "nsb"),
)

LOG_CONC = np.repeat(np.arange(-11.0, -4.9, 0.5), 3)  # 13 concentrations in triplicate


def _competition(rng: np.random.Generator, model: Model, p: list[float], cv: float) -> Array:
    truth = model.f(LOG_CONC, np.array(p), {}, np.zeros(LOG_CONC.size, dtype=np.int_))
    return truth * (1 + cv * rng.standard_normal(LOG_CONC.size))


# --- Jacobian ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "p"),
    [
        (ONE_SITE, [1000.0, 50.0, -7.3]),
        (TWO_SITES, [1000.0, 50.0, 0.3, -9.0, -6.5]),
        (FIT_KI, [-8.2, 1000.0, 50.0]),
    ],
    ids=lambda v: v.name if isinstance(v, Model) else "",
)
def test_complex_step_jacobian_matches_finite_differences(model: Model, p: list[float]) -> None:
    x = np.linspace(-11, -4, 30)
    y = np.zeros_like(x)
    consts = {"HotNM": 1.0, "HotKdNM": 2.0}
    ds = np.zeros(x.size, dtype=np.int_)
    pa = np.array(p)
    problem = Problem(
        model.f,
        x,
        y,
        constants=consts,
        dataset=ds,
        full=pa,
        free=list(range(pa.size)),
        complex_step=True,
    )
    jac = problem.jacobian(pa)
    for j in range(pa.size):
        h = 1e-6 * max(1.0, abs(pa[j]))
        up, down = pa.copy(), pa.copy()
        up[j] += h
        down[j] -= h
        central = (model.f(x, up, consts, ds) - model.f(x, down, consts, ds)) / (2 * h)
        scale = np.max(np.abs(central))
        np.testing.assert_allclose(jac[:, j], central, rtol=0, atol=1e-6 * scale)
    # Same columns with the central-difference fallback (models that are not complex-safe).
    problem.complex_step = False
    np.testing.assert_allclose(problem.jacobian(pa), jac, rtol=1e-5, atol=1e-7 * np.abs(jac).max())


def test_model_that_is_not_complex_safe_falls_back_to_central_differences() -> None:
    def f(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
        return np.asarray([float(p[0]) * v + float(p[1]) for v in x])  # drops the imaginary part

    model = Model("real-only", ("a", "b"), (), f, _line_initial)
    x = np.arange(10.0)
    result = fit(model, x, 2 * x + 1 + 0.01 * np.sin(x))
    exact = fit(LINE, x, 2 * x + 1 + 0.01 * np.sin(x))
    assert "central differences" in result.message
    assert result.params["a"].estimate == pytest.approx(exact.params["Slope"].estimate, rel=1e-9)
    assert result.params["a"].se == pytest.approx(exact.params["Slope"].se, rel=1e-6)


# --- confidence intervals ---------------------------------------------------------------------


def test_linear_model_profile_ci_equals_asymptotic_ci() -> None:
    rng = np.random.default_rng(3)
    x = np.linspace(0, 10, 15)
    y = 1.5 + 0.7 * x + rng.normal(0, 0.4, x.size)
    result = fit(LINE, x, y)
    ols = stats.linregress(x, y)
    slope = result.params["Slope"]
    assert slope.estimate == pytest.approx(ols.slope, rel=1e-12)
    assert slope.se == pytest.approx(ols.stderr, rel=1e-10)
    for p in result.params.values():
        assert p.ci_low is not None and p.ci_high is not None
        assert p.profile_low == pytest.approx(p.ci_low, rel=1e-8, abs=1e-10)
        assert p.profile_high == pytest.approx(p.ci_high, rel=1e-8, abs=1e-10)


def test_nonlinear_profile_ci_is_asymmetric_brackets_the_estimate_and_sits_on_the_threshold() -> (
    None
):
    x = np.array([0.02, 0.02, 0.06, 0.06, 0.11, 0.11, 0.22, 0.22])
    rng = np.random.default_rng(7)

    def mm(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
        return p[0] * x / (p[1] + x)

    def mm_initial(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
        return np.array([float(y.max()), float(np.median(x))])

    model = Model("michaelis-menten", ("Vm", "K"), (), mm, mm_initial)
    y = mm(x, np.array([200.0, 0.1]), {}, np.zeros(x.size, dtype=np.int_)) + rng.normal(0, 8, 8)
    result = fit(model, x, y)
    threshold = result.ss * (1 + stats.f.ppf(0.95, 1, result.dof) / result.dof)
    for name in ("Vm", "K"):
        p = result.params[name]
        assert p.profile_low is not None and p.profile_high is not None
        assert p.profile_low < p.estimate < p.profile_high
        below, above = p.estimate - p.profile_low, p.profile_high - p.estimate
        assert abs(above - below) / (above + below) > 0.05, (name, below, above)
        # At each limit, the SS with the parameter pinned and the other refitted is the threshold.
        for limit in (p.profile_low, p.profile_high):
            pinned = fit(
                model, x, y, fixed={name: limit}, p0={"Vm": 200.0, "K": 0.1}, profile=False
            )
            assert pinned.ss == pytest.approx(threshold, rel=1e-7)
    # Saturating data leaves K and Vm skewed upward, as profile likelihood is expected to show.
    k = result.params["K"]
    assert k.profile_high is not None and k.profile_low is not None
    assert k.profile_high - k.estimate > k.estimate - k.profile_low


def test_unconstrained_side_of_the_profile_is_none() -> None:
    # Only the top of the curve is sampled: the data cannot rule out any higher logIC50 (Bottom
    # fixed at 0, the curve just starts to fall), so that side of the profile is unbounded.
    rng = np.random.default_rng(11)
    x = np.repeat(np.arange(-11.0, -7.9, 0.5), 2)
    truth = _one_site_f(x, np.array([1000.0, 0.0, -6.0]), {}, np.zeros(x.size, dtype=np.int_))
    y = truth + rng.normal(0, 30, x.size)
    try:
        result = fit(ONE_SITE, x, y, fixed={"Top": 1000.0}, p0={"logIC50": -6.0, "Bottom": 0.0})
    except AnalysisError as exc:  # or the data determine nothing at all: no numbers either
        assert "do not determine" in str(exc)
        return
    log_ic50 = result.params["logIC50"]
    assert log_ic50.profile_high is None or log_ic50.profile_low is None
    assert result.derived["IC50"].profile_high is None or result.derived["IC50"].profile_low is None


def test_ci_level_is_honoured() -> None:
    rng = np.random.default_rng(5)
    y = _competition(rng, ONE_SITE, [1000.0, 50.0, -7.5], 0.05)
    wide, narrow = fit(ONE_SITE, LOG_CONC, y, level=0.99), fit(ONE_SITE, LOG_CONC, y, level=0.8)
    for name in ONE_SITE.params:
        w, n = wide.params[name], narrow.params[name]
        assert w.ci_low is not None and n.ci_low is not None
        assert w.profile_low is not None and n.profile_low is not None
        assert w.ci_low < n.ci_low < n.estimate
        assert w.profile_low < n.profile_low < n.estimate


# --- results ----------------------------------------------------------------------------------


def test_derived_ki_is_back_transformed_and_agrees_with_cheng_prusoff() -> None:
    rng = np.random.default_rng(2)
    consts = {"HotNM": 2.0, "HotKdNM": 1.0}
    truth = FIT_KI.f(
        LOG_CONC, np.array([-8.5, 1000.0, 40.0]), consts, np.zeros(LOG_CONC.size, dtype=np.int_)
    )
    y = truth * (1 + 0.03 * rng.standard_normal(LOG_CONC.size))
    result = fit(FIT_KI, LOG_CONC, y, constants=consts)
    log_ki, ki = result.params["logKi"], result.derived["Ki"]
    assert set(result.derived) == {"Ki"}
    assert ki.name == "Ki" and ki.se is None
    assert ki.estimate == pytest.approx(10**log_ki.estimate, rel=1e-14)
    for attr in ("ci_low", "ci_high", "profile_low", "profile_high"):
        log_value = getattr(log_ki, attr)
        assert log_value is not None
        assert getattr(ki, attr) == pytest.approx(10**log_value, rel=1e-14)
    assert ki.ci_low is not None and ki.ci_high is not None
    # Asymmetric on the linear scale, symmetric on the log scale.
    assert ki.ci_high - ki.estimate > ki.estimate - ki.ci_low
    # Cheng-Prusoff: the same data fitted for logIC50 gives Ki = IC50 / (1 + [L]/Kd).
    ic50 = fit(ONE_SITE, LOG_CONC, y).derived["IC50"]
    assert ki.estimate == pytest.approx(ic50.estimate / 3.0, rel=1e-8)
    assert result.constants == consts
    assert 0.99 < result.r2 < 1.0
    assert result.sy_x == pytest.approx(math.sqrt(result.ss / result.dof))


def test_fixed_parameters_are_pinned_and_leave_the_degrees_of_freedom() -> None:
    rng = np.random.default_rng(4)
    y = _competition(rng, ONE_SITE, [1000.0, 0.0, -7.5], 0.03) + 5.0
    free = fit(ONE_SITE, LOG_CONC, y)
    pinned = fit(ONE_SITE, LOG_CONC, y, fixed={"Bottom": 0.0})
    assert free.dof == LOG_CONC.size - 3
    assert pinned.dof == LOG_CONC.size - 2
    bottom = pinned.params["Bottom"]
    assert bottom.estimate == 0.0
    assert bottom.se is None and bottom.ci_low is None and bottom.profile_low is None
    assert list(pinned.params) == list(ONE_SITE.params)
    assert pinned.ss >= free.ss
    # Same answer as a two-parameter model with Bottom = 0 written in.
    two = Model(
        "two-param",
        ("Top", "logIC50"),
        (),
        lambda x, p, c, d: p[0] / (1 + 10 ** (x - p[1])),
        lambda x, y, c, d: np.array([float(y.max()), -7.0]),
    )
    ref = fit(two, LOG_CONC, y)
    for name in ("Top", "logIC50"):
        assert pinned.params[name].estimate == pytest.approx(ref.params[name].estimate, rel=1e-9)
        assert pinned.params[name].se == pytest.approx(ref.params[name].se, rel=1e-7)
        assert pinned.params[name].profile_low == pytest.approx(
            ref.params[name].profile_low, rel=1e-7
        )


def test_predict_and_global_fit_with_dataset_labels() -> None:
    x = np.tile(np.array([0.1, 0.3, 1.0, 3.0, 10.0, 30.0]), 2)
    labels = np.array(["total"] * 6 + ["nsb"] * 6)
    codes = (labels == "nsb").astype(np.int_)
    truth = np.array([500.0, 2.0, 8.0, 30.0])
    rng = np.random.default_rng(9)
    y = _global_saturation_f(x, truth, {}, codes) + rng.normal(0, 3, x.size)
    by_label = fit(GLOBAL_SATURATION, x, y, dataset=labels)
    by_code = fit(GLOBAL_SATURATION, x, y, dataset=codes)
    for name in GLOBAL_SATURATION.params:
        assert by_label.params[name].estimate == by_code.params[name].estimate
    assert by_label.params["KdNM"].estimate == pytest.approx(2.0, rel=0.2)
    fitted = by_label.predict(x, codes)
    assert float(np.sum((y - fitted) ** 2)) == pytest.approx(by_label.ss, rel=1e-12)
    assert by_label.predict(x, labels).tolist() == fitted.tolist()
    # Default dataset is 0 ("total").
    np.testing.assert_array_equal(by_label.predict(x[:6]), fitted[:6])


# --- F test -----------------------------------------------------------------------------------


def _one_vs_two(y: Array) -> tuple[FitResult, FitResult]:
    return fit(ONE_SITE, LOG_CONC, y, profile=False), fit(TWO_SITES, LOG_CONC, y, profile=False)


def test_f_test_prefers_two_sites_on_two_site_data() -> None:
    rng = np.random.default_rng(21)
    y = _competition(rng, TWO_SITES, [1000.0, 50.0, 0.4, -9.0, -6.5], 0.03)
    one, two = _one_vs_two(y)
    test = extra_sum_of_squares(one, two)
    assert test.preferred == "two-sites-fit-logic50"
    assert (test.dfn, test.dfd) == (2, LOG_CONC.size - 5)
    assert test.p < 1e-6
    expected_f = ((one.ss - two.ss) / 2) / (two.ss / two.dof)
    assert test.f == pytest.approx(expected_f, rel=1e-12)
    assert test.p == pytest.approx(stats.f.sf(expected_f, 2, two.dof), rel=1e-12)
    assert two.params["FractionHi"].estimate == pytest.approx(0.4, abs=0.1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_f_test_prefers_one_site_on_one_site_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = _competition(rng, ONE_SITE, [1000.0, 50.0, -7.5], 0.03)
    one, two = _one_vs_two(y)
    test = extra_sum_of_squares(one, two)
    assert test.preferred == "one-site-fit-logic50"
    assert test.p >= 0.05


def test_f_test_rejects_fits_that_are_not_nested() -> None:
    rng = np.random.default_rng(1)
    y = _competition(rng, ONE_SITE, [1000.0, 50.0, -7.5], 0.03)
    one, two = _one_vs_two(y)
    with pytest.raises(AnalysisError, match="fewer degrees of freedom"):
        extra_sum_of_squares(two, one)
    other = fit(ONE_SITE, LOG_CONC[:-3], y[:-3], profile=False)
    with pytest.raises(AnalysisError, match="different data"):
        extra_sum_of_squares(other, two)


# --- input validation -------------------------------------------------------------------------


def test_analysis_error_is_an_assay_error() -> None:
    assert issubclass(AnalysisError, AssayError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y": [1.0, np.nan, 3.0, 4.0, 5.0]}, r"y: 1 value\(s\) are NaN or infinite \(rows 1\)"),
        ({"x": [1.0, 2.0, np.inf, 4.0, 5.0]}, r"x: 1 value\(s\) are NaN or infinite \(rows 2\)"),
        ({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 4.0]}, r"3 point\(s\) for 3 free parameter"),
        ({"y": [7.0] * 5}, r"y: all 5 values are equal \(7\)"),
        ({"y": [1.0, 2.0]}, r"x and y: different lengths \(5 vs 2\)"),
        ({"fixed": {"Slope": 1.0}}, r"fixed: 'Slope' is not a parameter"),
        ({"p0": {"logIC50": math.nan}}, r"p0: logIC50 is not finite"),
        ({"level": 1.5}, r"level: must lie strictly between 0 and 1"),
        ({"dataset": ["total"] * 5}, r"dataset: unknown label"),
        ({"dataset": [0, 0, 1, 0, 0]}, r"dataset: codes must lie in 0..0"),
    ],
)
def test_bad_input_raises_a_clear_analysis_error(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"x": [-9.0, -8.0, -7.0, -6.0, -5.0], "y": [9.0, 8.0, 5.0, 2.0, 1.0]}
    args.update(kwargs)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(AnalysisError, match=match):
        fit(ONE_SITE, x, y, **args)  # type: ignore[arg-type]


def test_missing_constant_names_the_constant() -> None:
    with pytest.raises(AnalysisError, match=r"constants: 'one-site-fit-ki' needs HotKdNM"):
        fit(FIT_KI, LOG_CONC, np.linspace(1000, 50, LOG_CONC.size), constants={"HotNM": 1.0})
    with pytest.raises(AnalysisError, match=r"constants: HotNM is not finite"):
        fit(FIT_KI, LOG_CONC, LOG_CONC, constants={"HotNM": math.nan, "HotKdNM": 1.0})


def test_fit_that_cannot_reach_finite_estimates_raises() -> None:
    def overflow(x: Array, p: Array, c: Consts, d: IntArray) -> Array:
        return np.exp(p[0] * 1e6) * x

    model = Model("overflow", ("a",), (), overflow, lambda x, y, c, d: np.array([1.0]))
    with pytest.raises(AnalysisError, match="overflow"):
        fit(model, [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])


def test_singular_jacobian_reports_no_numbers() -> None:
    # Two parameters that only ever appear as a sum: not identifiable. Estimates would be
    # arbitrary, so the fit refuses to give any (a made-up number is worse than none).
    model = Model(
        "redundant",
        ("a", "b", "c"),
        (),
        lambda x, p, c, d: (p[0] + p[1]) * x + p[2],
        lambda x, y, c, d: np.array([1.0, 1.0, 0.0]),
    )
    x = np.arange(8.0)
    with pytest.raises(AnalysisError, match="do not determine the parameters"):
        fit(model, x, 3 * x + 1 + 0.1 * np.cos(x))


def test_failing_automatic_initial_values_raise_or_yield_to_p0() -> None:
    def broken(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
        raise ValueError("no plateau")

    def nan_start(x: Array, y: Array, c: Consts, d: IntArray) -> Array:
        return np.array([1000.0, 50.0, math.nan])

    x = [-9.0, -8.0, -7.0, -6.0, -5.0]
    y = [990.0, 900.0, 520.0, 110.0, 60.0]
    with pytest.raises(
        AnalysisError, match=r"automatic initial values failed \(no plateau\); pass p0"
    ):
        fit(Model("broken", ONE_SITE.params, (), _one_site_f, broken), x, y)
    nan_model = Model("nan-start", ONE_SITE.params, (), _one_site_f, nan_start)
    with pytest.raises(AnalysisError, match="no finite starting value for logIC50"):
        fit(nan_model, x, y)
    result = fit(nan_model, x, y, p0={"logIC50": -7.0})
    assert result.params["logIC50"].estimate == pytest.approx(-7.0, abs=0.2)


def test_every_parameter_fixed_just_evaluates_the_curve() -> None:
    x = np.array([-9.0, -8.0, -7.0, -6.0, -5.0])
    y = np.array([990.0, 900.0, 520.0, 110.0, 60.0])
    pinned = {"Top": 1000.0, "Bottom": 50.0, "logIC50": -7.0}
    result = fit(ONE_SITE, x, y, fixed=pinned)
    assert result.dof == 5
    assert all(p.se is None for p in result.params.values())
    expected = _one_site_f(x, np.array([1000.0, 50.0, -7.0]), {}, np.zeros(5, dtype=np.int_))
    assert result.ss == pytest.approx(float(np.sum((y - expected) ** 2)), rel=1e-12)

"""Wall time to fit 96-well competition plates with profile-likelihood CIs (target < 100 ms).

A plate is 12 competitor concentrations (10 pM to 32 uM, half-log steps) x 8 replicate wells,
counts simulated from Prism's equations (``science.md``) with Poisson counting noise, and every
well is fitted as its own point (Prism's default). Two models, defined here with Prism's
equations: "one site - Fit logIC50" (Top, Bottom, logIC50) and the variable-slope four-parameter
logistic (adds HillSlope). Each fit computes SEs, asymptotic and profile-likelihood 95% CIs for
every parameter (profile=True), with automatic initial values (no hand tuning).

    .venv/bin/python bench/analysis_fit.py [--plates 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from acquisition.analysis import Array, FitResult, IntArray, Model, fit

LOG_CONC = np.repeat(np.arange(-11.0, -4.9, 0.5), 8)  # 12 concentrations x 8 replicates = 96
TRUE = {"Top": 12000.0, "Bottom": 800.0, "logIC50": -7.5, "HillSlope": -1.0}


def _guess(x: Array, y: Array) -> tuple[float, float, float]:
    """Top, Bottom, logIC50 from the replicate means: the plateaus and the half-way crossing."""
    levels = np.unique(x)
    means = np.array([y[x == level].mean() for level in levels])
    top, bottom = float(means.max()), float(means.min())
    half = (top + bottom) / 2
    return top, bottom, float(levels[np.argmin(np.abs(means - half))])


def _one_site_f(x: Array, p: Array, constants: Mapping[str, float], dataset: IntArray) -> Array:
    top, bottom, log_ic50 = p[0], p[1], p[2]
    return bottom + (top - bottom) / (1 + 10 ** (x - log_ic50))


def _one_site_initial(
    x: Array, y: Array, constants: Mapping[str, float], dataset: IntArray
) -> Array:
    return np.array(_guess(x, y))


def _four_pl_f(x: Array, p: Array, constants: Mapping[str, float], dataset: IntArray) -> Array:
    top, bottom, log_ic50, hill = p[0], p[1], p[2], p[3]
    return bottom + (top - bottom) / (1 + 10 ** ((log_ic50 - x) * hill))


def _four_pl_initial(
    x: Array, y: Array, constants: Mapping[str, float], dataset: IntArray
) -> Array:
    return np.array([*_guess(x, y), -1.0])


ONE_SITE = Model(
    name="one-site-fit-logic50",
    params=("Top", "Bottom", "logIC50"),
    constants=(),
    f=_one_site_f,
    initial=_one_site_initial,
    log10_params=("logIC50",),
)
FOUR_PL = Model(
    name="four-param-logistic",
    params=("Top", "Bottom", "logIC50", "HillSlope"),
    constants=(),
    f=_four_pl_f,
    initial=_four_pl_initial,
    log10_params=("logIC50",),
)


def _plate(rng: np.random.Generator) -> Array:
    p = np.array([TRUE["Top"], TRUE["Bottom"], TRUE["logIC50"], TRUE["HillSlope"]])
    expected = _four_pl_f(LOG_CONC, p, {}, np.zeros(LOG_CONC.size, dtype=np.int_))
    return rng.poisson(expected).astype(np.float64)


def _time_one(model: Model, y: Array) -> tuple[float, FitResult]:
    t0 = time.perf_counter()
    result = fit(model, LOG_CONC, y, profile=True)
    return time.perf_counter() - t0, result


def _run(model: Model, plates: list[Array]) -> None:
    _time_one(model, plates[0])  # warm-up: imports, first-call caches
    singles = [_time_one(model, y)[0] for y in plates[:50]]
    t0 = time.perf_counter()
    results = [fit(model, LOG_CONC, y, profile=True) for y in plates]
    total = time.perf_counter() - t0
    covered = sum(
        1
        for r in results
        if (lo := r.params["logIC50"].profile_low) is not None
        and (hi := r.params["logIC50"].profile_high) is not None
        and lo <= TRUE["logIC50"] <= hi
    )
    complete = sum(
        1
        for r in results
        if all(p.profile_low is not None and p.profile_high is not None for p in r.params.values())
    )
    example = results[0]
    ic50 = example.derived["IC50"]
    print(f"{model.name} ({len(model.params)} parameters, 96 points, profile-likelihood CIs)")
    print(
        f"  one plate: median {statistics.median(singles) * 1e3:.1f} ms, "
        f"max {max(singles) * 1e3:.1f} ms over {len(singles)} plates (target < 100 ms)"
    )
    print(
        f"  {len(plates)} plates in one process: {total:.2f} s "
        f"({total / len(plates) * 1e3:.1f} ms/plate)"
    )
    print(
        f"  all profile limits found: {complete}/{len(plates)}; "
        f"95% profile CI of logIC50 covers the truth: {covered}/{len(plates)}"
    )
    print(
        f"  plate 1: IC50 {ic50.estimate * 1e9:.2f} nM "
        f"(profile 95% CI {ic50.profile_low * 1e9 if ic50.profile_low else float('nan'):.2f}"
        f"-{ic50.profile_high * 1e9 if ic50.profile_high else float('nan'):.2f} nM), "
        f"R2 {example.r2:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    plates = [_plate(rng) for _ in range(args.plates)]
    for model in (ONE_SITE, FOUR_PL):
        _run(model, plates)


if __name__ == "__main__":
    main()

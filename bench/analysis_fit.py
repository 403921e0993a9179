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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from acquisition.analysis import Array, FitResult, Model, fit
from acquisition.analysis.models import MODELS

LOG_CONC = np.repeat(np.arange(-11.0, -4.9, 0.5), 8)  # 12 concentrations x 8 replicates = 96
TRUE = {"Top": 12000.0, "Bottom": 800.0, "LogIC50": -7.5, "HillSlope": -1.0}


ONE_SITE = MODELS["one-site-fit-logic50"]
FOUR_PL = MODELS["four-param-logistic"]


def _plate(rng: np.random.Generator) -> Array:
    """96 points drawn from the product's own 4PL with the true parameters, Poisson noise."""
    p = np.array([TRUE[name] for name in FOUR_PL.params])
    expected = FOUR_PL.f(LOG_CONC, p, {}, np.zeros(LOG_CONC.size, dtype=np.int_))
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
        if (lo := r.params["LogIC50"].profile_low) is not None
        and (hi := r.params["LogIC50"].profile_high) is not None
        and lo <= TRUE["LogIC50"] <= hi
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

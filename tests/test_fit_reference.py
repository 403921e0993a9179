"""The fitting engine reproduces data sets with certified or published answers.

NIST StRD nonlinear regression (certified to 11 digits): every model is fitted from both NIST
start points and must reproduce the certified parameters, their certified standard deviations
(the same ``sqrt((SS/DF) * diag((J^T J)^-1))`` convention as Prism) and the residual SS to at
least 6 significant digits. R's Puromycin fit (Michaelis-Menten, the algebra of one-site specific
binding) must match every digit "An Introduction to R" prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.analysis import Array, IntArray, Model, fit

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"  # see its README.md

SIGNIFICANT_DIGITS = 6

Curve = Callable[[Array, Array], Array]

# Each formula exactly as the JSON beside the data names it (checked in test_formula_matches_json).
NIST_MODELS: dict[str, tuple[str, Curve]] = {
    "rat42": ("y = b1 / (1+exp[b2-b3*x])", lambda x, b: b[0] / (1 + np.exp(b[1] - b[2] * x))),
    "rat43": (
        "y = b1 / ((1+exp[b2-b3*x])**(1/b4))",
        lambda x, b: b[0] / (1 + np.exp(b[1] - b[2] * x)) ** (1 / b[3]),
    ),
    "mgh09": (
        "y = b1*(x**2+x*b2) / (x**2+x*b3+b4)",
        lambda x, b: b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3]),
    ),
    "thurber": (
        "y = (b1 + b2*x + b3*x**2 + b4*x**3) / (1 + b5*x + b6*x**2 + b7*x**3)",
        lambda x, b: (
            (b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3)
            / (1 + b[4] * x + b[5] * x**2 + b[6] * x**3)
        ),
    ),
    "misra1a": ("y = b1*(1-exp[-b2*x])", lambda x, b: b[0] * (1 - np.exp(-b[1] * x))),
}


def _load(stem: str) -> tuple[Array, Array, dict[str, Any]]:
    data = np.loadtxt(REFERENCE / f"{stem}.csv", delimiter=",", skiprows=1)
    meta = json.loads((REFERENCE / f"{stem}.json").read_text())
    return data[:, 0], data[:, 1], meta


def _nist_model(name: str, n_params: int) -> Model:
    curve = NIST_MODELS[name][1]

    def f(x: Array, p: Array, constants: Mapping[str, float], dataset: IntArray) -> Array:
        return curve(x, p)

    def no_automatic_start(
        x: Array, y: Array, constants: Mapping[str, float], dataset: IntArray
    ) -> Array:
        raise AssertionError("the NIST tests always pass the NIST start values")

    return Model(
        name=f"nist-{name}",
        params=tuple(f"b{i + 1}" for i in range(n_params)),
        constants=(),
        f=f,
        initial=no_automatic_start,
    )


def _assert_digits(got: float | None, want: float, what: str) -> None:
    assert got is not None, f"{what}: no value"
    lre = -math.log10(abs(got - want) / abs(want)) if got != want else math.inf
    assert lre >= SIGNIFICANT_DIGITS, f"{what}: {got!r} vs certified {want!r} ({lre:.1f} digits)"


def test_every_nist_file_is_covered() -> None:
    on_disk = {p.stem.removeprefix("nist_") for p in REFERENCE.glob("nist_*.json")}
    assert on_disk == set(NIST_MODELS)


@pytest.mark.parametrize("name", sorted(NIST_MODELS))
def test_formula_matches_json(name: str) -> None:
    _, _, meta = _load(f"nist_{name}")
    assert meta["model"] == NIST_MODELS[name][0]


@pytest.mark.parametrize("start", ["start1", "start2"])
@pytest.mark.parametrize("name", sorted(NIST_MODELS))
def test_nist_certified_values(name: str, start: str) -> None:
    x, y, meta = _load(f"nist_{name}")
    certified = meta["certified_values"]
    model = _nist_model(name, len(certified))
    result = fit(model, x, y, p0=dict(zip(model.params, meta[start], strict=True)), profile=False)

    assert result.converged, result.message
    assert result.n == meta["n"]
    # NIST's residual degrees of freedom, n - p. (nist_rat43.json says "dof": 9, a typo: NIST's
    # Rat43.dat certifies 11, and its certified residual SD, sqrt(SS / 11), agrees.)
    assert result.dof == meta["n"] - len(certified)
    assert result.dof == round(meta["residual_sum_of_squares"] / meta["residual_sd"] ** 2)
    for pname, value, sd in zip(model.params, certified, meta["certified_sd"], strict=True):
        _assert_digits(result.params[pname].estimate, value, f"{name} {start} {pname}")
        _assert_digits(result.params[pname].se, sd, f"{name} {start} SD({pname})")
    _assert_digits(result.ss, meta["residual_sum_of_squares"], f"{name} {start} residual SS")
    _assert_digits(result.sy_x, meta["residual_sd"], f"{name} {start} residual SD")


def _michaelis_menten() -> Model:
    def f(x: Array, p: Array, constants: Mapping[str, float], dataset: IntArray) -> Array:
        return p[0] * x / (p[1] + x)

    def initial(x: Array, y: Array, constants: Mapping[str, float], dataset: IntArray) -> Array:
        vm = float(np.max(y))
        half = x[np.argmin(np.abs(y - vm / 2))]
        return np.array([vm, float(half)])

    return Model(name="michaelis-menten", params=("Vm", "K"), constants=(), f=f, initial=initial)


@pytest.mark.parametrize("p0", [None, {"Vm": 200.0, "K": 0.1}], ids=["automatic", "R-start"])
def test_puromycin_treated_matches_r_nls(p0: dict[str, float] | None) -> None:
    x, y, meta = _load("puromycin_treated")
    ref = meta["reference_fit"]
    result = fit(_michaelis_menten(), x, y, p0=p0)

    vm, k = result.params["Vm"], result.params["K"]
    # Every digit R prints: Vm 212.6837 SE 6.947; K 0.06412 SE 0.008281; 10.93 on 10 df.
    assert f"{vm.estimate:.4f}" == "212.6837"
    assert vm.se is not None and f"{vm.se:.3f}" == "6.947"
    assert f"{k.estimate:.5f}" == "0.06412"
    assert k.se is not None and f"{k.se:.6f}" == "0.008281"
    assert f"{result.sy_x:.2f}" == "10.93"
    assert result.dof == ref["df"] == 10
    assert f"{result.ss:.3f}" == f"{ref['rss']:.3f}"
    # Published estimates to the digits the JSON carries (R's nls default tolerance: ~7 digits).
    assert vm.estimate == pytest.approx(ref["Vm"]["est"], rel=1e-6)
    assert k.estimate == pytest.approx(ref["K"]["est"], rel=1e-6)
    # Profile-likelihood limits exist, bracket the estimate and differ from the symmetric ones.
    for p in (vm, k):
        assert p.profile_low is not None and p.profile_high is not None
        assert p.profile_low < p.estimate < p.profile_high

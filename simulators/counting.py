"""Counting physics of a microplate scintillation counter (MicroBeta2-style).

Pure functions and frozen dataclasses; randomness comes from an injected, seeded
:class:`random.Random`, time from arguments. Numbers marked [U] in the spec are
plausible, not measured.

Model, per well counted by detector ``d`` for at most ``T`` minutes::

    true_cpm = DPM * isotope_eff(medium) * quench_factor * rel_eff[d]
               + background_cpm + mean luminescence over [t0, t0 + T]
    observed_cpm = true_cpm / (1 + true_cpm * dead_time_min)      (non-paralysable)
    counts ~ Poisson(observed_cpm * T)

With a precision target p (%2-sigma), the count stops at N* = ceil((200/p)^2) counts if that
comes first: the time to reach N* is Gamma(N*, 1/observed_cpm). CPM = counts / time,
CCPM = CPM / norm[d] (the normalization table: rel_eff with a small calibration error),
%2-sigma = 200 / sqrt(counts).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from drivers.counter.codec import WellCount
from labware import FORMATS
from labware import wells as plate_wells

__all__ = [
    "EFFICIENCY",
    "DetectorBank",
    "Medium",
    "PhysicsConfig",
    "Plate",
    "Position",
    "count_well",
    "plan_count",
    "poisson",
    "positions",
    "sigma2_pct",
]

Medium = Literal["filtermat", "liquid"]

EFFICIENCY: Final[Mapping[str, Mapping[str, float]]] = MappingProxyType({
    # Counting efficiency by medium and isotope [U]: 3H ~57 % in liquid, 14C ~94 %.
    "liquid": MappingProxyType({"H3": 0.57, "C14": 0.94, "P32": 0.98, "I125": 0.75}),
    "filtermat": MappingProxyType({"H3": 0.40, "C14": 0.90, "P32": 0.95, "I125": 0.70}),
})
DEFAULT_QUENCH: Final[Mapping[str, float]] = MappingProxyType({"liquid": 0.05, "filtermat": 0.15})
SQP_UNQUENCHED: Final = 790.0
SQP_PER_QUENCH: Final = 150.0
QUENCH_CURVE_LIMIT: Final = 0.8  # beyond it the DPM monitor flags the well (Q)
LUMINESCENCE_FLAG_SHARE: Final = 0.05
DEAD_TIME_FLAG_LOSS: Final = 0.05
_NORMAL_ABOVE: Final = 1e7


@dataclass(frozen=True)
class PhysicsConfig:
    background_cpm: float = 25.0
    overhead_s: float = 2.0  # plate movement and settling per position [U]
    dead_time_s: float = 2e-6  # ~9 % loss at 3,000,000 CPM
    luminescence_tau_s: float = 1200.0  # chemiluminescence decay time constant [U]
    normalization_error: float = 0.005  # relative sd of the normalization table


@dataclass(frozen=True)
class Plate:
    """What is in the counter: a plate or filter mat with activity per well.

    Luminescence is the rate at ``loaded_at_s`` (simulated seconds), decaying exponentially.
    Quench is 0 (none) to 1 (heavy); a missing well holds no activity.
    """

    plate_id: str
    dpm_by_well: Mapping[str, float]
    luminescence_cpm_by_well: Mapping[str, float]
    quench_by_well: Mapping[str, float]
    medium: Medium
    loaded_at_s: float


@dataclass(frozen=True)
class DetectorBank:
    relative_efficiency: tuple[float, ...]
    normalization: tuple[float, ...]

    @classmethod
    def create(cls, rng: random.Random, detectors: int, physics: PhysicsConfig) -> DetectorBank:
        rel = tuple(rng.uniform(0.9, 1.0) for _ in range(detectors))
        norm = tuple(e * (1 + rng.gauss(0.0, physics.normalization_error)) for e in rel)
        return cls(rel, norm)


@dataclass(frozen=True)
class Position:
    """One plate position: the wells its detectors count together, done at ``end_s``."""

    end_s: float
    wells: tuple[WellCount, ...]


def positions(detectors: int) -> tuple[tuple[tuple[int, str], ...], ...]:
    """For each plate position, the ``(detector, well)`` pairs counted in parallel.

    Each detector covers a block of ``12 // detectors`` columns x 8 rows: on 12 detectors one
    column (8 positions), on 6 two columns (16 positions), on 1 the whole plate (96).
    """
    if detectors not in (1, 2, 3, 4, 6, 12):
        raise ValueError(f"unsupported detector count {detectors}")
    cols = 12 // detectors
    return tuple(
        tuple((d + 1, f"{row}{d * cols + col + 1}") for d in range(detectors))
        for col in range(cols)
        for row in FORMATS[96].rows
    )


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: Knuth's product method below 10, Hormann's PTRS transformed rejection
    (exact; the algorithm numpy uses) up to 1e7, the normal approximation above (relative
    error of the approximation ~1/sqrt(mean) in the tails, irrelevant there)."""
    if mean < 0 or not math.isfinite(mean):
        raise ValueError(f"bad Poisson mean {mean}")
    if mean == 0:
        return 0
    if mean < 10:
        limit, k, prod = math.exp(-mean), 0, rng.random()
        while prod > limit:
            k += 1
            prod *= rng.random()
        return k
    if mean > _NORMAL_ABOVE:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    slam, loglam = math.sqrt(mean), math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + mean + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b) <= (
            -mean + k * loglam - math.lgamma(k + 1)
        ):
            return k


def sigma2_pct(counts: int) -> float:
    """%2-sigma of a Poisson count: 200 / sqrt(N) (200 for N = 0, as for N = 1)."""
    return 200.0 / math.sqrt(max(counts, 1))


def count_well(
    rng: random.Random, observed_cpm: float, count_time_s: float, precision_pct: float
) -> tuple[int, float, bool]:
    """Count one well: ``(counts, seconds counted, stopped on precision)``."""
    t_max_min = count_time_s / 60.0
    if observed_cpm <= 0:
        return 0, count_time_s, False
    if precision_pct > 0:
        target = math.ceil((200.0 / precision_pct) ** 2)
        t_target_min = rng.gammavariate(target, 1.0 / observed_cpm)
        if t_target_min < t_max_min:
            return target, t_target_min * 60.0, True
        # The target was not reached: the count is Poisson conditioned on N < target.
        for _ in range(50):
            n = poisson(rng, observed_cpm * t_max_min)
            if n < target:
                return n, count_time_s, False
        return target - 1, count_time_s, False
    return poisson(rng, observed_cpm * t_max_min), count_time_s, False


def _mean_luminescence(lum0: float, tau_s: float, t0_s: float, duration_s: float) -> float:
    if lum0 <= 0:
        return 0.0
    if duration_s <= 0:
        return lum0 * math.exp(-t0_s / tau_s)
    return lum0 * tau_s / duration_s * (
        math.exp(-t0_s / tau_s) - math.exp(-(t0_s + duration_s) / tau_s)
    )


def _measure(
    rng: random.Random,
    *,
    index: int,
    well: str,
    detector: int,
    plate: Plate,
    bank: DetectorBank,
    physics: PhysicsConfig,
    isotope: str,
    count_time_s: float,
    precision_pct: float,
    now_s: float,
) -> WellCount:
    quench = plate.quench_by_well.get(well, DEFAULT_QUENCH[plate.medium])
    efficiency = EFFICIENCY[plate.medium][isotope] * (1 - 0.6 * quench)
    rel = bank.relative_efficiency[detector - 1]
    lum = _mean_luminescence(
        plate.luminescence_cpm_by_well.get(well, 0.0),
        physics.luminescence_tau_s,
        now_s - plate.loaded_at_s,
        count_time_s,
    )
    true_cpm = plate.dpm_by_well.get(well, 0.0) * efficiency * rel + physics.background_cpm + lum
    loss = true_cpm * physics.dead_time_s / 60.0
    observed_cpm = true_cpm / (1 + loss)
    counts, seconds, precision_stop = count_well(rng, observed_cpm, count_time_s, precision_pct)
    cpm = counts / (seconds / 60.0)
    flags = []
    if true_cpm > 0 and lum / true_cpm > LUMINESCENCE_FLAG_SHARE:
        flags.append("L")
    if loss / (1 + loss) > DEAD_TIME_FLAG_LOSS:
        flags.append("D")
    if quench > QUENCH_CURVE_LIMIT:
        flags.append("Q")
    if precision_stop:
        flags.append("P")
    sqp = SQP_UNQUENCHED - SQP_PER_QUENCH * quench + rng.gauss(0.0, 1.5)
    return WellCount(
        index=index,
        well=well,
        detector=detector,
        counts=counts,
        count_time_s=round(seconds, 3),
        cpm=round(cpm, 1),
        ccpm=round(cpm / bank.normalization[detector - 1], 1),
        sigma2_pct=round(sigma2_pct(counts), 2),
        sqp=round(sqp, 1),
        flags=tuple(flags),
    )


def plan_count(
    rng: random.Random,
    *,
    plate: Plate,
    bank: DetectorBank,
    physics: PhysicsConfig,
    isotope: str,
    count_time_s: float,
    precision_pct: float,
    wells: tuple[str, ...] | None,
    start_s: float,
) -> tuple[Position, ...]:
    """Decide every result of a count up front; the instrument reveals each position's wells
    once the clock passes its ``end_s``. Positions without a selected well are skipped."""
    selected = frozenset(plate_wells(96) if wells is None else wells)
    plan: list[Position] = []
    t, index = start_s, 0
    for pairs in positions(len(bank.relative_efficiency)):
        chosen = [(d, w) for d, w in pairs if w in selected]
        if not chosen:
            continue
        t += physics.overhead_s
        results = []
        for detector, well in chosen:
            results.append(
                _measure(
                    rng, index=index, well=well, detector=detector, plate=plate, bank=bank,
                    physics=physics, isotope=isotope, count_time_s=count_time_s,
                    precision_pct=precision_pct, now_s=t,
                )
            )
            index += 1
        t += max(r.count_time_s for r in results)
        plan.append(Position(t, tuple(results)))
    return tuple(plan)

"""Radioligand filtration-binding physics: pure functions and frozen dataclasses, no I/O.

Units: concentrations nM (a plate map's competitor molarity is converted), amounts fmol
(1 nM x 1 uL = 1 fmol), times s, temperatures C. The model and its parameters are
documented with their sources in ``docs/protocols/simulation.md``; in short, for one well with
receptor ``R = Bmax x protein``, free radioligand ``L`` and competitor ``C``:

* equilibrium, one site, competitive: ``Beq = R (L/Kd) / (1 + L/Kd + C/Ki)``, which is the
  Cheng-Prusoff relation ``IC50 = Ki (1 + L/Kd)``;
* ligand depletion (optional): ``L`` is the free concentration, solving
  ``L_added V = L V + Beq(L) + NSBmem(L)`` (the competitor is taken as not depleted);
* kinetics, the competitor in rapid equilibrium with free receptor:
  ``dB/dt = kon L (R - B) / (1 + C/Ki) - koff B``, so ``B(t) = Beq (1 - exp(-kobs t))`` with
  ``kobs = kon L / (1 + C/Ki) + koff`` and ``koff = kon Kd``;
* temperature: ``k(T) = k(Tref) Q10^((T - Tref)/10)`` for both kon and koff, so Kd and Ki
  do not depend on temperature and a whole temperature history reduces to one number, the
  equivalent time at ``Tref``: ``tau = integral of Q10^((T(t) - Tref)/10) s(t) dt`` (``s`` the
  shaking factor), and ``B = Beq (1 - exp(-kobs(Tref) tau))``;
* nonspecific binding: to membranes ``k_mem x protein x L`` (instantaneous, non-saturable);
  to the filter, a fraction of the free radioligand filtered through (much lower with PEI);
  plus the free radioligand in the liquid the filter retains, diluted by each wash;
* washes: specific binding dissociates as ``exp(-koff(T_wash) x washes x seconds/wash)``;
* counts: ``DPM = fmol x SA[Ci/mmol] x 2.22`` (1 Ci = 2.22e12 dpm, 1 mmol = 1e12 fmol).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from simulators.plate_map import DEFAULT_RADIOLIGAND, WellContents
from simulators.world_api import HarvestSettings

__all__ = [
    "DPM_PER_CI",
    "FMOL_PER_MMOL",
    "BindingTruth",
    "SpotActivity",
    "WellEquilibrium",
    "dpm_from_fmol",
    "dpm_per_fmol",
    "filter_spot",
    "fmol_from_dpm",
    "ic50_nm",
    "mean_relaxing_temperature",
    "one_site_specific_fmol",
    "rate_factor",
    "relax_temperature",
    "wash_retention",
    "well_equilibrium",
]

DPM_PER_CI = 2.22e12  # disintegrations per minute in one curie
FMOL_PER_MMOL = 1e12


def _default_ki() -> Mapping[str, float]:
    return MappingProxyType({"progesterone": 100.0, "haloperidol": 3.0, "(+)-pentazocine": 5.13})


@dataclass(frozen=True)
class BindingTruth:
    """The simulated world's true constants (defaults: science.md; [U] = plausible, unmeasured).

    Affinities hold at every temperature (kon and koff share ``q10``); rate constants are
    at ``reference_temperature_c``.
    """

    radioligand: str = DEFAULT_RADIOLIGAND
    kd_nm: float = 5.13  # de Costa et al. 1989, guinea-pig brain
    bmax_fmol_per_mg: float = 1146.0  # idem
    ki_nm: Mapping[str, float] = field(default_factory=_default_ki)
    kon_per_nm_per_min: float = 0.01  # 1.7e5 /M/s: koff 0.051/min, t1/2 13.5 min at 37 C [U]
    reference_temperature_c: float = 37.0
    q10: float = 2.5  # rate change per 10 C, both directions [U]
    shaking_rate_factor: float = 1.0  # membranes stay suspended either way: no effect [U]
    membrane_nsb_ul_per_mg: float = 10.0  # NSB fmol per nM free per mg protein [U]
    filter_nsb_fraction: float = 0.012  # of the free radioligand filtered, untreated GF/B [U]
    filter_nsb_fraction_pei: float = 0.001  # idem, GF/B pre-wetted in 0.3-0.5 % PEI [U]
    filter_residual_ul: float = 5.0  # liquid a filter spot keeps after each pass [U]
    ligand_depletion: bool = True

    def __post_init__(self) -> None:
        positive = {
            "kd_nm": self.kd_nm, "kon_per_nm_per_min": self.kon_per_nm_per_min,
            "q10": self.q10, "shaking_rate_factor": self.shaking_rate_factor,
        }
        non_negative = {
            "bmax_fmol_per_mg": self.bmax_fmol_per_mg,
            "membrane_nsb_ul_per_mg": self.membrane_nsb_ul_per_mg,
            "filter_residual_ul": self.filter_residual_ul,
        }
        for name, value in positive.items():
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name}: must be a positive number, got {value}")
        for name, value in non_negative.items():
            if not value >= 0 or not math.isfinite(value):
                raise ValueError(f"{name}: must be a non-negative number, got {value}")
        for name, value in (("filter_nsb_fraction", self.filter_nsb_fraction),
                            ("filter_nsb_fraction_pei", self.filter_nsb_fraction_pei)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: must be within 0-1, got {value}")
        for compound, ki in self.ki_nm.items():
            if not ki > 0 or not math.isfinite(ki):
                raise ValueError(f"ki_nm.{compound}: must be a positive number, got {ki}")
        object.__setattr__(self, "ki_nm", MappingProxyType(dict(self.ki_nm)))

    def summary(self) -> dict[str, object]:
        """Every constant, JSON-ready, with the derived koff."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "ki_nm": dict(self.ki_nm), "koff_per_min": self.koff_per_min}

    @property
    def koff_per_min(self) -> float:
        return self.kon_per_nm_per_min * self.kd_nm

    def ki_of(self, competitor: str) -> float:
        try:
            return self.ki_nm[competitor]
        except KeyError:
            known = ", ".join(sorted(self.ki_nm))
            raise ValueError(f"unknown competitor {competitor!r}; known: {known}") from None


# ----------------------------------------------------------------------------- units


def dpm_per_fmol(specific_activity_ci_per_mmol: float) -> float:
    """1 Ci/mmol = 2.22e12 dpm per 1e12 fmol = 2.22 dpm/fmol."""
    return specific_activity_ci_per_mmol * DPM_PER_CI / FMOL_PER_MMOL


def dpm_from_fmol(fmol: float, specific_activity_ci_per_mmol: float) -> float:
    return fmol * dpm_per_fmol(specific_activity_ci_per_mmol)


def fmol_from_dpm(dpm: float, specific_activity_ci_per_mmol: float) -> float:
    return dpm / dpm_per_fmol(specific_activity_ci_per_mmol)


# ----------------------------------------------------------------------------- equilibrium


def ic50_nm(ki_nm: float, radioligand_nm: float, kd_nm: float) -> float:
    """Cheng-Prusoff: the competitor concentration halving specific binding."""
    return ki_nm * (1 + radioligand_nm / kd_nm)


def one_site_specific_fmol(
    receptor_fmol: float, radioligand_nm: float, kd_nm: float,
    competitor_nm: float = 0.0, ki_nm: float = math.inf,
) -> float:
    """Specifically bound radioligand at equilibrium, one site, competitive."""
    occupancy = radioligand_nm / kd_nm
    return receptor_fmol * occupancy / (1 + occupancy + competitor_nm / ki_nm)


@dataclass(frozen=True)
class WellEquilibrium:
    """Where one well is heading, and how fast (``kobs_ref_per_s`` at the reference
    temperature). ``free_nm`` is the free radioligand at equilibrium."""

    receptor_fmol: float
    added_fmol: float
    free_nm: float
    specific_fmol: float
    membrane_nsb_fmol: float
    kobs_ref_per_s: float
    volume_ul: float
    specific_activity_ci_per_mmol: float

    def specific_at(self, equivalent_s: float) -> float:
        """Specific binding after ``equivalent_s`` seconds at the reference temperature."""
        return self.specific_fmol * -math.expm1(-self.kobs_ref_per_s * max(0.0, equivalent_s))


def well_equilibrium(truth: BindingTruth, well: WellContents) -> WellEquilibrium:
    """Equilibrium and kinetics of one well; ``ValueError`` for an unknown compound."""
    if well.radioligand_nm > 0 and well.radioligand != truth.radioligand:
        raise ValueError(
            f"unknown radioligand {well.radioligand!r}; this world knows {truth.radioligand!r}"
        )
    ki = truth.ki_of(well.competitor) if well.competitor is not None else math.inf
    competitor_nm = well.competitor_nm if well.competitor is not None else 0.0
    receptor = truth.bmax_fmol_per_mg * well.membrane_ug / 1000.0
    added = well.radioligand_nm * well.volume_ul
    nsb_per_nm = truth.membrane_nsb_ul_per_mg * well.membrane_ug / 1000.0

    def bound(free_nm: float) -> float:
        return one_site_specific_fmol(receptor, free_nm, truth.kd_nm, competitor_nm, ki)

    free = well.radioligand_nm
    if truth.ligand_depletion and added > 0:
        # L V + B(L) + NSB(L) grows with L: bisect for the free concentration.
        lo, hi = 0.0, well.radioligand_nm
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid * well.volume_ul + bound(mid) + nsb_per_nm * mid > added:
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-13 * well.radioligand_nm:
                break
        free = 0.5 * (lo + hi)
    kon_per_s = truth.kon_per_nm_per_min / 60.0
    koff_per_s = truth.koff_per_min / 60.0
    return WellEquilibrium(
        receptor_fmol=receptor,
        added_fmol=added,
        free_nm=free,
        specific_fmol=bound(free),
        membrane_nsb_fmol=nsb_per_nm * free,
        kobs_ref_per_s=kon_per_s * free / (1 + competitor_nm / ki) + koff_per_s,
        volume_ul=well.volume_ul,
        specific_activity_ci_per_mmol=well.specific_activity_ci_per_mmol,
    )


# ----------------------------------------------------------------------------- time, heat


def rate_factor(truth: BindingTruth, temperature_c: float, shaking: bool = False) -> float:
    """Rate constants at ``temperature_c`` relative to the reference temperature."""
    factor = float(truth.q10 ** ((temperature_c - truth.reference_temperature_c) / 10.0))
    return factor * (truth.shaking_rate_factor if shaking else 1.0)


def relax_temperature(well_c: float, ambient_c: float, dt_s: float, tau_s: float) -> float:
    """First-order approach of the liquid in a plate to the air around it."""
    if tau_s <= 0:
        return ambient_c
    return ambient_c + (well_c - ambient_c) * math.exp(-max(0.0, dt_s) / tau_s)


def mean_relaxing_temperature(well_c: float, ambient_c: float, dt_s: float,
                              tau_s: float) -> float:
    """The mean liquid temperature over ``dt_s`` of :func:`relax_temperature`."""
    if tau_s <= 0 or dt_s <= 0:
        return ambient_c if tau_s <= 0 else well_c
    return ambient_c + (well_c - ambient_c) * tau_s / dt_s * -math.expm1(-dt_s / tau_s)


# ----------------------------------------------------------------------------- harvest


def wash_retention(truth: BindingTruth, settings: HarvestSettings) -> float:
    """Share of the specific binding still on the filter after the washes."""
    koff_per_s = truth.koff_per_min / 60.0 * rate_factor(truth, settings.wash_temperature_c)
    return math.exp(-koff_per_s * settings.washes * settings.wash_seconds_per_cycle)


@dataclass(frozen=True)
class SpotActivity:
    """Radioligand on one filter spot after harvesting, by where it sits."""

    specific_fmol: float
    membrane_nsb_fmol: float
    filter_nsb_fmol: float
    trapped_fmol: float
    specific_activity_ci_per_mmol: float

    @property
    def total_fmol(self) -> float:
        return (self.specific_fmol + self.membrane_nsb_fmol + self.filter_nsb_fmol
                + self.trapped_fmol)

    @property
    def dpm(self) -> float:
        return dpm_from_fmol(self.total_fmol, self.specific_activity_ci_per_mmol)


def filter_spot(
    truth: BindingTruth,
    eq: WellEquilibrium,
    specific_fmol: float,
    settings: HarvestSettings,
    *,
    clogged_fraction: float | None = None,
) -> SpotActivity:
    """What one well leaves on its filter spot.

    ``specific_fmol`` is the specific binding at the moment of filtration. A clogged well
    (``clogged_fraction`` = the share of the well that reached the filter, drawn by the
    caller) is not washed: it keeps that share of an unwashed spot.
    """
    free_fmol = max(0.0, eq.added_fmol - specific_fmol - eq.membrane_nsb_fmol)
    free_nm = free_fmol / eq.volume_ul
    fraction = truth.filter_nsb_fraction_pei if settings.prewet_pei else truth.filter_nsb_fraction
    trapped = free_nm * truth.filter_residual_ul
    share = 1.0
    if clogged_fraction is None:
        specific_fmol *= wash_retention(truth, settings)
        trapped *= _wash_dilution(truth.filter_residual_ul, settings)
    else:
        share = min(1.0, max(0.0, clogged_fraction))
    return SpotActivity(
        specific_fmol=share * specific_fmol,
        membrane_nsb_fmol=share * eq.membrane_nsb_fmol,
        filter_nsb_fmol=share * fraction * free_fmol,
        trapped_fmol=share * trapped,
        specific_activity_ci_per_mmol=eq.specific_activity_ci_per_mmol,
    )


def _wash_dilution(residual_ul: float, settings: HarvestSettings) -> float:
    """Each wash mixes the retained liquid with the wash volume and drains to the residue."""
    total_ul = residual_ul + settings.wash_volume_ml * 1000.0
    if total_ul <= 0:
        return 0.0
    return float((residual_ul / total_ul) ** max(0, settings.washes))

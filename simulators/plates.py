"""Demo plate: a sigma-1 competition binding assay laid out like the seed protocol.

Layout (96 wells, DPM on the filter mat after harvesting):

* column 1: total binding (TB, ~8000 DPM), column 2: non-specific binding (NSB, ~600 DPM);
* columns 3-12: ten competitor concentrations, 1e-11 to 1e-5 M (log-spaced), with
  rows A-C a progesterone-like competitor (Ki 100 nM) in triplicate and rows D-F a
  haloperidol-like one (Ki 3 nM) in triplicate, following the one-site model
  ``B = NSB + (TB - NSB) / (1 + [C] / IC50)`` with ``IC50 = Ki (1 + [L]/Kd)`` and [L] = Kd;
* rows G-H of columns 3-12: buffer blanks (0 DPM, background only), except G12 which carries
  a decaying chemiluminescence (so the luminescence flag can be seen).

Each well gets a seeded 3 % pipetting scatter: the same seed always gives the same plate.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from labware import FORMATS

__all__ = ["DemoPlate", "demo_plate"]

TOTAL_DPM = 8000.0
NSB_DPM = 600.0
CONCENTRATIONS_M = tuple(10 ** (-11 + 6 * i / 9) for i in range(10))
COMPETITORS = (("progesterone-like", 100e-9, "ABC"), ("haloperidol-like", 3e-9, "DEF"))
LIGAND_OVER_KD = 1.0


@dataclass(frozen=True)
class DemoPlate:
    plate_id: str
    dpm_by_well: Mapping[str, float]
    luminescence_cpm_by_well: Mapping[str, float]
    concentration_m_by_well: Mapping[str, float]


def demo_plate(seed: int = 1, plate_id: str = "DEMO-0001") -> DemoPlate:
    rng = random.Random(seed)
    dpm: dict[str, float] = {}
    conc: dict[str, float] = {}
    for row in FORMATS[96].rows:
        dpm[f"{row}1"] = TOTAL_DPM
        dpm[f"{row}2"] = NSB_DPM
    for _name, ki_m, rows in COMPETITORS:
        ic50 = ki_m * (1 + LIGAND_OVER_KD)
        for row in rows:
            for i, c in enumerate(CONCENTRATIONS_M):
                well = f"{row}{i + 3}"
                dpm[well] = NSB_DPM + (TOTAL_DPM - NSB_DPM) / (1 + c / ic50)
                conc[well] = c
    for row in "GH":
        for col in range(3, 13):
            dpm[f"{row}{col}"] = 0.0
    scattered = {w: max(0.0, v * rng.gauss(1.0, 0.03)) for w, v in sorted(dpm.items())}
    return DemoPlate(
        plate_id=plate_id,
        dpm_by_well=MappingProxyType(scattered),
        luminescence_cpm_by_well=MappingProxyType({"G12": 4000.0}),
        concentration_m_by_well=MappingProxyType(conc),
    )

"""Data reduction for radioligand binding plates (pure: numpy only, no I/O).

Order of operations (science.md, "Counting statistics"): background is subtracted first; the
total (T) and nonspecific (NSB) control wells give the assay window; specific binding of a well
is ``net - mean(NSB)`` and percent specific binding ``100 * (net - mean(NSB)) / (mean(T) -
mean(NSB))``. CPM become DPM through the counting efficiency, DPM become fmol through the
specific activity (1 Ci/mmol = 2.22 dpm/fmol) and fmol/mg through the protein amount the user
enters (Bradford).

Units: rates in counts per minute, count times in minutes, concentrations of the radioligand in
nM, volumes in mL (1 nM in 1 mL is 1 pmol = 1000 fmol), competitor concentrations as log10
molar. Replicate SDs are sample SDs (ddof=1), as Prism reports them.

Degenerate numbers (no wells, NaN, a single replicate) do not raise here: they come out as NaN
and :mod:`acquisition.analysis.qc` turns them into a clear verdict. Structurally invalid input
(an unknown role, a competitor well without a concentration, a non-physical efficiency) raises
:class:`~acquisition.errors.AnalysisError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import numpy as np
import numpy.typing as npt

from acquisition.errors import AnalysisError

__all__ = [
    "DPM_PER_FMOL_PER_CI_PER_MMOL",
    "ConcentrationPoint",
    "ReducedWell",
    "Reduction",
    "ReplicateStats",
    "Role",
    "WellRecord",
    "added_radioligand_fmol",
    "cheng_prusoff_ic50",
    "cheng_prusoff_ki",
    "cpm_to_dpm",
    "currie_critical_level",
    "currie_detection_limit",
    "dpm_to_fmol",
    "fmol_per_mg",
    "fmol_to_dpm",
    "lower_limit_of_detection_cpm",
    "net_rate_sd",
    "percent_2sigma",
    "reduce_plate",
    "summarize",
]

Array = npt.NDArray[np.float64]

DPM_PER_FMOL_PER_CI_PER_MMOL: Final = 2.22
"""1 Ci = 2.22e12 dpm and 1 mmol = 1e12 fmol, so 1 Ci/mmol = 2.22 dpm/fmol."""

FMOL_PER_NM_ML: Final = 1000.0
"""1 nM in 1 mL is 1e-9 mol/L * 1e-3 L = 1e-12 mol = 1000 fmol."""

Role = Literal["total", "nsb", "competitor", "blank"]
ROLES: Final[tuple[str, ...]] = get_args(Role)

LUMINESCENCE_FLAGS: Final = frozenset({"L", "luminescence"})


# --------------------------------------------------------------------- counting statistics


def percent_2sigma(counts: float) -> float:
    """%2-sigma of a Poisson count of ``counts`` gross counts: 200/sqrt(N) (inf for N <= 0)."""
    if not counts > 0:
        return math.inf
    return 200.0 / math.sqrt(counts)


def net_rate_sd(gross_cpm: float, gross_min: float, bkg_cpm: float, bkg_min: float) -> float:
    """SD of a net rate (cpm): sqrt(Rg/tg + Rb/tb), rates in cpm and times in minutes."""
    if gross_min <= 0 or bkg_min <= 0:
        raise AnalysisError("count times must be positive")
    return math.sqrt(max(gross_cpm, 0.0) / gross_min + max(bkg_cpm, 0.0) / bkg_min)


def currie_critical_level(background_counts: float) -> float:
    """Currie's critical level L_C = 2.33 sqrt(B) counts (paired blank, equal times)."""
    return 2.33 * math.sqrt(max(background_counts, 0.0))


def currie_detection_limit(background_counts: float) -> float:
    """Currie's detection limit L_D = 2.71 + 4.65 sqrt(B) counts (alpha = beta = 0.05)."""
    return 2.71 + 4.65 * math.sqrt(max(background_counts, 0.0))


def lower_limit_of_detection_cpm(bkg_cpm: float, bkg_min: float, sample_min: float) -> float:
    """LLD as a rate: 2.71/ts + 3.29 sqrt(Rb/tb + Rb/ts) (cpm; times in minutes)."""
    if bkg_min <= 0 or sample_min <= 0:
        raise AnalysisError("count times must be positive")
    rb = max(bkg_cpm, 0.0)
    return 2.71 / sample_min + 3.29 * math.sqrt(rb / bkg_min + rb / sample_min)


# ------------------------------------------------------------------------- unit conversions


def _check_efficiency(efficiency: float) -> None:
    if not 0.0 < efficiency <= 1.0:
        raise AnalysisError(f"counting efficiency must be in (0, 1], got {efficiency}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise AnalysisError(f"{name} must be a positive number, got {value}")


def cpm_to_dpm(cpm: float, efficiency: float, background_cpm: float = 0.0) -> float:
    """DPM = (CPM - background) / efficiency; efficiency is a fraction (0.4 for 40%)."""
    _check_efficiency(efficiency)
    return (cpm - background_cpm) / efficiency


def dpm_to_fmol(dpm: float, specific_activity_ci_per_mmol: float) -> float:
    """fmol = DPM / (SA[Ci/mmol] * 2.22)."""
    _check_positive("specific activity", specific_activity_ci_per_mmol)
    return dpm / (specific_activity_ci_per_mmol * DPM_PER_FMOL_PER_CI_PER_MMOL)


def fmol_to_dpm(fmol: float, specific_activity_ci_per_mmol: float) -> float:
    """DPM = fmol * SA[Ci/mmol] * 2.22."""
    _check_positive("specific activity", specific_activity_ci_per_mmol)
    return fmol * specific_activity_ci_per_mmol * DPM_PER_FMOL_PER_CI_PER_MMOL


def fmol_per_mg(fmol: float, protein_mg: float) -> float:
    """Bound radioligand per mg of membrane protein."""
    _check_positive("protein amount (mg)", protein_mg)
    return fmol / protein_mg


def added_radioligand_fmol(radioligand_nm: float, volume_ml: float) -> float:
    """Radioligand added to a well: nM x mL x 1000 fmol (4 nM in 0.25 mL = 1000 fmol)."""
    return radioligand_nm * volume_ml * FMOL_PER_NM_ML


def cheng_prusoff_ki(ic50: float, radioligand: float, kd: float) -> float:
    """Ki = IC50 / (1 + [L]/Kd) (Cheng & Prusoff 1973); [L] and Kd in the same unit."""
    _check_positive("radioligand Kd", kd)
    return ic50 / (1.0 + radioligand / kd)


def cheng_prusoff_ic50(ki: float, radioligand: float, kd: float) -> float:
    """The inverse: IC50 = Ki * (1 + [L]/Kd)."""
    _check_positive("radioligand Kd", kd)
    return ki * (1.0 + radioligand / kd)


# ---------------------------------------------------------------------------- well records


@dataclass(frozen=True)
class WellRecord:
    """One counted well as the analysis sees it.

    ``cpm`` is the rate the counter reported (CPM, or CCPM when the detectors are normalised),
    *before* background subtraction; ``log_conc`` is the log10 molar competitor concentration
    (competitor wells only). ``counts`` (gross counts) or ``sigma2_pct`` feed the counting-error
    QC; ``flags`` are the counter's flags ("L" = luminescence).
    """

    well: str
    cpm: float
    role: Role
    log_conc: float | None = None
    counts: float | None = None
    sigma2_pct: float | None = None
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise AnalysisError(f"well {self.well}: role must be one of {ROLES}, got {self.role!r}")
        if self.role == "competitor" and self.log_conc is None:
            raise AnalysisError(
                f"well {self.well}: a competitor well needs its log10 molar concentration"
            )

    @property
    def pct_2sigma(self) -> float | None:
        """%2-sigma as reported, else from the gross counts, else None."""
        if self.sigma2_pct is not None:
            return self.sigma2_pct
        if self.counts is not None:
            return percent_2sigma(self.counts)
        return None

    @property
    def luminescent(self) -> bool:
        return any(f in LUMINESCENCE_FLAGS for f in self.flags)

    @classmethod
    def from_reading(
        cls,
        reading: Mapping[str, Any],
        role: Role,
        log_conc: float | None = None,
        *,
        rate: Literal["ccpm", "cpm"] = "ccpm",
    ) -> WellRecord:
        """From a count run's well reading (a ``WellReading`` dumped to a dict)."""
        return cls(
            well=str(reading["well"]),
            cpm=float(reading[rate]),
            role=role,
            log_conc=log_conc,
            counts=None if reading.get("counts") is None else float(reading["counts"]),
            sigma2_pct=(
                None if reading.get("sigma2_pct") is None else float(reading["sigma2_pct"])
            ),
            flags=tuple(str(f) for f in reading.get("flags") or ()),
        )


@dataclass(frozen=True)
class ReplicateStats:
    """Mean and sample SD (ddof=1) of replicates; NaN mean for n=0, NaN SD for n<2."""

    n: int
    mean: float
    sd: float

    @property
    def sem(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def cv_pct(self) -> float:
        return 100.0 * self.sd / self.mean if self.mean != 0 else math.nan


def summarize(values: Iterable[float]) -> ReplicateStats:
    """Mean and sample SD of replicate values (NaN propagates, as it should)."""
    arr = np.asarray(list(values), dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        return ReplicateStats(0, math.nan, math.nan)
    mean = float(np.mean(arr))
    sd = float(np.std(arr, ddof=1)) if n >= 2 else math.nan
    return ReplicateStats(n, mean, sd)


@dataclass(frozen=True)
class ReducedWell:
    """A well with its derived values (None where the needed input was not given)."""

    record: WellRecord
    net_cpm: float  # background-corrected
    specific_cpm: float  # net - mean(NSB)
    percent_specific: float  # 100 * specific / (mean(T) - mean(NSB))
    dpm: float | None  # net DPM
    specific_fmol: float | None
    specific_fmol_per_mg: float | None


@dataclass(frozen=True)
class ConcentrationPoint:
    """Replicates of one competitor concentration."""

    log_conc: float
    net_cpm: ReplicateStats
    percent_specific: ReplicateStats


@dataclass(frozen=True)
class Reduction:
    """A reduced plate. ``x``/``y`` are the competitor replicates as individual points (log10 M,
    net cpm), sorted by x, ready for the fit; ``y_percent`` is the same as percent specific."""

    background_cpm: float
    total: ReplicateStats  # net cpm of the total-binding wells
    nsb: ReplicateStats  # net cpm of the NSB wells
    blank: ReplicateStats  # raw cpm of the blank wells
    wells: tuple[ReducedWell, ...]
    points: tuple[ConcentrationPoint, ...]
    x: Array
    y: Array
    y_percent: Array
    efficiency: float | None = None
    specific_activity: float | None = None
    protein_mg: float | None = None
    total_dpm: float | None = None
    specific_dpm: float | None = None
    specific_fmol: float | None = None
    specific_fmol_per_mg: float | None = None
    fraction_bound: float | None = None  # bound in the total wells / radioligand added
    notes: tuple[str, ...] = field(default=())

    @property
    def specific_cpm(self) -> float:
        return self.total.mean - self.nsb.mean

    @property
    def percent_specific_of_total(self) -> float:
        """Specific binding as % of total binding in the control wells."""
        return 100.0 * self.specific_cpm / self.total.mean if self.total.mean else math.nan

    @property
    def nsb_percent_of_total(self) -> float:
        return 100.0 * self.nsb.mean / self.total.mean if self.total.mean else math.nan


def reduce_plate(
    wells: Sequence[WellRecord],
    *,
    background_cpm: float | None = None,
    efficiency: float | None = None,
    specific_activity: float | None = None,
    protein_mg: float | None = None,
    added_cpm: float | None = None,
    added_dpm: float | None = None,
    radioligand_nm: float | None = None,
    volume_ml: float | None = None,
) -> Reduction:
    """Reduce a plate of counted wells.

    Background: ``background_cpm`` if given, else the mean of the blank wells, else 0.
    DPM need ``efficiency`` (fraction); fmol also ``specific_activity`` (Ci/mmol); fmol/mg also
    ``protein_mg`` (per well). The fraction of added radioligand bound (total wells) is computed
    from ``added_cpm`` (a counted aliquot of the radioligand: cpm over cpm), else ``added_dpm``
    (needs the efficiency), else ``radioligand_nm`` x ``volume_ml`` (needs the efficiency and the
    specific activity); None when none of these is given.
    """
    if efficiency is not None:
        _check_efficiency(efficiency)
    if specific_activity is not None:
        _check_positive("specific activity", specific_activity)
    if protein_mg is not None:
        _check_positive("protein amount (mg)", protein_mg)

    blank = summarize(w.cpm for w in wells if w.role == "blank")
    notes: list[str] = []
    if background_cpm is None:
        if blank.n:
            background_cpm = blank.mean
            notes.append(f"background {blank.mean:.6g} cpm from {blank.n} blank well(s)")
        else:
            background_cpm = 0.0
            notes.append("no blank wells and no background given: background 0 cpm")
    bkg = float(background_cpm)

    total = summarize(w.cpm - bkg for w in wells if w.role == "total")
    nsb = summarize(w.cpm - bkg for w in wells if w.role == "nsb")
    window = total.mean - nsb.mean

    def dpm_of(net: float) -> float | None:
        return None if efficiency is None else net / efficiency

    def fmol_of(net: float) -> float | None:
        d = dpm_of(net)
        if d is None or specific_activity is None:
            return None
        return d / (specific_activity * DPM_PER_FMOL_PER_CI_PER_MMOL)

    def per_mg(fmol: float | None) -> float | None:
        return None if fmol is None or protein_mg is None else fmol / protein_mg

    reduced: list[ReducedWell] = []
    for w in wells:
        net = w.cpm - bkg
        spec = net - nsb.mean
        pct = 100.0 * spec / window if window != 0 else math.nan
        fmol = fmol_of(spec)
        reduced.append(
            ReducedWell(
                record=w,
                net_cpm=net,
                specific_cpm=spec,
                percent_specific=pct,
                dpm=dpm_of(net),
                specific_fmol=fmol,
                specific_fmol_per_mg=per_mg(fmol),
            )
        )

    comp = sorted(
        (r for r in reduced if r.record.role == "competitor"),
        key=lambda r: (r.record.log_conc if r.record.log_conc is not None else math.nan),
    )
    x = np.array([r.record.log_conc for r in comp], dtype=np.float64)
    y = np.array([r.net_cpm for r in comp], dtype=np.float64)
    y_pct = np.array([r.percent_specific for r in comp], dtype=np.float64)

    groups: dict[float, list[ReducedWell]] = {}
    for r in comp:
        assert r.record.log_conc is not None
        groups.setdefault(float(r.record.log_conc), []).append(r)
    points = tuple(
        ConcentrationPoint(
            log_conc=lc,
            net_cpm=summarize(r.net_cpm for r in rs),
            percent_specific=summarize(r.percent_specific for r in rs),
        )
        for lc, rs in groups.items()
    )

    spec_fmol = fmol_of(window)
    fraction: float | None = None
    if added_cpm is not None:
        if not added_cpm > 0:
            raise AnalysisError(f"added_cpm: a positive count rate (got {added_cpm!r})")
        fraction = total.mean / added_cpm
    elif added_dpm is not None and efficiency is not None:
        fraction = total.mean / efficiency / added_dpm
    elif (
        radioligand_nm is not None
        and volume_ml is not None
        and efficiency is not None
        and specific_activity is not None
    ):
        added = fmol_to_dpm(added_radioligand_fmol(radioligand_nm, volume_ml), specific_activity)
        fraction = total.mean / efficiency / added

    return Reduction(
        background_cpm=bkg,
        total=total,
        nsb=nsb,
        blank=blank,
        wells=tuple(reduced),
        points=points,
        x=x,
        y=y,
        y_percent=y_pct,
        efficiency=efficiency,
        specific_activity=specific_activity,
        protein_mg=protein_mg,
        total_dpm=dpm_of(total.mean),
        specific_dpm=dpm_of(window),
        specific_fmol=spec_fmol,
        specific_fmol_per_mg=per_mg(spec_fmol),
        fraction_bound=fraction,
        notes=tuple(notes),
    )

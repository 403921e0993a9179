"""A patch-clamp run's drug effect: its sweep summaries -> the effect table (pure).

One cell a run. Each condition (the record steps' ``condition``: baseline, the drug, the
drug with its antagonist, washout) is measured on its **last** ``last`` sweeps, once the
bath has had time to reach steady state, less those that failed QC (a flagged sweep is
counted and listed, never used, and n says how many were). Per condition: n, mean, SD, SEM
and a t-based 95 % CI of the measure (``inap``: the persistent current on the ramp;
``peak``, ``steady``, ``holding``), and the percent of baseline with its 95 % CI (Fieller's
ratio of two independent means, sweeps within the cell).

Comparisons against baseline here are **sweep-wise within one cell** (Welch's t test of
the sweeps): they say whether the cell's current changed beyond its sweep-to-sweep noise,
not whether the drug works; that needs several cells, paired (:func:`paired_across_cells`:
paired t test and Wilcoxon signed-rank on the cells' condition means, with n and effect
size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from acquisition.errors import AnalysisError

__all__ = [
    "CellState", "ConditionEffect", "EffectResult", "Measure", "PairedComparison",
    "analyze_effect", "paired_across_cells",
]

Measure = Literal["inap", "peak", "steady", "holding"]
_FIELD: Mapping[str, str] = {"inap": "inap_a", "peak": "peak_a", "steady": "steady_a",
                             "holding": "holding_a"}  # fmt: skip
SCHEMA = "assay.effect/1"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class CellState(_Model):
    """The cell's access, membrane resistance and capacitance, from a sweep's test pulse."""

    sweep: int
    ra_ohm: float | None
    rm_ohm: float | None
    cm_f: float | None


class ConditionEffect(_Model):
    condition: str
    sweeps: int = Field(description="recorded in the condition")
    flagged: int = Field(description="of those, failed QC (not used)")
    n: int = Field(description="used: the last sweeps that passed QC")
    mean: float | None
    sd: float | None
    sem: float | None
    ci_low: float | None
    ci_high: float | None
    pct_of_baseline: float | None = None
    pct_ci_low: float | None = None
    pct_ci_high: float | None = None
    p_vs_baseline: float | None = Field(None, description="Welch's t test of the sweeps, within "
                                        "this cell (sweep-wise, not across cells)")  # fmt: skip


class EffectResult(_Model):
    schema_: str = Field(SCHEMA, alias="schema")
    run: str
    measure: Measure
    unit: str = "A"
    last: int
    baseline: str
    conditions: list[ConditionEffect]
    cell_start: CellState | None
    cell_end: CellState | None
    qc_passed: int
    qc_flagged: int
    qc_reasons: dict[str, int] = Field(description="reason (its kind) -> sweeps")
    time_course: list[dict[str, Any]] = Field(description="sweep, t_s, value, condition, qc_ok")
    comparison: str = "sweep-wise within one cell"
    model_config = ConfigDict(frozen=True, populate_by_name=True)


def _reason_kind(text: str) -> str:
    """'access changed +23 % from ...' -> 'access changed': a count per kind of reason."""
    words = []
    for word in text.split():
        if any(c.isdigit() for c in word):
            break
        words.append(word)
    return " ".join(words) or text[:40]


def analyze_effect(run: str, readings: Sequence[Mapping[str, Any]], *, measure: Measure = "inap",
                   baseline: str = "baseline", last: int = 10) -> EffectResult:  # fmt: skip
    """``readings``: the run's sweep summaries (stream ``sweep``), in any order, duplicates
    by sweep number counted once. AnalysisError without a sweep or without the baseline."""
    by_sweep = {int(r["sweep"]): r for r in readings}
    if not by_sweep:
        raise AnalysisError("no sweeps to analyse")
    ordered = [by_sweep[k] for k in sorted(by_sweep)]
    field = _FIELD[measure]
    order: list[str] = []
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in ordered:
        name = str(r.get("condition") or r.get("solution") or "control")
        if name not in groups:
            order.append(name)
            groups[name] = []
        groups[name].append(r)
    if baseline not in groups:
        raise AnalysisError(f"no sweeps of the baseline condition {baseline!r} (the run has "
                            f"{', '.join(order)})")  # fmt: skip
    used = {name: _used(rows, field, last) for name, rows in groups.items()}
    base = used[baseline]
    effects = [_effect(name, groups[name], used[name], base, name == baseline) for name in order]
    t0 = _time(ordered[0])
    course = [{"sweep": int(r["sweep"]), "t_s": round(_time(r) - t0, 3), "value": r.get(field),
               "condition": str(r.get("condition") or r.get("solution") or "control"),
               "qc_ok": not r.get("qc")} for r in ordered]  # fmt: skip
    reasons: dict[str, int] = {}
    for r in ordered:
        for q in r.get("qc") or []:
            reasons[_reason_kind(str(q))] = reasons.get(_reason_kind(str(q)), 0) + 1
    flagged = sum(1 for r in ordered if r.get("qc"))
    return EffectResult(
        run=run, measure=measure, last=last, baseline=baseline, conditions=effects,
        cell_start=_cell(ordered, first=True), cell_end=_cell(ordered, first=False),
        qc_passed=len(ordered) - flagged, qc_flagged=flagged, qc_reasons=reasons,
        time_course=course,
    )  # fmt: skip


def _time(r: Mapping[str, Any]) -> float:
    """The sweep's run time (``t_s``), else its wall time."""
    if isinstance(r.get("t_s"), int | float):
        return float(r["t_s"])
    from datetime import datetime

    return datetime.fromisoformat(str(r["started_at"])).timestamp()


def _used(rows: Sequence[Mapping[str, Any]], field: str, last: int) -> list[float]:
    """The condition's last ``last`` sweeps by position (the bath at steady state), less
    those that failed QC: a flagged end of a condition gives a smaller n, never sweeps from
    its wash-in."""
    return [float(r[field]) for r in rows[-last:] if not r.get("qc")
            and r.get(field) is not None and math.isfinite(float(r[field]))]  # fmt: skip


def _mean_ci(values: Sequence[float]) -> tuple[float | None, ...]:
    n = len(values)
    if n == 0:
        return None, None, None, None, None
    mean = float(np.mean(values))
    if n == 1:
        return mean, None, None, None, None
    sd = float(np.std(values, ddof=1))
    sem = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    return mean, sd, sem, mean - half, mean + half


def _fieller(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None]:
    """95 % CI of mean(a)/mean(b), independent samples (Fieller); None if unbounded."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None, None
    ma, mb = float(np.mean(a)), float(np.mean(b))
    va, vb = float(np.var(a, ddof=1)) / na, float(np.var(b, ddof=1)) / nb
    t = float(stats.t.ppf(0.975, na + nb - 2))
    g = t * t * vb / (mb * mb)
    if g >= 1:
        return None, None  # the baseline is not significantly different from zero
    ratio = ma / mb
    half = t / abs(mb) * math.sqrt(va * (1 - g) + ratio * ratio * vb)
    return (ratio - half) / (1 - g), (ratio + half) / (1 - g)


def _effect(name: str, rows: Sequence[Mapping[str, Any]], values: list[float],
            base: list[float], is_baseline: bool) -> ConditionEffect:  # fmt: skip
    mean, sd, sem, lo, hi = _mean_ci(values)
    pct = pct_lo = pct_hi = p = None
    base_mean = float(np.mean(base)) if base else None
    if mean is not None and base_mean:
        pct = 100 * mean / base_mean
        r_lo, r_hi = (None, None) if is_baseline else _fieller(values, base)  # 100 by definition
        pct_lo, pct_hi = (None, None) if r_lo is None or r_hi is None else (100 * r_lo,
                                                                             100 * r_hi)
    if not is_baseline and len(values) >= 2 and len(base) >= 2:
        p = float(stats.ttest_ind(values, base, equal_var=False).pvalue)
    flagged = sum(1 for r in rows if r.get("qc"))
    return ConditionEffect(condition=name, sweeps=len(rows), flagged=flagged, n=len(values),
                           mean=mean, sd=sd, sem=sem, ci_low=lo, ci_high=hi,
                           pct_of_baseline=pct, pct_ci_low=pct_lo, pct_ci_high=pct_hi,
                           p_vs_baseline=p)  # fmt: skip


def _cell(ordered: Sequence[Mapping[str, Any]], *, first: bool) -> CellState | None:
    rows = ordered if first else list(reversed(ordered))
    for r in rows:
        if r.get("ra_ohm") is not None:
            return CellState(sweep=int(r["sweep"]), ra_ohm=r.get("ra_ohm"),
                             rm_ohm=r.get("rm_ohm"), cm_f=r.get("cm_f"))  # fmt: skip
    return None


class PairedComparison(_Model):
    """One condition against the baseline across cells (runs), paired by cell."""

    condition: str
    n_cells: int
    mean_pct_of_baseline: float | None
    mean_difference: float | None
    t_p: float | None = Field(description="paired t test")
    wilcoxon_p: float | None = Field(description="Wilcoxon signed-rank (exact for small n)")
    cohens_dz: float | None = Field(description="mean difference / SD of the differences")
    comparison: str = "paired across cells (one cell a run)"


def paired_across_cells(results: Sequence[EffectResult]) -> list[PairedComparison]:
    """Each condition of the first result against its baseline, across the runs that have
    both (their condition means, paired by cell)."""
    if not results:
        return []
    base = results[0].baseline
    out: list[PairedComparison] = []
    for cond in (c.condition for c in results[0].conditions if c.condition != base):
        pairs = []
        for r in results:
            means = {c.condition: c.mean for c in r.conditions}
            if means.get(cond) is not None and means.get(base) is not None:
                pairs.append((float(means[cond]), float(means[base])))  # type: ignore[arg-type]
        n = len(pairs)
        drug = np.array([p[0] for p in pairs])
        ctrl = np.array([p[1] for p in pairs])
        diff = drug - ctrl
        t_p = w_p = dz = None
        if n >= 2 and float(np.std(diff, ddof=1)) > 0:
            t_p = float(stats.ttest_rel(drug, ctrl).pvalue)
            dz = float(np.mean(diff) / np.std(diff, ddof=1))
            if np.any(diff != 0):
                w_p = float(stats.wilcoxon(drug, ctrl).pvalue)
        pct = float(np.mean(100 * drug / ctrl)) if n and np.all(ctrl != 0) else None
        out.append(PairedComparison(condition=cond, n_cells=n, mean_pct_of_baseline=pct,
                                    mean_difference=float(np.mean(diff)) if n else None,
                                    t_p=t_p, wilcoxon_p=w_p, cohens_dz=dz))  # fmt: skip
    return out

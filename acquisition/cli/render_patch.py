"""``assay results`` for patch-clamp runs: the cell, the QC summary, the effect table (one
run, sweep-wise) or the paired comparison (several runs, one cell each), CSV and plots."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from acquisition.analysis.drug_effect import (
    EffectResult,
    PairedComparison,
    analyze_effect,
    paired_across_cells,
)  # fmt: skip
from acquisition.errors import AnalysisError

__all__ = [
    "effect_csv",
    "effect_of",
    "is_patch_run",
    "paired_csv",
    "plot_effect",
    "print_effect",
    "print_paired",
]  # fmt: skip


def is_patch_run(results: dict[str, Any]) -> bool:
    return bool(results.get("sweeps"))


def effect_of(results: dict[str, Any]) -> EffectResult:
    """The run's stored effect analysis, else one made now from its sweeps (the first
    condition as the baseline)."""
    stored = results.get("analysis")
    if stored and stored.get("schema") == "assay.effect/1":
        return EffectResult.model_validate(stored)
    sweeps = results["sweeps"]
    first = str(sweeps[0].get("condition") or sweeps[0].get("solution") or "control")
    return analyze_effect(results["run"], sweeps, baseline=first)


def _pa(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e12:.1f}"


def _cell(state: Any) -> str:
    if state is None:
        return "-"
    ra = "-" if state.ra_ohm is None else f"{state.ra_ohm / 1e6:.1f} MOhm"
    rm = "-" if state.rm_ohm is None else f"{state.rm_ohm / 1e6:.0f} MOhm"
    cm = "-" if state.cm_f is None else f"{state.cm_f * 1e12:.1f} pF"
    return f"sweep {state.sweep}: Ra {ra}, Rm {rm}, Cm {cm}"


def print_effect(console: Console, results: dict[str, Any], effect: EffectResult) -> None:
    console.print(f"run {results['run']}  {results.get('protocol')}  ({results['state']})")
    console.print(f"  cell at the start: {_cell(effect.cell_start)}")
    console.print(f"  cell at the end:   {_cell(effect.cell_end)}")
    reasons = ", ".join(f"{k}: {v}" for k, v in effect.qc_reasons.items())
    console.print(f"  QC: {effect.qc_passed} sweeps passed, {effect.qc_flagged} flagged"
                  f"{f' ({reasons})' if reasons else ''}")  # fmt: skip
    table = Table(title=f"{effect.measure} (pA), each condition's last {effect.last} sweeps "
                        f"less those failing QC")  # fmt: skip
    for col in ("condition", "used", "mean (95% CI)", "% of baseline (95% CI)", "p"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for c in effect.conditions:
        pct = "-" if c.pct_of_baseline is None else f"{c.pct_of_baseline:.1f}"
        if c.pct_ci_low is not None and c.pct_ci_high is not None:
            pct += f" ({c.pct_ci_low:.1f} to {c.pct_ci_high:.1f})"
        table.add_row(
            c.condition, f"{c.n} of {c.sweeps}" + (f", {c.flagged} QC" if c.flagged else ""),
            f"{_pa(c.mean)} ({_pa(c.ci_low)} to {_pa(c.ci_high)})", pct,
            "-" if c.p_vs_baseline is None else f"{c.p_vs_baseline:.2g}",
        )  # fmt: skip
    console.print(table)
    console.print("  p: Welch's t test against baseline of the sweeps within this one cell "
                  "(sweep-wise); whether the drug works needs cells: `assay results RUN1 RUN2 "
                  "...`")  # fmt: skip
    nwb = [a for a in results.get("artifacts") or [] if a.get("media_type") == "application/x-nwb"]
    if nwb:  # each record step rewrites the run's file: the last is the whole run
        console.print(f"  NWB: {nwb[-1]['path']} ({nwb[-1]['holds']})")
    stop = results.get("stop")
    if stop:
        console.print(f"  stop: {stop['exit_status']} ({stop['reason']})")


def effect_csv(effect: EffectResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "measure", "condition", "sweeps", "flagged", "n", "mean_a", "sd_a",
                "ci_low_a", "ci_high_a", "pct_of_baseline", "pct_ci_low", "pct_ci_high",
                "p_sweepwise"])  # fmt: skip
    for c in effect.conditions:
        w.writerow([effect.run, effect.measure, c.condition, c.sweeps, c.flagged, c.n, c.mean,
                    c.sd, c.ci_low, c.ci_high, c.pct_of_baseline, c.pct_ci_low,
                    c.pct_ci_high, c.p_vs_baseline])  # fmt: skip
    return buf.getvalue()


def print_paired(console: Console, effects: Sequence[EffectResult]) -> list[PairedComparison]:
    rows = paired_across_cells(effects)
    table = Table(title=f"{effects[0].measure}: paired across {len(effects)} cells (one a run), "
                        f"against {effects[0].baseline!r}")  # fmt: skip
    for col in ("condition", "cells", "mean % of baseline", "mean difference (pA)",
                "paired t p", "Wilcoxon p", "effect size dz"):  # fmt: skip
        table.add_column(col, justify="left" if col == "condition" else "right")
    for r in rows:
        table.add_row(r.condition, str(r.n_cells),
                      "-" if r.mean_pct_of_baseline is None else f"{r.mean_pct_of_baseline:.1f}",
                      _pa(r.mean_difference), "-" if r.t_p is None else f"{r.t_p:.2g}",
                      "-" if r.wilcoxon_p is None else f"{r.wilcoxon_p:.2g}",
                      "-" if r.cohens_dz is None else f"{r.cohens_dz:.2f}")  # fmt: skip
    console.print(table)
    return rows


def paired_csv(rows: Sequence[PairedComparison]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["condition", "cells", "mean_pct_of_baseline", "mean_difference_a", "paired_t_p",
                "wilcoxon_p", "cohens_dz"])  # fmt: skip
    for r in rows:
        w.writerow([r.condition, r.n_cells, r.mean_pct_of_baseline, r.mean_difference, r.t_p,
                    r.wilcoxon_p, r.cohens_dz])  # fmt: skip
    return buf.getvalue()


def plot_effect(path: Path, results: dict[str, Any], effect: EffectResult) -> Path:
    """The time course with condition bands (flagged sweeps as crosses) and an example trace
    per condition; PNG, SVG or PDF by the file's extension."""
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise AnalysisError(f"{path}: a .png, .svg or .pdf file")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    course = effect.time_course
    spans: dict[str, list[float]] = {}
    for point in course:
        spans.setdefault(point["condition"], []).append(point["t_s"] / 60)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, ts) in enumerate(spans.items()):
        top.axvspan(min(ts), max(ts), color=colors[k % len(colors)], alpha=0.12, label=name)
    good = [(p["t_s"] / 60, p["value"] * 1e12) for p in course if p["qc_ok"] and p["value"]
            is not None]  # fmt: skip
    bad = [(p["t_s"] / 60, p["value"] * 1e12) for p in course if not p["qc_ok"] and p["value"]
           is not None]  # fmt: skip
    if good:
        top.plot(*zip(*good, strict=True), "o", ms=3, color="black")
    if bad:
        top.plot(*zip(*bad, strict=True), "x", ms=5, color="red", label="failed QC")
    top.set_xlabel("run time (min)")
    top.set_ylabel(f"{effect.measure} (pA)")
    top.set_title(f"run {effect.run}")
    top.legend(fontsize=7, loc="best")
    shown: list[float] = []
    for k, name in enumerate(spans):
        example = next((s for s in reversed(results.get("sweeps") or [])
                        if str(s.get("condition")) == name and s.get("trace")), None)  # fmt: skip
        if example is not None:
            trace = [v * 1e12 for v in example["trace"]]
            shown += trace
            bottom.plot(trace, color=colors[k % len(colors)], lw=0.8,
                        label=f"{name} (sweep {example['sweep']})")  # fmt: skip
    if shown:  # the slow currents, not the capacitive spikes at the command's jumps
        import numpy as np

        lo, hi = np.percentile(shown, [2, 98])
        pad = 0.15 * (hi - lo or 1.0)
        bottom.set_ylim(lo - pad, hi + pad)
    bottom.set_xlabel("point (the trace decimated to 1000 points, extremes kept)")
    bottom.set_ylabel("current (pA)")
    bottom.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

"""The analysis step of a count run: from the run.start spec to a RunResult.

Kept apart from the daemon so the spec is checked when the run is started (a bad layout or a
missing constant is refused before anything is counted) and the maths runs off the loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from acquisition.analysis.layout import PlateLayout, competition_layout
from acquisition.analysis.models import MODELS
from acquisition.analysis.run_analysis import RunResult, analyze_count_run
from acquisition.commands import AnalysisSpec
from acquisition.errors import AnalysisError, CommandError

__all__ = ["analysis_layout", "analyze_run_with_spec"]


def analysis_layout(spec: AnalysisSpec) -> PlateLayout:
    """The plate layout of ``spec``; CommandError (bad_request) naming what is wrong."""
    try:
        layout = competition_layout(**spec.layout)
    except (AnalysisError, TypeError, ValueError) as exc:
        raise CommandError("bad_request", f"args.analysis.layout: {exc}") from exc
    if spec.competitor not in layout.competitors:
        raise CommandError(
            "bad_request",
            f"args.analysis.competitor: one of {sorted(layout.competitors)} "
            f"(got {spec.competitor!r})",
        )
    missing = [c for c in MODELS[spec.model].constants if c not in spec.constants]
    if missing:
        raise CommandError("bad_request", f"args.analysis.constants: {', '.join(missing)} needed")
    return layout


def analyze_run_with_spec(
    documents: Sequence[Mapping[str, Any]], spec: AnalysisSpec, layout: PlateLayout
) -> RunResult:
    return analyze_count_run(
        documents,
        layout,
        model=spec.model,
        constants=spec.constants,
        competitor=spec.competitor,
        rate=spec.rate,
        background_cpm=None if spec.subtract_blanks else 0.0,
        efficiency=spec.efficiency,
        specific_activity_ci_per_mmol=spec.specific_activity_ci_per_mmol,
        protein_mg=spec.protein_mg,
        added_cpm=spec.added_cpm,
    )

"""The analyze step: fit the run's count against its plate map (acquisition/analysis) and
store the result as the run's retained result. Drives no instrument; done again after a
daemon restart."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import Field, StrictFloat

from acquisition.commands import CompetitionModel
from acquisition.errors import AnalysisError
from acquisition.journal import OutboxMessage
from acquisition.steps.registry import PlanLine, StepModel, StepType, register_step_type

if TYPE_CHECKING:
    from acquisition.steps.context import StepContext, StepProgress

__all__ = ["AnalyzeStep", "analysis_summary", "run_analyze"]

log = structlog.get_logger("acquisition.engine")


class AnalyzeStep(StepModel):
    """Fit the last count (acquisition/analysis), constants named as in Prism."""

    type: Literal["analyze"]
    model: CompetitionModel
    competitor: str = Field(min_length=1, max_length=100)
    constants: dict[str, StrictFloat] = Field(default_factory=dict)
    rate: Literal["ccpm", "cpm"] = "ccpm"
    subtract_blanks: bool = Field(True, description="background = mean of the blank wells")
    efficiency: StrictFloat | None = Field(
        None, gt=0, le=1, description="counting efficiency (fraction) -> DPM"
    )
    specific_activity_ci_per_mmol: StrictFloat | None = Field(
        None, gt=0, description="of the radioligand, Ci/mmol -> fmol"
    )
    protein_mg: StrictFloat | None = Field(None, gt=0, description="per well -> fmol/mg")
    added_cpm: StrictFloat | None = Field(
        None, gt=0, description="counted aliquot of the added radioligand -> fraction bound"
    )


async def run_analyze(ctx: StepContext, step: AnalyzeStep, progress: StepProgress) -> None:
    """Fit the counted wells against the plate map; store and publish the result (retained).

    :class:`AnalysisError` when there is nothing to fit (no plate map, no wells); a fit that
    runs but fails its QC is a result like any other (``passed`` false, ``qc`` says why).
    """
    from acquisition.analysis.run_analysis import analyze_count_run

    if ctx.plate_layout is None:
        raise AnalysisError("the analyze step needs the run's plate map (run start --plate-map)")
    if step.competitor not in ctx.plate_layout.competitors:
        raise AnalysisError(
            f"the plate map has no competitor {step.competitor!r} "
            f"(it has {', '.join(ctx.plate_layout.competitors) or 'none'})"
        )
    await ctx.recorder.flush()
    docs = [json.loads(p) for p in await ctx.journal.documents(ctx.recorder.run)]
    result = await asyncio.to_thread(
        analyze_count_run, docs, ctx.plate_layout, model=step.model,
        constants=step.constants, competitor=step.competitor, rate=step.rate,
        background_cpm=None if step.subtract_blanks else 0.0, efficiency=step.efficiency,
        specific_activity_ci_per_mmol=step.specific_activity_ci_per_mmol,
        protein_mg=step.protein_mg, added_cpm=step.added_cpm,
    )  # fmt: skip
    payload = result.model_dump_json(by_alias=True).encode()
    topic = ctx.config.topic("runs", ctx.recorder.run, "result")
    await ctx.journal.put_result(
        ctx.recorder.run, payload, outbox=[OutboxMessage(topic, payload, retain=True)]
    )
    ctx.notify()
    progress.detail = analysis_summary(json.loads(payload))
    log.info("analysis stored", passed=result.passed, model=result.model)


def analysis_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a result: each parameter with its CI, and the verdict."""
    out: dict[str, Any] = {"model": result["model"], "passed": result["passed"]}
    for p in (result.get("parameters") or []) + (result.get("derived") or []):
        out[p["name"]] = {k: p.get(k) for k in ("estimate", "ci_low", "ci_high")}
    failed = [q["code"] for q in result.get("qc", []) if not q.get("passed", True)]
    if failed:
        out["qc_failed"] = failed
    return out


def _check(step: AnalyzeStep, before: Sequence[StepModel]) -> tuple[str, str] | None:
    """After a step that counts; the model's constants, each known and positive."""
    from acquisition.analysis.models import MODELS

    if not any(s.type == "count" for s in before):
        return "", "an analyze step after a count step (nothing counted)"
    needed = MODELS[step.model].constants
    for name, value in step.constants.items():
        if name not in needed:
            known = ", ".join(needed) if needed else "none"
            return f".constants.{name}", f"a constant of {step.model} (known: {known})"
        if not (math.isfinite(value) and value > 0):
            return f".constants.{name}", f"a positive number (got {value!r})"
    missing = [c for c in needed if c not in step.constants]
    if missing:
        return ".constants", (f"{', '.join(needed)} for {step.model} "
                              f"(missing {', '.join(missing)})")  # fmt: skip
    return None


def _check_setup(step: AnalyzeStep, layout: Any, source: str | None) -> tuple[str, str] | None:
    if layout is not None and step.competitor not in layout.competitors:
        known = ", ".join(layout.competitors)
        return ".competitor", (f"a competitor of the plate map {source} ({known}), "
                               f"got {step.competitor!r}")  # fmt: skip
    return None


def _plan(step: AnalyzeStep) -> PlanLine:
    consts = ", ".join(f"{k}={v:g}" for k, v in step.constants.items())
    settings = f"{step.model} on {step.competitor}" + (f" ({consts})" if consts else "")
    return PlanLine(settings, 0.0, "not counted", expected="a few seconds")


ANALYZE = register_step_type(StepType(
    name="analyze", model=AnalyzeStep, plan=_plan, run=run_analyze, pausable_midway=False,
    check=_check, check_setup=_check_setup, needs_plate_map="analyses the count",
))  # fmt: skip

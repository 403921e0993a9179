"""The analyze_effect step: a patch-clamp run's drug effect from its sweep summaries
(:mod:`acquisition.analysis.drug_effect`), stored as the run's retained result (schema
``assay.effect/1``). Drives no instrument; done again after a daemon restart."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from acquisition.analysis.drug_effect import Measure, analyze_effect
from acquisition.journal import OutboxMessage, run_documents
from acquisition.payloads import DataDocument, SweepReading
from acquisition.steps.registry import PlanLine, StepModel, StepType, register_step_type

if TYPE_CHECKING:
    from acquisition.steps.context import StepContext, StepProgress

__all__ = ["AnalyzeEffectStep"]


class AnalyzeEffectStep(StepModel):
    """Each condition's ``measure`` on its last ``last`` QC-passed sweeps, against
    ``baseline``."""

    type: Literal["analyze_effect"]
    measure: Measure = "inap"
    baseline: str = Field("baseline", min_length=1, max_length=200)
    last: int = Field(10, ge=1, le=1000, description="sweeps at the end of each condition")


async def run_analyze_effect(ctx: StepContext, step: AnalyzeEffectStep,
                             progress: StepProgress) -> None:  # fmt: skip
    await ctx.recorder.flush()
    docs = await run_documents(ctx.journal, ctx.recorder.run)
    readings = [d.reading.model_dump(mode="json") for d in docs
                if isinstance(d, DataDocument) and isinstance(d.reading, SweepReading)]  # fmt: skip
    result = await asyncio.to_thread(analyze_effect, ctx.recorder.run, readings,
                                     measure=step.measure, baseline=step.baseline,
                                     last=step.last)  # fmt: skip
    payload = result.model_dump_json(by_alias=True).encode()
    topic = ctx.config.topic("runs", ctx.recorder.run, "result")
    await ctx.journal.put_result(
        ctx.recorder.run, payload, outbox=[OutboxMessage(topic, payload, retain=True)]
    )
    ctx.notify()
    progress.detail = {"measure": step.measure, "qc_passed": result.qc_passed,
                       "qc_flagged": result.qc_flagged,
                       "pct_of_baseline": {c.condition: None if c.pct_of_baseline is None
                                           else round(c.pct_of_baseline, 1)
                                           for c in result.conditions}}  # fmt: skip


def _conditions(before: Sequence[StepModel]) -> list[str]:
    """Each record step's condition as it will be recorded: its own, else the last perfuse
    step's solution before it, else "control" (as the record step decides)."""
    out: list[str] = []
    solution: str | None = None
    for b in before:
        if getattr(b, "type", "") == "perfuse":
            solution = str(getattr(b, "solution", ""))
        elif getattr(b, "type", "") == "record":
            out.append(getattr(b, "condition", None) or solution or "control")
    return out


def _check(step: AnalyzeEffectStep, before: Sequence[StepModel]) -> tuple[str, str] | None:
    conditions = _conditions(before)
    if not conditions:
        return "", "an analyze_effect step after record steps (nothing recorded)"
    if step.baseline not in conditions:
        named = ", ".join(repr(c) for c in dict.fromkeys(conditions))
        return ".baseline", (f"the condition of a record step before it (they name {named}); "
                             f"got {step.baseline!r}")  # fmt: skip
    return None


register_step_type(StepType(
    name="analyze_effect", model=AnalyzeEffectStep, run=run_analyze_effect,
    plan=lambda s: PlanLine(f"{s.measure}: each condition's last {s.last} sweeps less those "
                            f"failing QC, against {s.baseline!r}", 0.0),
    pausable_midway=False, check=_check, handles_plate=False,
))  # fmt: skip

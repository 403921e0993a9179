"""A step type defined only here, for the test that a plug-in runs through the engine with
no engine file touched (tests/test_plugin_step.py). A lab config loads it with
``plugins = ["tests.plugin_steps"]``.

``soak``: leave the plate to stand for a while (no instrument). It may be paused mid-way
(the time stood is kept); after a daemon restart its declared policy asks the operator,
since nobody knows what happened to the plate meanwhile: retry stands it again for the
rest, skip ends it there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from acquisition.payloads import Progress
from acquisition.quantities import DURATION, format_duration, quantity
from acquisition.steps import PlanLine, StepModel, StepType, register_step_type
from acquisition.steps.context import StepContext, StepProgress

TICK_S = 5.0


class SoakStep(StepModel):
    type: Literal["soak"]
    duration_s: Annotated[float, quantity(DURATION, lo=0, lo_open=True)] = Field(
        alias="duration"
    )


async def run_soak(ctx: StepContext, step: SoakStep, progress: StepProgress) -> None:
    clock = ctx.clock
    last = clock.monotonic()
    total = round(step.duration_s)
    while progress.elapsed_s < step.duration_s:
        await clock.sleep(min(TICK_S, step.duration_s - progress.elapsed_s))
        now = clock.monotonic()
        progress.elapsed_s += now - last
        last = now
        done = min(total, round(progress.elapsed_s))
        await ctx.progress(Progress(done=done, total=total, unit="s", eta_s=total - done))
    progress.detail = {"stood_s": round(progress.elapsed_s, 1)}


def _resume(step: SoakStep, progress: StepProgress, now: datetime, scale: float) -> str:
    return ("was interrupted by a daemon restart: the plate stood for an unknown time. "
            "retry = stand it again for the whole time, skip = end the soak, abort = end "
            "the run")  # fmt: skip


SOAK = register_step_type(StepType(
    name="soak", model=SoakStep, run=run_soak, pausable_midway=True, resume=_resume,
    plan=lambda step: PlanLine(f"stand {format_duration(step.duration_s)}", step.duration_s),
))  # fmt: skip

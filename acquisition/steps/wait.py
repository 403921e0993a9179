"""The wait step: a timer, nothing driven. A pause stops the timer, which goes on from
there; after a daemon restart the wait starts again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from acquisition.payloads import Progress
from acquisition.quantities import DURATION, format_duration, quantity
from acquisition.steps.registry import PlanLine, StepModel, StepType, register_step_type

if TYPE_CHECKING:
    from acquisition.steps.context import StepContext, StepProgress

__all__ = ["TICK_S", "WaitStep", "run_wait"]

TICK_S = 5.0
_HOUR = 3600.0


class WaitStep(StepModel):
    type: Literal["wait"]
    duration_s: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=72 * _HOUR)] = Field(
        alias="duration"
    )


async def run_wait(ctx: StepContext, step: WaitStep, progress: StepProgress) -> None:
    """Wait ``duration``; a pause stops the timer, which goes on from there."""
    clock = ctx.clock
    total = round(step.duration_s)
    last = clock.monotonic()
    while True:
        now = clock.monotonic()
        progress.elapsed_s += now - last
        last = now
        done = min(total, round(progress.elapsed_s))
        await ctx.progress(Progress(done=done, total=total, unit="s", eta_s=total - done))
        if progress.elapsed_s >= step.duration_s:
            break
        await clock.sleep(min(TICK_S, step.duration_s - progress.elapsed_s))
    progress.detail = {"elapsed_s": round(progress.elapsed_s, 1)}


def _plan(step: WaitStep) -> PlanLine:
    return PlanLine(format_duration(step.duration_s), step.duration_s)


WAIT = register_step_type(StepType(name="wait", model=WaitStep, plan=_plan, run=run_wait,
                                   handles_plate=False))

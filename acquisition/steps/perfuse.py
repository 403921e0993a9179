"""The perfuse step: switch the bath to a solution and wait until it has exchanged.

The valve controller opens the solution's valve (and closes the others); the solution then
travels the line's dead volume and mixes into the bath with the rig's exchange time
constant (the perfusion instrument's ``flow_ul_per_s``, ``dead_volume_ul`` and
``exchange_tau_s``, measured on the rig). The step waits ``dead_volume / flow + tau *
ln(1 / (1 - exchange))`` on the run clock, the time for the bath to reach the ``exchange``
fraction of the new solution, and records when the switch was made and what was selected.

A pause waits for the step's end (the bath goes on exchanging whatever the timer does); a
retry or a daemon restart selects the solution again (a no-op if it still flows) and waits
the whole exchange again, which errs on the side of a bath fully exchanged. An abort or a
daemon stop returns the bath to the control solution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from acquisition.payloads import Progress
from acquisition.quantities import PERCENT, format_duration, quantity
from acquisition.run_recorder import utcnow
from acquisition.steps.registry import PlanLine, SafeHow, StepModel, StepType, register_step_type
from drivers.roles import Perfusion

if TYPE_CHECKING:
    from acquisition.config import PerfusionConfig
    from acquisition.instruments import InstrumentHandle
    from acquisition.steps.context import StepContext, StepProgress

__all__ = ["PerfuseStep", "exchange_time_s", "run_perfuse"]

TICK_S = 5.0
# The plan's bath when the step cannot see the instrument's config (the config's defaults).
_PLAN_BATH = (50.0, 250.0, 10.0)


class PerfuseStep(StepModel):
    """Switch the bath to ``solution`` (on ``valve``) and wait for ``exchange`` of it."""

    type: Literal["perfuse"]
    valve: int = Field(ge=1, le=8, description="the valve the solution is on")
    solution: str = Field(min_length=1, max_length=200, description="what it holds, e.g. "
                          "'aCSF + DHEA-S 10 uM'; recorded with every sweep after it")  # fmt: skip
    exchange: Annotated[float, quantity(PERCENT, lo=0, lo_open=True, hi=99.9)] = Field(
        95.0, description="the fraction of the bath exchanged before the step ends"
    )
    instrument: str | None = Field(None, max_length=64)


def exchange_time_s(flow_ul_per_s: float, dead_volume_ul: float, tau_s: float,
                    exchange_pct: float) -> float:  # fmt: skip
    """Seconds from the switch until ``exchange_pct`` of the bath is the new solution."""
    return dead_volume_ul / flow_ul_per_s + tau_s * math.log(1.0 / (1.0 - exchange_pct / 100))


def _bath(handle: InstrumentHandle) -> tuple[float, float, float]:
    cfg: PerfusionConfig = handle.config  # type: ignore[assignment]
    return (float(getattr(cfg, "flow_ul_per_s", _PLAN_BATH[0])),
            float(getattr(cfg, "dead_volume_ul", _PLAN_BATH[1])),
            float(getattr(cfg, "exchange_tau_s", _PLAN_BATH[2])))  # fmt: skip


async def run_perfuse(ctx: StepContext, step: PerfuseStep, progress: StepProgress) -> None:
    handle = ctx.handle("perfusion")
    driver = handle.driver
    assert isinstance(driver, Perfusion)  # the role, whatever the vendor
    status = await driver.select_solution(step.valve)
    switched_at = utcnow()
    wait_s = exchange_time_s(*_bath(handle), step.exchange)
    clock = ctx.clock
    start = clock.monotonic()
    total = round(wait_s)
    while (elapsed := clock.monotonic() - start) < wait_s:
        done = min(total, round(elapsed))
        await ctx.progress(Progress(done=done, total=total, unit="s", eta_s=wait_s - elapsed),
                           latest={"solution": step.solution, "valve": step.valve})  # fmt: skip
        await clock.sleep(min(TICK_S, wait_s - elapsed))
    progress.detail = {"valve": step.valve, "solution": step.solution,
                       "open_valves": list(status.open_valves),
                       "switched_at": switched_at.isoformat(),
                       "exchange_pct": step.exchange, "waited_s": round(wait_s, 1)}  # fmt: skip


def _plan(step: PerfuseStep) -> PlanLine:
    wait = exchange_time_s(*_PLAN_BATH, step.exchange)
    return PlanLine(f"valve {step.valve}: {step.solution}, to {step.exchange:g} % exchanged",
                    wait, f"dead volume and exchange of the rig's perfusion config; "
                    f"{format_duration(wait)} with its defaults")  # fmt: skip


async def _make_safe(handles: Mapping[str, InstrumentHandle], how: SafeHow) -> None:
    """An abort or a daemon stop leaves the bath on the control solution."""
    handle = handles.get("perfusion")
    if handle is None or how == "end":
        return
    driver = handle.driver
    if isinstance(driver, Perfusion):
        control: Any = getattr(handle.config, "control_valve", 1)
        await driver.select_solution(int(control))


PERFUSE = register_step_type(StepType(
    name="perfuse", model=PerfuseStep, plan=_plan, run=run_perfuse, roles=("perfusion",),
    pausable_midway=False, make_safe=_make_safe, handles_plate=False,
))  # fmt: skip

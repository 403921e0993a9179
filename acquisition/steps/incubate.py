"""The incubate step: bring the plate to temperature, wait until stable, then time the
incubation, with the temperature sampled as data documents.

A pause (or a restart) keeps the elapsed time: the step re-stabilises before timing the
rest. After a daemon restart the gap since the last temperature sample decides: within the
step's grace period the timer goes on, else the operator chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

import structlog
from pydantic import BeforeValidator, Field

from acquisition.errors import InterlockError
from acquisition.payloads import DataDocument, Progress, TemperatureReading
from acquisition.quantities import (
    DURATION,
    SPEED,
    TEMPERATURE,
    TEMPERATURE_TOLERANCE,
    format_duration,
    parse_quantity,
    quantity,
)
from acquisition.run_recorder import utcnow
from acquisition.steps.registry import (
    PlanLine,
    SafeHow,
    StepModel,
    StepType,
    register_step_type,
)
from drivers.errors import InstrumentError, InstrumentFaultError, InstrumentTimeoutError
from drivers.roles import Incubator

if TYPE_CHECKING:
    from acquisition.instruments import InstrumentHandle
    from acquisition.steps.context import StepContext, StepProgress

__all__ = ["AMBIENT_C", "STABILISE_RATE_C_PER_MIN", "IncubateStep", "run_incubate",
           "stabilisation_s"]  # fmt: skip

log = structlog.get_logger("acquisition.engine")
SAMPLE_S = 30.0  # incubator temperature sampled (and logged) at most this far apart
STABILISE_TIMEOUT_S = 4 * 3600.0
AMBIENT_C = 22.0  # planning: an incubation starts from room temperature
STABILISE_RATE_C_PER_MIN = 2.0  # planning: how fast the incubator approaches its setpoint
_HOUR = 3600.0


def _shaking(value: object) -> float | None:
    if value == "off":
        return None
    try:
        return parse_quantity(SPEED, value, lo=100, hi=1500)
    except ValueError:
        raise ValueError("'off' or a shaking speed from 100 to 1500 rpm, like '300 rpm'") from None


class IncubateStep(StepModel):
    """Bring the plate to temperature, wait until stable, then time the incubation."""

    type: Literal["incubate"]
    instrument: str | None = Field(
        None, max_length=64, description="instrument id; default: the config's only one"
    )
    temperature_c: Annotated[float, quantity(TEMPERATURE, lo=4, hi=60)] = Field(alias="temperature")
    duration_s: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=72 * _HOUR)] = Field(
        alias="duration"
    )
    shaking_rpm: Annotated[float | None, BeforeValidator(_shaking)] = Field(
        None, alias="shaking", description="'off' (default) or e.g. '300 rpm'"
    )
    tolerance_c: Annotated[float, quantity(TEMPERATURE_TOLERANCE, lo=0, lo_open=True, hi=5)] = (
        Field(0.5, alias="tolerance", description="stable means within +/- this of the setpoint")
    )
    hold_s: Annotated[float, quantity(DURATION, lo=0, hi=_HOUR)] = Field(
        300.0, alias="hold", description="stable this long before the timer starts"
    )
    on_excursion: Literal["pause", "abort"] = "pause"
    grace_s: Annotated[float, quantity(DURATION, lo=0, hi=_HOUR)] = Field(
        120.0, alias="grace", description="out of tolerance this long before on_excursion acts"
    )



def _sample_interval(step: IncubateStep) -> float:
    """Often enough that an excursion is caught within a quarter of its grace period."""
    return max(1.0, min(SAMPLE_S, step.grace_s / 4 if step.grace_s > 0 else SAMPLE_S))


async def run_incubate(ctx: StepContext, step: IncubateStep, progress: StepProgress) -> None:
    """Bring to temperature, wait until stable for ``hold``, then time ``duration``.

    The timer only runs while the step runs: a pause (or a restart) keeps the elapsed time
    and the step re-stabilises before timing the rest. Out of tolerance for longer than
    ``grace`` while timing: an interruption document, then :class:`InterlockError` with
    the protocol's ``on_excursion`` (pause or abort).
    """
    driver = ctx.handle("incubator").driver
    assert isinstance(driver, Incubator)
    try:
        await driver.set_temperature(step.temperature_c)
        await _stabilise(ctx, driver, step, progress)
        if step.shaking_rpm is not None:
            await driver.start_shaking(round(step.shaking_rpm))
        await _time(ctx, driver, step, progress)
        progress.detail = {"elapsed_s": round(progress.elapsed_s, 1)}
    finally:
        if step.shaking_rpm is not None:
            with contextlib.suppress(InstrumentError, OSError):
                await asyncio.shield(driver.stop_shaking())


async def _sample(
    ctx: StepContext, driver: Incubator, step: IncubateStep, progress: StepProgress,
    phase: str,
) -> tuple[float | None, bool]:  # fmt: skip
    st = await driver.status()
    if faults := st.status.faults:
        raise InstrumentFaultError(
            f"incubator alarm: {', '.join(faults)}", instrument=driver.instrument_id,
            fault=", ".join(faults),
        )  # fmt: skip
    temp = st.temperature_c
    inside = temp is not None and abs(temp - step.temperature_c) <= step.tolerance_c
    now = utcnow()
    if temp is not None:
        reading = TemperatureReading(
            step_index=ctx.index, elapsed_s=round(progress.elapsed_s, 3), temperature_c=temp,
            setpoint_c=step.temperature_c, in_tolerance=inside, sampled_at=now,
        )  # fmt: skip
        total = round(step.duration_s)
        done = min(total, math.floor(progress.elapsed_s))
        prog = Progress(done=done, total=total, unit="s", eta_s=step.duration_s - done)
        ctx.recorder.latest = {
            "temperature_c": temp, "setpoint_c": step.temperature_c, "phase": phase,
        }  # fmt: skip
        await ctx.recorder.data(reading, prog, stream="temperature")
        progress.last_sample_at = now
    return temp, inside


async def _stabilise(
    ctx: StepContext, driver: Incubator, step: IncubateStep, progress: StepProgress
) -> None:
    clock = ctx.clock
    interval = _sample_interval(step)
    start = clock.monotonic()
    since: float | None = None
    while True:
        now = clock.monotonic()
        _, inside = await _sample(ctx, driver, step, progress, "stabilising")
        since = (since if since is not None else now) if inside else None
        if since is not None and now - since >= step.hold_s:
            return
        if now - start > STABILISE_TIMEOUT_S:
            raise InstrumentTimeoutError(
                f"not within {step.tolerance_c:g} C of {step.temperature_c:g} C for "
                f"{step.hold_s:g} s after {STABILISE_TIMEOUT_S / 3600:g} h",
                instrument=driver.instrument_id,
            )
        await clock.sleep(interval if since is None else min(interval, step.hold_s))


async def _time(
    ctx: StepContext, driver: Incubator, step: IncubateStep, progress: StepProgress
) -> None:
    clock = ctx.clock
    interval = _sample_interval(step)
    out_since: float | None = None
    last = clock.monotonic()
    while True:
        now = clock.monotonic()
        progress.elapsed_s += now - last
        last = now
        if progress.elapsed_s >= step.duration_s:
            progress.elapsed_s = step.duration_s
            await _sample(ctx, driver, step, progress, "done")
            return
        temp, inside = await _sample(ctx, driver, step, progress, "timing")
        out_since = None if inside else (out_since if out_since is not None else now)
        if out_since is not None and now - out_since >= step.grace_s:
            shown = "no reading (sensor)" if temp is None else f"{temp:.1f} C"
            reason = (
                f"temperature excursion: {shown}, outside {step.temperature_c:g} "
                f"+/- {step.tolerance_c:g} C for {now - out_since:.0f} s "
                f"(grace {step.grace_s:g} s); {step.on_excursion}"
            )
            await ctx.recorder.interruption(
                reason,
                {
                    "interlock": "temperature", "step_index": ctx.index,
                    "temperature_c": temp, "setpoint_c": step.temperature_c,
                    "tolerance_c": step.tolerance_c, "out_of_tolerance_s": now - out_since,
                    "elapsed_s": round(progress.elapsed_s, 1), "action": step.on_excursion,
                },
            )  # fmt: skip
            raise InterlockError(reason, step.on_excursion)
        await clock.sleep(min(interval, step.duration_s - progress.elapsed_s))



def stabilisation_s(step: IncubateStep) -> float:
    """Estimated time to reach the setpoint from ambient plus the stability hold."""
    ramp_s = abs(step.temperature_c - AMBIENT_C) / STABILISE_RATE_C_PER_MIN * 60.0
    return ramp_s + step.hold_s


def _plan(step: IncubateStep) -> PlanLine:
    d = format_duration
    shaking = "no shaking" if step.shaking_rpm is None else f"{step.shaking_rpm:g} rpm"
    settings = (
        f"{step.temperature_c:g} C for {d(step.duration_s)}, {shaking}; timer starts "
        f"once within +/-{step.tolerance_c:g} C for {d(step.hold_s)}; out of tolerance "
        f"for {d(step.grace_s)}: {step.on_excursion}"
    )
    stab = stabilisation_s(step)
    return PlanLine(settings, stab + step.duration_s, f"stabilisation ~{d(stab)} + "
                    f"{d(step.duration_s)}")  # fmt: skip


def _rebuild(progress: StepProgress, doc: DataDocument) -> None:
    """A temperature sample: how far the timer got, and when the sample was taken."""
    if isinstance(doc.reading, TemperatureReading):
        progress.elapsed_s = max(progress.elapsed_s, doc.reading.elapsed_s)
        progress.last_sample_at = doc.reading.sampled_at


def _resume(step: IncubateStep, progress: StepProgress, now: datetime,
            time_scale: float) -> str | None:  # fmt: skip
    """Go on if the temperature is known to within the grace period, else ask (the text
    follows "step N (incubate) ")."""
    if progress.last_sample_at is None:
        return None  # it had not reached temperature yet: stabilising again is harmless
    gap_s = (now - progress.last_sample_at).total_seconds() * time_scale
    if gap_s <= step.grace_s:
        return None
    return (
        f"was interrupted for {gap_s:.0f} s (grace "
        f"{step.grace_s:g} s) after {progress.elapsed_s:.0f} of {step.duration_s:.0f} s: the "
        "temperature in between is unknown. retry = go on timing the rest, skip = "
        "end the incubation here, abort = end the run"
    )


async def _make_safe(handles: Mapping[str, InstrumentHandle], how: SafeHow) -> None:
    """Shaker off and at its idle setpoint when the run ends; a stopping daemon leaves the
    plate at temperature (the run resumes from there)."""
    handle = handles.get("incubator")
    if handle is None or how == "shutdown":
        return
    driver = handle.driver
    if not isinstance(driver, Incubator):
        return
    await driver.stop_shaking()
    await driver.set_temperature(getattr(handle.config, "idle_setpoint_c", 25.0))


INCUBATE = register_step_type(StepType(
    name="incubate", model=IncubateStep, plan=_plan, run=run_incubate, roles=("incubator",),
    rebuild=_rebuild, resume=_resume, make_safe=_make_safe,
    timed_s=lambda step: float(step.duration_s),
))  # fmt: skip

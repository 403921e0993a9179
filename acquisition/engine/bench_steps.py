"""The steps that drive bench instruments: incubate and count (the harvest, checked and
judged from the harvester's report, is :mod:`.harvest`).

Each is ``async def run_<type>(ctx, step, progress)`` (see :mod:`.context`). Which of them
may be paused mid-way is :data:`PAUSABLE_MIDWAY` in :mod:`.runner`: an incubation holds its
temperature and stops its timer, a count stops the counter and later counts the wells not
yet counted; a harvest cannot stop half-way (the plate would be half filtered).
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import structlog

from acquisition.engine.context import StepContext, StepProgress
from acquisition.errors import InterlockError, PreconditionError
from acquisition.payloads import Progress, TemperatureReading, WellReading
from acquisition.protocols import CountStep, IncubateStep
from acquisition.run_recorder import utcnow
from drivers.counter import CounterDriver, WellCount
from drivers.errors import InstrumentError, InstrumentFaultError, InstrumentTimeoutError
from drivers.incubator import IncubatorDriver

__all__ = ["ALL_WELLS", "run_count", "run_incubate"]

log = structlog.get_logger("acquisition.engine")
ALL_WELLS = tuple(f"{row}{col}" for row in "ABCDEFGH" for col in range(1, 13))
SAMPLE_S = 30.0  # incubator temperature sampled (and logged) at most this far apart
STABILISE_TIMEOUT_S = 4 * 3600.0


def _sample_interval(step: IncubateStep) -> float:
    """Often enough that an excursion is caught within a quarter of its grace period."""
    return max(1.0, min(SAMPLE_S, step.grace_s / 4 if step.grace_s > 0 else SAMPLE_S))


# ------------------------------------------------------------------------------ incubate


async def run_incubate(ctx: StepContext, step: IncubateStep, progress: StepProgress) -> None:
    """Bring to temperature, wait until stable for ``hold``, then time ``duration``.

    The timer only runs while the step runs: a pause (or a restart) keeps the elapsed time
    and the step re-stabilises before timing the rest. Out of tolerance for longer than
    ``grace`` while timing: an interruption document, then :class:`InterlockError` with
    the protocol's ``on_excursion`` (pause or abort).
    """
    driver = ctx.handle("incubator").driver
    assert isinstance(driver, IncubatorDriver)
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
    ctx: StepContext, driver: IncubatorDriver, step: IncubateStep, progress: StepProgress,
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
        await ctx.recorder.sample(reading, prog)
        progress.last_sample_at = now
    return temp, inside


async def _stabilise(
    ctx: StepContext, driver: IncubatorDriver, step: IncubateStep, progress: StepProgress
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
    ctx: StepContext, driver: IncubatorDriver, step: IncubateStep, progress: StepProgress
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


# --------------------------------------------------------------------------------- count


async def run_count(ctx: StepContext, step: CountStep, progress: StepProgress) -> None:
    """Count the wells not counted yet; each counted well is one data document.

    After a pause, a retry or a daemon restart, only the wells missing from ``progress``
    are counted: every well ends up in the run exactly once.
    """
    driver = ctx.handle("counter").driver
    assert isinstance(driver, CounterDriver)
    counted = set(progress.counted)
    remaining = [w for w in ALL_WELLS if w not in counted]
    total = len(ALL_WELLS)
    if not remaining:
        return
    status = await driver.status()
    held = status.plate_id or ""
    if ctx.harvested and held != ctx.plate_id and not held.startswith(f"{ctx.plate_id}-"):
        # This run harvested its plate: the counter must hold that plate's mat, not
        # another (the last run's mat, the demo plate) that would count as ours.
        raise PreconditionError(
            f"the counter holds {status.plate_id or 'no plate'}, not a mat of plate "
            f"{ctx.plate_id}: put this run's mat in, then retry",
            instrument=driver.instrument_id, action="mat_to_counter",
        )  # fmt: skip
    if status.state == "counting":
        # A count left running (the link dropped, the daemon restarted): its records
        # cannot be told from ours with certainty; stop it and count what is missing.
        await driver.abort()
        status = await driver.status()
    start, done_before = ctx.clock.monotonic(), len(progress.counted)
    try:
        async for count in driver.count_plate(
            count_time_s=step.count_time_s, precision_pct=step.precision_pct,
            isotope=step.isotope, wells=remaining,
        ):  # fmt: skip
            if count.well in counted:  # never twice, whatever the counter sends
                continue
            counted.add(count.well)
            progress.counted.append(count.well)
            done = len(progress.counted)
            pace = (ctx.clock.monotonic() - start) / max(1, done - done_before)
            prog = Progress(done=done, total=total, eta_s=pace * (total - done))
            await ctx.recorder.data(_reading(count, done - 1, status.plate_id), prog)
    except asyncio.CancelledError:
        with contextlib.suppress(InstrumentError, OSError):
            await asyncio.shield(driver.abort())
        raise
    progress.detail = {"wells": len(progress.counted), "plate_id": status.plate_id}


def _reading(count: WellCount, index: int, plate_id: str | None) -> WellReading:
    return WellReading(
        index=index, well=count.well, plate_id=plate_id, detector=count.detector,
        counts=count.counts, count_time_s=count.count_time_s, cpm=count.cpm, ccpm=count.ccpm,
        sigma2_pct=count.sigma2_pct, sqp=count.sqp, flags=list(count.flags),
        counted_at=utcnow(),
    )  # fmt: skip

"""The count step: count the filter mat in the counter, each well one data document.

A pause stops the counter; after a pause, a retry or a daemon restart only the wells not
counted yet are counted, so every well ends up in the run exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import structlog
from pydantic import Field, field_validator

from acquisition.errors import PreconditionError
from acquisition.payloads import DataDocument, Progress, WellReading
from acquisition.quantities import DURATION, PERCENT, format_duration, quantity
from acquisition.run_recorder import utcnow
from acquisition.steps.registry import (
    PlanLine,
    SafeHow,
    StepModel,
    StepType,
    register_step_type,
)
from drivers.errors import InstrumentError
from drivers.roles import Counter
from labware import normalize_well, wells

if TYPE_CHECKING:
    from acquisition.instruments import InstrumentHandle
    from acquisition.steps.context import StepContext, StepProgress
    from drivers.counter import WellCount

__all__ = ["ALL_WELLS", "COUNTER_DETECTORS", "COUNT_OVERHEAD_S", "PLATE_WELLS", "CountStep",
           "run_count"]  # fmt: skip

log = structlog.get_logger("acquisition.engine")
ALL_WELLS = wells(96)
PLATE_WELLS = 96
COUNTER_DETECTORS = 12  # planning: 96 wells / 12 detectors = 8 plate positions
COUNT_OVERHEAD_S = 2.0  # planning: plate movement and settling per position
_HOUR = 3600.0


class CountStep(StepModel):
    """Count the filter mat: each well for count_time, or less once precision is reached."""

    type: Literal["count"]
    instrument: str | None = Field(
        None, max_length=64, description="instrument id; default: the config's only one"
    )
    isotope: Literal["H3", "C14", "P32", "I125"]
    count_time_s: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=24 * _HOUR)] = Field(
        alias="count_time", description="per well"
    )
    precision_pct: Annotated[float | None, quantity(PERCENT, lo=0, lo_open=True, hi=100)] = Field(
        None, alias="precision", description="stop a well early at this %2-sigma"
    )
    wells: list[str] | None = Field(
        None, min_length=1, max_length=PLATE_WELLS, description="default: every well"
    )

    @field_validator("wells")
    @classmethod
    def _wells_once(cls, v: list[str] | None) -> list[str] | None:
        """Well names as the counter writes them (A1-H12), each once."""
        if v is None:
            return v
        out: list[str] = []
        for name in v:
            well = normalize_well(name, PLATE_WELLS)
            if well is None:
                raise ValueError(f"well names A1-H12 (got {name!r})")
            if well in out:
                raise ValueError(f"each well once ({well} is repeated)")
            out.append(well)
        return out

    def plate_wells(self) -> tuple[str, ...]:
        """The wells this step counts, in the counter's order."""
        if self.wells is None:
            return ALL_WELLS
        chosen = set(self.wells)
        return tuple(w for w in ALL_WELLS if w in chosen)


async def run_count(ctx: StepContext, step: CountStep, progress: StepProgress) -> None:
    """Count the wells not counted yet; each counted well is one data document.

    After a pause, a retry or a daemon restart, only the wells missing from ``progress``
    are counted: every well ends up in the run exactly once.
    """
    driver = ctx.handle("counter").driver
    assert isinstance(driver, Counter)  # the role, whatever the vendor
    counted = set(progress.counted)
    plate = step.plate_wells()
    remaining = [w for w in plate if w not in counted]
    total = len(plate)
    if not remaining:
        return
    status = await driver.status()
    held = status.plate_id or ""
    harvested = any(s.type == "harvest" for s in ctx.steps_before)
    if harvested and held != ctx.plate_id and not held.startswith(f"{ctx.plate_id}-"):
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
            prog = Progress(done=done, total=total,
                            eta_s=_eta(step, plate, counted, done - done_before,
                                       ctx.clock.monotonic() - start))  # fmt: skip
            await ctx.recorder.data(_reading(count, done - 1, status.plate_id), prog,
                                    latest={"well": count.well, "cpm": count.cpm,
                                            "ccpm": count.ccpm})  # fmt: skip
    except asyncio.CancelledError:
        with contextlib.suppress(InstrumentError, OSError):
            await asyncio.shield(driver.abort())
        raise
    progress.detail = {"wells": len(progress.counted), "plate_id": status.plate_id}


def _eta(step: CountStep, plate: tuple[str, ...], counted: set[str], since: int,
         elapsed_s: float) -> float:  # fmt: skip
    """Run-clock seconds left. A row of the plate is counted at once (12 detectors), so the
    pace of single wells means nothing until a row has come in since the count (re)started:
    until then, the plan's time per row for the rows left."""
    left = [w for w in plate if w not in counted]
    if since >= COUNTER_DETECTORS:
        return elapsed_s / since * len(left)
    return len({w[0] for w in left}) * (step.count_time_s + COUNT_OVERHEAD_S)


def _reading(count: WellCount, index: int, plate_id: str | None) -> WellReading:
    return WellReading(
        index=index, well=count.well, plate_id=plate_id, detector=count.detector,
        counts=count.counts, count_time_s=count.count_time_s, cpm=count.cpm, ccpm=count.ccpm,
        sigma2_pct=count.sigma2_pct, sqp=count.sqp, flags=list(count.flags),
        counted_at=utcnow(),
    )  # fmt: skip


def _plan(step: CountStep) -> PlanLine:
    d = format_duration
    # 12 detectors count a row of the plate at once: one position per row with wells to count
    positions = len({well[0] for well in step.plate_wells()})
    stop = "" if step.precision_pct is None else f" or {step.precision_pct:g} % 2-sigma"
    note = (
        f"{positions} positions x ({d(step.count_time_s)} + {COUNT_OVERHEAD_S:g} s), "
        f"{COUNTER_DETECTORS}-detector counter"
    )
    if step.precision_pct is not None:
        note += "; at most (precision may stop wells early)"
    return PlanLine(f"{step.isotope}, {d(step.count_time_s)} per well{stop}",
                    positions * (step.count_time_s + COUNT_OVERHEAD_S), note)  # fmt: skip


def _rebuild(progress: StepProgress, doc: DataDocument) -> None:
    """A well's count: that well is done."""
    if isinstance(doc.reading, WellReading) and doc.reading.well not in progress.counted:
        progress.counted.append(doc.reading.well)


def _interrupted(progress: StepProgress) -> tuple[dict[str, Any], Progress | None]:
    done = len(progress.counted)
    total = progress.before.get("wells")  # the started document's (older runs: all 96)
    total = total if isinstance(total, int) else len(ALL_WELLS)
    return {"wells_done": done}, Progress(done=done, total=total)


async def _prepare(ctx: StepContext, step: CountStep, progress: StepProgress) -> dict[str, Any]:
    """The started document says how many wells the step counts."""
    return {"wells": len(step.plate_wells())}


async def _make_safe(handles: Mapping[str, InstrumentHandle], how: SafeHow) -> None:
    """The counter stopped when the run is aborted or the daemon stops."""
    handle = handles.get("counter")
    if handle is not None and how != "end":
        driver = handle.driver
        if isinstance(driver, Counter):
            await driver.abort()


COUNT = register_step_type(StepType(
    name="count", model=CountStep, plan=_plan, run=run_count, roles=("counter",),
    prepare=_prepare, rebuild=_rebuild, interrupted=_interrupted, make_safe=_make_safe,
))  # fmt: skip

"""The harvest step: checked before it starts, run, and judged from the harvester's own
report when it was interrupted.

A harvest is destructive (the plate is filtered once, onto one mat), so nothing about it
is assumed:

- :func:`prepare_harvest` checks the preconditions before anything is sent: the harvester
  neither busy nor faulted, a mat seated that holds no other plate's harvest, a plate in
  place (on a simulated bench: this run's plate), waste trap and buffer reservoir able to
  take this harvest. A failure is a :class:`PreconditionError` naming what to do. It
  returns the facts the step's started document records, among them the harvester's count
  of harvested mats (``MT?``'s ``made``) before this harvest;
- :func:`run_harvest` runs the cycle, or finishes a cycle of this step stopped part-way on
  the same mat; the driver checks that the cycle ended with a harvested mat;
- :func:`assess_harvest` reads the harvester after a fault or a daemon restart and says
  which case it is: the harvest had not begun, the plate is partly harvested, the
  harvester finished it (its count of harvested mats grew by one: mat dried, released or
  not), or it cannot tell (the count went down or grew by more, or another run harvested
  on it since, as this journal shows); only the choices that make sense are offered;
- :func:`release_harvester` is what skip leaves: vacuum off, latch cleared, a used mat
  released (the step type's ``make_safe`` does the same on abort).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Literal

import structlog
from pydantic import Field, StrictInt

from acquisition.config import HarvesterConfig
from acquisition.errors import PreconditionError
from acquisition.journal import run_documents
from acquisition.payloads import Progress, StartDocument, StepDocument
from acquisition.quantities import DURATION, VOLUME, format_duration, quantity
from acquisition.steps.registry import (
    Assessment,
    PlanLine,
    SafeHow,
    StepModel,
    StepType,
    register_step_type,
)
from drivers.errors import InstrumentError
from drivers.harvester import HarvesterStatus, MatReport
from drivers.roles import Harvester

if TYPE_CHECKING:
    from acquisition.instruments import InstrumentHandle
    from acquisition.steps.context import StepContext, StepProgress

__all__ = [
    "HarvestStep",
    "assess_harvest",
    "prepare_harvest",
    "release_harvester",
    "run_harvest",
]

log = structlog.get_logger("acquisition.engine")

WELLS = 96
WELL_VOLUME_ML = 0.25  # liquid per well filtered by the aspirate
PEI_ML_PER_WELL_S = 0.005  # prewet flow
MARGIN = 1.05  # a harvest needs 5 % more room than its estimate
BUSY_WAIT_S = 900.0  # at most this long (run clock) for a step left running to end
HARVEST_WASH_S = 20.0  # planning: one wash cycle of the harvester
HARVEST_OVERHEAD_S = 20.0  # planning: aspirate, vacuum up and down
_HOUR = 3600.0
_REMEDY = {"waste_full": "empty_waste", "buffer_empty": "refill_buffer",
           "mat_not_seated": "seat_mat"}  # fmt: skip


class HarvestStep(StepModel):
    """Filter the plate onto a mat: prewet the filter, wash, dry."""

    type: Literal["harvest"]
    instrument: str | None = Field(
        None, max_length=64, description="instrument id; default: the config's only one"
    )
    prewet_s: Annotated[float, quantity(DURATION, lo=0, hi=600)] = Field(alias="prewet")
    washes: StrictInt = Field(ge=1, le=10)
    wash_volume_ml: Annotated[float, quantity(VOLUME, lo=0, lo_open=True, hi=5)] = Field(
        alias="wash_volume", description="per well and wash"
    )
    dry_s: Annotated[float, quantity(DURATION, lo=0, hi=600)] = Field(alias="dry")
    buffer: str | None = Field(None, max_length=200, description="free text, e.g. 'ice-cold'")



def _driver(ctx: StepContext) -> tuple[Harvester, HarvesterConfig]:
    handle = ctx.handle("harvester")
    driver, config = handle.driver, handle.config
    assert isinstance(driver, Harvester) and isinstance(config, HarvesterConfig)
    return driver, config


def _made_before(progress: StepProgress) -> int | None:
    value = progress.before.get("harvester", {}).get("mats_made")
    return int(value) if value is not None else None


def _ours(progress: StepProgress, mat: MatReport) -> bool:
    """The seated mat carries this step's own unfinished cycle: as the last assessment
    found it, else as the started document's made-count says (a fault within the run)."""
    if not (progress.started and mat.used and not mat.dried):
        return False
    if progress.assessed is not None:
        return progress.assessed == "partly"
    return _made_before(progress) == mat.made


async def _harvests_since(ctx: StepContext, iid: str, made: int | None) -> list[str]:
    """Other runs of this journal whose harvest on harvester ``iid`` began after this
    step's did: at a made-count of at least ``made`` (None, a started document older than
    the count: any harvest of a run active since this one was created)."""
    me = await ctx.journal.get_run(ctx.recorder.run)
    if me is None:
        return []
    found: list[str] = []
    for other in await ctx.journal.runs_active_since(me.created_at):
        if other.run == me.run:
            continue
        # its start and step documents only: a run's thousands of readings stay on disk
        docs = await run_documents(ctx.journal, other.run, kinds=("start", "step"))
        start = next((d for d in docs if isinstance(d, StartDocument)), None)
        used = (start.instruments.get(iid) if start is not None else None) or {}
        if (used.get("role") or used.get("kind")) != "harvester":  # older runs: no role
            continue
        for doc in docs:
            if not (isinstance(doc, StepDocument) and doc.step == "harvest"
                    and doc.phase in ("started", "resumed")):  # fmt: skip
                continue
            theirs = (doc.detail.get("harvester") or {}).get("mats_made")
            if made is None or theirs is None or int(theirs) >= made:
                found.append(other.run)
                break
    return found


def _needs_ml(step: HarvestStep, mat: MatReport | None) -> tuple[float, float]:
    """(waste, buffer) this harvest still adds / draws; ``mat``: a cycle to finish."""
    washes = step.washes - (mat.washes if mat is not None else 0)
    buffer = max(0, washes) * WELLS * step.wash_volume_ml
    waste = buffer
    if mat is None or not mat.aspirated:
        waste += WELLS * WELL_VOLUME_ML
        if mat is None or not mat.prewet:
            waste += WELLS * PEI_ML_PER_WELL_S * step.prewet_s
    return waste, buffer


async def prepare_harvest(
    ctx: StepContext, step: HarvestStep, progress: StepProgress
) -> dict[str, Any]:
    """The preconditions (see the module docstring); the facts to record."""
    driver, config = _driver(ctx)
    iid = driver.instrument_id
    st, mat = await driver.status(), await driver.mat()
    if st.state == "busy":
        raise PreconditionError(
            f"the harvester is running step {st.step} ({st.progress_pct}%) for no step of "
            "this run: let it end or stop it at the harvester, then retry", instrument=iid,
        )  # fmt: skip
    if st.state == "fault":
        raise PreconditionError(
            f"the harvester reports {st.fault} (latched): fix the cause, then retry (retry "
            "clears the latch and reads the sensors again)",
            instrument=iid, action=_REMEDY.get(st.fault or ""),
        )  # fmt: skip
    made = _made_before(progress)
    ours = _ours(progress, mat)
    if mat.used and not ours:
        if progress.release_stray:
            progress.release_stray = False
            await driver.release_mat()
            log.info("released a mat left from an earlier harvest", instrument=iid)
            mat = await driver.mat()
        else:
            progress.release_stray = True
            raise PreconditionError(
                "the seated filter mat holds an earlier harvest, not this plate's: take "
                "that mat away; retry releases it and goes on with a fresh mat",
                instrument=iid, action="release_mat",
            )  # fmt: skip
    if not mat.seated:
        raise PreconditionError(
            "no filter mat is seated in the harvester: seat a fresh GF/B mat, then retry",
            instrument=iid, action="seat_mat",
        )  # fmt: skip
    if not st.plate_present:
        raise PreconditionError(
            f"no plate in the harvester: put plate {ctx.plate_id} in, then retry",
            instrument=iid, action="plate_to_harvester",
        )  # fmt: skip
    if ctx.bench is not None:
        held = await ctx.bench.plate_at(f"harvester:{iid}")
        if held is not None and held != ctx.plate_id:
            raise PreconditionError(
                f"the harvester holds plate {held}, not this run's {ctx.plate_id}: take it "
                f"out, put {ctx.plate_id} in, then retry",
                instrument=iid, action="plate_to_harvester",
            )  # fmt: skip
    waste_ml, buffer_ml = _needs_ml(step, mat if ours else None)
    free_ml = (100.0 - st.waste_pct) / 100.0 * config.waste_capacity_ml
    left_ml = st.buffer_pct / 100.0 * config.buffer_capacity_ml
    shortfalls = (
        (waste_ml, free_ml, "empty_waste", f"the waste trap is {st.waste_pct:.0f}% full and "
         f"this harvest adds about {100 * waste_ml / config.waste_capacity_ml:.0f}%: empty it"),
        (buffer_ml, left_ml, "refill_buffer", f"the wash buffer is at {st.buffer_pct:.0f}% and "
         f"this harvest needs about {100 * buffer_ml / config.buffer_capacity_ml:.0f}%: refill it"),
    )  # fmt: skip
    for need_ml, room_ml, action, what in shortfalls:
        if need_ml * MARGIN > room_ml:
            raise PreconditionError(f"{what}, then retry", instrument=iid, action=action)
    return _facts(made if ours else None, mat, st)


def _facts(made: int | None, mat: MatReport, st: HarvesterStatus) -> dict[str, Any]:
    """What the started document records; ``mats_made``: the harvester's count of
    harvested mats before this step's cycle (``made``, or now when it begins afresh)."""
    return {"harvester": {
        "mats_made": mat.made if made is None else made, "mat": asdict(mat),
        "plate_present": st.plate_present, "waste_pct": st.waste_pct,
        "buffer_pct": st.buffer_pct,
    }}  # fmt: skip


async def run_harvest(ctx: StepContext, step: HarvestStep, progress: StepProgress) -> None:
    """One harvest cycle, or the rest of this step's own cycle stopped part-way."""
    driver, _ = _driver(ctx)
    mat = await driver.mat()
    resume = mat if _ours(progress, mat) else None
    ticker = asyncio.create_task(_tick(ctx, _plan(step).duration_s),
                                 name=f"harvest-progress:{ctx.index}")  # fmt: skip
    try:
        report = await driver.harvest(
            prewet_s=step.prewet_s, washes=step.washes,
            wash_volume_ml=step.wash_volume_ml, dry_s=step.dry_s, resume=resume,
        )  # fmt: skip
    except asyncio.CancelledError:
        with contextlib.suppress(InstrumentError, OSError):
            await asyncio.shield(driver.abort())  # vacuum off, pumps stopped
        raise
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    progress.detail = {
        "clogged_wells": list(report.clogged_wells),
        "peak_vacuum_bar": report.peak_vacuum_bar,
        "buffer_pct": report.buffer_pct,
        "waste_pct": report.waste_pct,
        "duration_s": round(report.duration_s, 1),
        "mat": asdict(report.mat) if report.mat is not None else None,
        **({"finished_from": asdict(resume)} if resume is not None else {}),
    }
    if report.clogged_wells:
        log.warning("clogged wells", wells=list(report.clogged_wells))


async def _tick(ctx: StepContext, planned_s: float, every_s: float = 5.0) -> None:
    """Elapsed against the planned duration (the harvester reports no overall progress)."""
    start = ctx.clock.monotonic()
    total = max(1, round(planned_s))
    while True:
        done = min(total, round(ctx.clock.monotonic() - start))
        await ctx.progress(Progress(done=done, total=total, unit="s", eta_s=total - done))
        await ctx.clock.sleep(every_s)


async def assess_harvest(
    ctx: StepContext, step: HarvestStep, progress: StepProgress
) -> Assessment:
    """Which case an interrupted harvest is in, from the harvester's report (a step it was
    still running is waited for first) and the made-count the started document recorded."""
    driver, _ = _driver(ctx)
    deadline = ctx.clock.monotonic() + BUSY_WAIT_S
    st = await driver.status()
    if st.state == "busy" and ctx.recorder.state == "running":
        await ctx.recorder.set_state("running", message=(
            f"waiting for the harvester to end step {st.step} before saying where the "
            "harvest stands (abort ends the run)"))  # fmt: skip
    while st.state == "busy" and ctx.clock.monotonic() < deadline:
        await ctx.clock.sleep(1.0)
        st = await driver.status()
    mat = await driver.mat()
    made = _made_before(progress)
    others = await _harvests_since(ctx, driver.instrument_id, made)
    facts = {"harvester": {"state": st.state, "step": st.step, "progress_pct": st.progress_pct,
                           "fault": st.fault, "plate_present": st.plate_present,
                           "mat": asdict(mat), "mats_made_before": made,
                           "harvested_since_by": others}}  # fmt: skip
    progress.assessed = case = _case(made, mat, others)
    if case == "unknown":
        why = (f"run {', '.join(others)} harvested on it since" if others else
               f"its count of harvested mats went from {made} to {mat.made}" if made is not
               None and mat.made != made else "its mat report does not match this step")
        return Assessment(
            f"the harvester cannot tell whether this plate was harvested ({why}): check the "
            "plate and the mats by hand. retry = harvest it afresh (a used mat seated is "
            "released first), skip = go on (only if this plate's mat is in hand), abort = "
            "end the run", ("retry", "skip", "abort"), case, facts,
        )  # fmt: skip
    if case == "finished":
        kept = "the mat is dried, not released yet" if mat.dried else "its mat was released"
        return Assessment(
            f"the harvester finished the cycle ({kept}). skip = keep this mat and go "
            "on (the harvester releases it), abort = end the run",
            ("skip", "abort"), case, facts,
        )  # fmt: skip
    if case == "partly":
        washes = f"{mat.washes} of {step.washes} washes done"
        rest = max(0, step.washes - mat.washes)
        todo = (f"{rest} more wash{'es' if rest != 1 else ''} and the dry" if rest
                else "the dry")
        if not mat.aspirated:
            washes, todo = "its aspirate cut short", f"the aspirate again, {todo}"
        latch = "clear the fault, then " if st.state == "fault" else ""
        return Assessment(
            f"the plate is partly harvested (filtered onto the mat, {washes}, not "
            f"dried). retry = {latch}finish it on the same mat ({todo}), abort = end the "
            "run (the mat is released as it is)",
            ("retry", "abort"), case, facts,
        )  # fmt: skip
    plate = "in the harvester" if st.plate_present else "not in the harvester"
    return Assessment(
        f"the harvest had not begun (the mat is unused, the plate {plate}). "
        "retry = harvest it now, abort = end the run",
        ("retry", "abort"), case, facts,
    )  # fmt: skip


def _case(made: int | None, mat: MatReport, others: list[str]) -> str:
    """not-begun, partly, finished or unknown, from the made-count before the step
    (None: a started document older than it), the mat report now and other runs that
    harvested on the harvester since."""
    if others or (made is not None and not made <= mat.made <= made + 1):
        return "unknown"  # power-cycled (the count went down), or someone else's cycles
    if made is not None and mat.made == made + 1:
        return "finished"
    if mat.used and not mat.dried:
        return "partly"
    return "unknown" if mat.used else "not-begun"


async def release_harvester(ctx: StepContext, progress: StepProgress) -> dict[str, Any]:
    """Vacuum off, latch cleared, a used mat released: the harvester as skip leaves it.
    A cycle the harvester finished by itself is this step's harvest (recorded finished).
    Returns what it holds afterwards (for the interruption document)."""
    driver, _ = _driver(ctx)
    mat = await driver.mat()
    await driver.abort()
    if mat.used:
        await driver.release_mat()
    if progress.assessed == "finished":
        progress.done_by_instrument = True
        progress.detail = {"finished_by_harvester": True, "mat": asdict(mat)}
    st, mat = await driver.status(), await driver.mat()
    return {"state": st.state, "plate_present": st.plate_present, "mat": asdict(mat)}


def _plan(step: HarvestStep) -> PlanLine:
    d = format_duration
    volume = (f"{step.wash_volume_ml:g} mL" if step.wash_volume_ml >= 1
              else f"{step.wash_volume_ml * 1000:g} uL")  # fmt: skip
    settings = (f"prewet {d(step.prewet_s)}, {step.washes} x {volume}"
                f"{' ' + step.buffer if step.buffer else ''}, dry {d(step.dry_s)}")  # fmt: skip
    total = step.prewet_s + step.washes * HARVEST_WASH_S + step.dry_s + HARVEST_OVERHEAD_S
    return PlanLine(settings, total)


async def _make_safe(handles: Mapping[str, InstrumentHandle], how: SafeHow) -> None:
    """Aborted: vacuum off, latch cleared and a used mat released (the next run finds no
    plate's half-done mat; an unused one stays seated). A stopping daemon: vacuum off,
    the mat left as it is for the resume to judge."""
    handle = handles.get("harvester")
    if handle is None or how == "end":
        return
    driver = handle.driver
    if not isinstance(driver, Harvester):
        return
    used = how == "abort" and (await driver.mat()).used  # read first
    await driver.abort()
    if used:
        await driver.release_mat()


HARVEST = register_step_type(StepType(
    name="harvest", model=HarvestStep, plan=_plan, run=run_harvest, roles=("harvester",),
    pausable_midway=False,  # a plate half filtered cannot wait
    prepare=prepare_harvest, assess=assess_harvest, release=release_harvester,
    make_safe=_make_safe,
))  # fmt: skip

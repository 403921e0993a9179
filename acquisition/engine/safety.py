"""Ending well: instruments left safe, and endings that a cancellation cannot cut short.

Shared by the run loop (:mod:`.runner`) and the commands that end a run outside it
(:mod:`.commands`: aborting an interrupted run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

import structlog

from acquisition.instruments import InstrumentHandle
from drivers.counter import CounterDriver
from drivers.errors import InstrumentError
from drivers.harvester import HarvesterDriver
from drivers.incubator import IncubatorDriver

__all__ = ["cancel_and_wait", "clear_latch", "make_safe", "uninterruptible"]

log = structlog.get_logger("acquisition.engine")


async def make_safe(handles: dict[str, InstrumentHandle], *, aborting: bool) -> list[str]:
    """When aborting: counter stopped, harvester vacuum off, latch cleared and a used mat
    released (the next run finds no plate's half-done mat; an unused one stays); always:
    incubator shaker off and at its idle setpoint. Never raises: returns what could not
    be done, and logs it."""
    problems: list[str] = []
    for kind, handle in handles.items():
        driver = handle.driver
        try:
            if isinstance(driver, IncubatorDriver):
                await driver.stop_shaking()
                idle = getattr(handle.config, "idle_setpoint_c", 25.0)
                await driver.set_temperature(idle)
            elif aborting and isinstance(driver, HarvesterDriver):
                used = (await driver.mat()).used  # read first: an unused mat stays seated
                await driver.abort()
                if used:
                    await driver.release_mat()
            elif aborting and isinstance(driver, CounterDriver):
                await driver.abort()
        except (InstrumentError, OSError) as exc:
            log.warning("could not make instrument safe", instrument=kind, error=str(exc))
            problems.append(f"{handle.config.id}: {exc}")
    return problems


async def clear_latch(handles: Iterable[InstrumentHandle]) -> str | None:
    """A retry: the operator says the cause of a fault is fixed. Each of ``handles`` that
    reports a latched fault has it cleared the way its manual says (its driver's
    ``clear_fault``: the harvester's AB, the perfusion spill acknowledge, the counter's
    reset), then its sensors are read again; one with no fault is not touched (a
    harvester still running a step is not aborted). Returns what one still reports (None:
    clear to go on)."""
    for handle in handles:
        clear = getattr(handle.driver, "clear_fault", None)
        if clear is None:
            continue
        try:
            if (await handle.driver.readings()).fault is None:
                continue
            await clear()
            readings = await handle.driver.readings()
        except (InstrumentError, OSError) as exc:
            return f"{handle.config.id} cannot be read after clearing its fault ({exc})"
        if readings.fault is not None:
            return f"{handle.config.id} still reports {readings.fault} after its latch was cleared"
    return None


async def uninterruptible(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end even if the caller is cancelled meanwhile (then re-raise):
    an abort half done would leave instruments running and no stop document."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has finished; its own errors are not ours (a
    cancellation of the caller itself still goes through)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("cancelled step ended with an error", error=repr(exc))

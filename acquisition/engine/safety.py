"""Ending well: instruments left safe, and endings that a cancellation cannot cut short.

Shared by the run loop (:mod:`.runner`) and the commands that end a run outside it
(:mod:`.commands`: aborting an interrupted run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

import structlog

from acquisition.instruments import InstrumentHandle
from acquisition.steps import SafeHow, step_types
from drivers.errors import InstrumentError

__all__ = ["cancel_and_wait", "clear_latch", "make_safe", "uninterruptible"]

log = structlog.get_logger("acquisition.engine")


async def make_safe(
    step_names: Iterable[str], handles: Mapping[str, InstrumentHandle], how: SafeHow
) -> list[str]:
    """Each step type of the run leaves the instruments of its roles safe, as it declares
    (``make_safe`` of :class:`~acquisition.steps.StepType`): the counter stopped, the
    harvester's vacuum off and a used mat released on abort, the incubator's shaker off at
    its idle setpoint at the end. Never raises: returns what could not be done, and logs it."""
    problems: list[str] = []
    types = step_types()
    for name in dict.fromkeys(step_names):
        entry = types.get(name)
        if entry is None or entry.make_safe is None:
            continue
        mine = {role: h for role, h in handles.items() if role in entry.roles}
        if not mine:
            continue
        try:
            await entry.make_safe(mine, how)
        except (InstrumentError, OSError) as exc:
            ids = ", ".join(h.config.id for h in mine.values())
            log.warning("could not make instrument safe", instrument=ids, error=str(exc))
            problems.append(f"{ids}: {exc}")
        except Exception as exc:  # a step type's own bug: the others are still made safe
            ids = ", ".join(h.config.id for h in mine.values())
            log.exception("make-safe of a step type failed", step_type=name, instrument=ids)
            problems.append(f"{ids}: {type(exc).__name__}: {exc}")
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

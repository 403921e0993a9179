"""A run takes all its instruments at once, or waits in line for them.

``queued`` while one is held by another run or offline. First come, first served when it
matters: a run gives way to an earlier queued run that wants one of its instruments and could
take all it wants now; it is not held up by one still waiting for something else (which may
then wait longer: the instruments are kept busy rather than idle). The wait is on the
manager's change counter, read before each attempt, so a release between the attempt and
the wait is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib

from acquisition.engine.control import RunControl
from acquisition.errors import CommandError
from acquisition.instruments import InstrumentHandle, InstrumentManager
from acquisition.run_recorder import RunRecorder

__all__ = ["AbortedWhileQueued", "lease_all"]


class AbortedWhileQueued(Exception):
    """The operator aborted the run before it had its instruments."""


async def lease_all(
    instruments: InstrumentManager,
    recorder: RunRecorder,
    control: RunControl,
    needed: dict[str, str],
    stack: contextlib.AsyncExitStack,
) -> dict[str, InstrumentHandle]:
    """Lease ``needed`` (role -> instrument id) for ``recorder``'s run; the leases are
    released when ``stack`` closes. Only handles actually held are returned."""
    run = recorder.run
    ids = frozenset(needed.values())
    try:
        while True:
            generation = instruments.generation  # read first: no change is missed
            ahead = instruments.waiting_ahead(run, ids)
            if ahead is not None:  # first come, first served
                instruments.join_queue(run, ids)
                await _queued(recorder, f"waiting: run {ahead} is first in line")
                await _wait(instruments, control, generation)
                continue
            attempt = contextlib.AsyncExitStack()
            handles: dict[str, InstrumentHandle] = {}
            try:
                for role in sorted(needed):
                    handles[role] = await attempt.enter_async_context(
                        instruments.lease(needed[role], run, role=role)
                    )
            except CommandError as exc:
                await attempt.aclose()  # held by nobody: not ours to make safe later
                if exc.code not in ("conflict", "unavailable"):
                    raise
                instruments.join_queue(run, ids)
                await _queued(recorder, f"waiting: {exc.message}")
                await _wait(instruments, control, generation)
                continue
            stack.push_async_exit(attempt.pop_all())
            return handles
    finally:
        instruments.leave_queue(run)


async def _queued(recorder: RunRecorder, message: str) -> None:
    if recorder.state != "queued" or recorder.message != message:
        await recorder.set_state("queued", message=message)


async def _wait(instruments: InstrumentManager, control: RunControl, generation: int) -> None:
    """Until an instrument changed since ``generation`` (a lease released, a connection
    made, a run ahead left the line) or an abort."""
    changed = asyncio.ensure_future(instruments.changed(generation))
    asked = asyncio.ensure_future(control.changed())
    try:
        await asyncio.wait({changed, asked}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (changed, asked):
            fut.cancel()
    if control.abort_requested:
        raise AbortedWhileQueued("aborted while queued")

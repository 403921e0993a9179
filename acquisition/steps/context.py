"""What a step executor works with, and the signals it raises to the run's loop.

A step executor is ``async def run(ctx, step, progress)``; it drives instruments through
``ctx``, writes documents through ``ctx.recorder``, keeps what it has done in ``progress``
(so a retry, a resume after a pause or after a daemon restart goes on from there) and
returns when the step is done. It raises :class:`drivers.errors.InstrumentError` for an
instrument problem (the run then waits for the operator: retry, skip or abort), or
:class:`~acquisition.errors.InterlockError` when an interlock trips. Cancellation means
pause or abort: the executor leaves its instrument safe and lets the cancellation through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from acquisition.analysis.layout import PlateLayout
from acquisition.config import LabConfig
from acquisition.instruments import InstrumentHandle
from acquisition.journal import Journal
from acquisition.payloads import Progress
from acquisition.run_recorder import RunRecorder
from acquisition.steps.labware import BenchView
from drivers.clock import Clock

__all__ = ["StepContext", "StepProgress"]


@dataclass
class StepProgress:
    """What a step has done so far; survives pauses and retries, and is rebuilt from the
    run's documents after a daemon restart (:mod:`.recovery`)."""

    started: bool = False
    counted: list[str] = field(default_factory=list)  # count: wells, in order
    recorded: list[int] = field(default_factory=list)  # record: the run's sweep numbers kept
    elapsed_s: float = 0.0  # incubate / wait: timer seconds done
    last_sample_at: datetime | None = None  # incubate: wall time of the newest sample
    detail: dict[str, Any] = field(default_factory=dict)  # what the finished document says
    before: dict[str, Any] = field(default_factory=dict)  # facts the started document holds
    release_stray: bool = False  # harvest: the operator was told a retry releases a stray mat
    assessed: str | None = None  # the case the last assessment found (harvest: "partly", ...)
    done_by_instrument: bool = False  # on skip: the instrument had done the step by itself


@dataclass
class StepContext:
    config: LabConfig
    recorder: RunRecorder
    journal: Journal
    clock: Clock
    handles: dict[str, InstrumentHandle]  # by role: "incubator", "harvester", "counter"
    plate_id: str | None  # None: the run has no plate of its own (count-plate)
    plate_layout: PlateLayout | None
    index: int  # 1-based step number
    notify: Callable[[], None]  # wake the MQTT link
    steps_before: tuple[Any, ...] = ()  # the protocol's steps before this one
    bench: BenchView | None = None  # a simulated bench's world, to check labware against
    operator: Callable[[str], Awaitable[str]] | None = None
    """A simulated bench's virtual operator (``await ctx.operator("break_in")``: what it
    did, in words); None on a real rig, where a person does it while the step watches."""

    def handle(self, role: str) -> InstrumentHandle:
        """The run's instrument playing ``role`` (one of the step type's ``roles``)."""
        return self.handles[role]

    async def progress(self, progress: Progress, latest: dict[str, Any] | None = None) -> None:
        """Publish the step's progress in the retained run state."""
        rec = self.recorder
        rec.progress = progress
        if latest is not None:
            rec.latest = latest
        await rec.set_state(rec.state, message=rec.message)

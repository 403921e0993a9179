"""One protocol run: its steps in order, as a journaled state machine (run_states.py).

The loop leases every instrument the protocol needs (``queued`` until they are free, so two
runs asking for one counter are serialised while runs on different instruments proceed at
once), then runs each step as a task while listening to :class:`~.control.RunControl`:

- pause ``now`` cancels a step whose type may be paused mid-way (``pausable_midway`` of its
  :class:`~acquisition.steps.StepType`) and keeps its progress; otherwise, and for
  ``after-step``, the run pauses at the next step boundary. ``resume`` goes on from the
  step's progress;
- an instrument error puts the run in ``awaiting-recovery`` (retry / skip / abort), with an
  interruption document; nothing is invented to fill the gap;
- an interlock pauses or aborts as the protocol says;
- abort cancels the step and leaves the instruments safe (counter stopped, harvester vacuum
  off, incubator shaker off and at its idle setpoint);
- the daemon stopping (cancellation) records an interruption and leaves the run
  ``interrupted``, resumable after the restart.

Every transition is a retained run state and every step boundary a document, written to
the journal before it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import structlog

from acquisition.config import LabConfig
from acquisition.engine.asking import Aborted, Asking, Outcome
from acquisition.engine.control import RunControl
from acquisition.engine.leasing import AbortedWhileQueued, lease_all
from acquisition.engine.recovery import ResumePoint, decide
from acquisition.engine.safety import cancel_and_wait, clear_latch, make_safe, uninterruptible
from acquisition.engine.setup import RunSetup
from acquisition.errors import AnalysisError, InterlockError, PreconditionError
from acquisition.instruments import InstrumentHandle, InstrumentManager
from acquisition.journal import Journal
from acquisition.payloads import ExitStatus, RunStateName
from acquisition.run_recorder import RunRecorder, utcnow
from acquisition.steps import StepType, step_type
from acquisition.steps.context import StepContext, StepProgress
from acquisition.steps.labware import BenchView, strays, survey
from drivers.clock import Clock
from drivers.errors import InstrumentError

__all__ = [
    "ProtocolRun",
    "RunSetup",
    "resume_hint",
]

log = structlog.get_logger("acquisition.engine")
_T = TypeVar("_T")

class ProtocolRun(Asking):
    """Runs ``setup.protocol`` from step ``start_index`` (1-based) with ``progress``."""

    def __init__(  # noqa: PLR0917 - the run's collaborators, each named at the call
        self,
        config: LabConfig,
        journal: Journal,
        instruments: InstrumentManager,
        recorder: RunRecorder,
        setup: RunSetup,
        clock: Clock,
        notify: Callable[[], None],
        *,
        start_index: int = 1,
        progress: dict[int, StepProgress] | None = None,
        resume: tuple[ResumePoint, float] | None = None,
        fresh: bool = True,
    ) -> None:
        self.config, self.journal, self.instruments = config, journal, instruments
        self.recorder, self.setup, self.clock, self.notify = recorder, setup, clock, notify
        self.control = RunControl()
        self.handles: dict[str, InstrumentHandle] = {}
        self._fresh = fresh  # False: resumed, the start document is already written
        self._start_index = start_index
        self._progress = progress or {}
        # After a restart: where the run stood and the time scale; whether the operator must
        # decide before step start_index goes on is judged once the instruments are held.
        self._resume = resume
        self._decision: str | None = None
        self._assess_restart = False  # the step to go on has hooks that judge it (harvest)
        sim = config.simulation
        self._bench = (BenchView(sim.control_host, sim.control_port)
                       if sim.enabled and sim.control_port is not None else None)  # fmt: skip
        recorder.steps_total = len(setup.protocol.steps)

    @property
    def current_step_pausable(self) -> bool:
        index = self.recorder.step_index
        if index is None:
            return True
        return step_type(self.setup.protocol.steps[index - 1].type).pausable_midway

    # -------------------------------------------------------------------- the whole run

    async def run(self) -> None:
        rec = self.recorder
        async with contextlib.AsyncExitStack() as leases:
            try:
                await self._lease_all(leases)
                if self._resume is not None:  # decided now, when the step would go on
                    point, scale = self._resume
                    self._decision = decide(self.setup.protocol, point, utcnow(), scale)
                    self._assess_restart = True
                if self._fresh:
                    await self._start_document()
                elif self._start_index > len(self.setup.protocol.steps) and rec.state != "running":
                    # the daemon stopped after the last step, before the stop document
                    await rec.set_state("running", message=None)
                await self._steps()
                n = len(self.setup.protocol.steps)
                done = "the one step done" if n == 1 else f"all {n} steps done"
                await uninterruptible(self._end("success", done, "completed"))
            except Aborted as exc:
                await uninterruptible(self._end("abort", str(exc), "aborted"))
            except asyncio.CancelledError:
                if self.control.abort_requested and not rec.stopped:
                    # The operator asked first: the daemon stopping does not undo the abort.
                    await uninterruptible(self._end("abort", "aborted by operator", "aborted"))
                else:
                    await self._interrupted()
                raise
            except Exception as exc:  # a journal failure or a bug: keep the daemon up
                log.exception("run crashed")
                if not rec.stopped:
                    with contextlib.suppress(Exception):
                        await self._end("fail", f"internal error: {exc}", "failed")

    async def _end(self, exit_status: ExitStatus, reason: str, final: RunStateName) -> None:
        """Instruments safe, then the stop document (once)."""
        rec = self.recorder
        rec.prompt = None
        await make_safe(self._step_names(), self.handles,
                        "end" if exit_status == "success" else "abort")  # fmt: skip
        if exit_status != "success" and not rec.stopped and rec.counts.get("start", 0):
            await self._labware_left("at the end of the run")
        if not rec.stopped:
            await rec.stop(exit_status, reason, final)

    async def _labware_left(self, when: str) -> None:
        """An interruption document with where the labware is, for whoever comes next."""
        found = await survey(self.handles, self._bench)
        held = strays(found, "")
        text = "; ".join(held) if held else "no plate or used mat left in an instrument"
        await self.recorder.interruption(f"labware {when}: {text}", {"labware": found})

    async def _lease_all(self, stack: contextlib.AsyncExitStack) -> None:
        """Hold every instrument of the protocol; ``queued`` while one is busy or offline."""
        needed = {role: self.setup.instruments[role] for s in self.setup.protocol.steps
                  for role in step_type(s.type).roles}  # fmt: skip
        try:
            self.handles = await lease_all(
                self.instruments, self.recorder, self.control, needed, stack
            )
        except AbortedWhileQueued as exc:
            raise Aborted(str(exc)) from None

    async def _start_document(self) -> None:
        s = self.setup
        await self.recorder.start(
            protocol={"name": s.protocol.name, "source": s.protocol_source,
                      "definition": s.protocol_definition,
                      **({"label": s.label} if s.label is not None else {})},
            plate={"plate_id": s.plate_id, "format": 96, "source": s.plate_map_source,
                   "map": s.plate_map},
            instruments={
                h.config.id: {"kind": h.config.kind, "role": role,
                              "address": h.config.address, "identity": h.identity}
                for role, h in self.handles.items()
            },
            simulated=self.config.simulation.enabled,
        )  # fmt: skip

    async def _steps(self) -> None:
        steps = self.setup.protocol.steps
        for index in range(self._start_index, len(steps) + 1):
            await self._boundary()
            await self._step(index)
        await self._boundary()  # "pause after this step" on the last one still pauses

    async def _boundary(self) -> None:
        if self.control.abort_requested:
            raise Aborted("aborted by operator")
        if self.control.pause_requested is not None:
            await self._paused("paused by operator")

    # ------------------------------------------------------------------------ one step

    async def _step(self, index: int) -> None:
        step = self.setup.protocol.steps[index - 1]
        prog = self._progress.setdefault(index, StepProgress())
        rec = self.recorder
        rec.step_index = index
        hooks = step_type(step.type)
        if self._decision is not None:
            text, self._decision = self._decision, None
            if await self._recovery(index, text, {"after": "daemon restart"}) == "skip":
                await rec.step_phase(step.type, "skipped", {"index": index})
                return
        elif self._assess_restart and hooks.assess is not None:
            self._assess_restart = False
            if prog.started and await self._after_fault(index, step, prog, None):
                return
        while True:
            if self.control.pause_requested is not None:  # asked before a fault or a retry
                await self._paused("paused by operator")
            rec.progress, rec.latest = None, None
            await rec.set_state("running", step=step.type, message=None)
            outcome = await self._prepare(index, step, prog, hooks)
            if outcome is None:
                phase: Literal["started", "resumed"] = "resumed" if prog.started else "started"
                prog.started = True
                await rec.step_phase(step.type, phase, {"index": index, **prog.before})
                if hooks.run is None:  # an operator prompt
                    outcome = await self._prompt(index, step)
                else:
                    outcome = await self._execute(self._context(index), step, prog, hooks)
            if outcome.kind == "done":
                await rec.step_phase(step.type, "finished", {"index": index, **prog.detail})
                return
            if outcome.kind == "interlock":
                assert isinstance(outcome.error, InterlockError)
                if outcome.error.action == "abort":
                    raise Aborted(str(outcome.error))
                await rec.step_phase(step.type, "paused", {"index": index})
                await self._paused(str(outcome.error))
                continue
            if outcome.kind == "paused":
                await rec.step_phase(step.type, "paused", {"index": index})
                await self._paused(str(outcome.error) if outcome.error else "paused by operator")
                continue
            # an instrument fault, a precondition not met, or an analysis that cannot be done
            if await self._after_fault(index, step, prog, outcome.error):
                return

    async def _prepare(
        self, index: int, step: Any, prog: StepProgress, hooks: StepType
    ) -> Outcome | None:
        """The step's preconditions (None: met, the facts are in ``prog.before``)."""
        if hooks.prepare is None:
            return None
        try:
            prog.before = await hooks.prepare(self._context(index), step, prog)
        except (InstrumentError, OSError) as exc:
            return Outcome("fault", exc)
        return None

    async def _after_fault(
        self, index: int, step: Any, prog: StepProgress, err: BaseException | None
    ) -> bool:
        """Record the fault (None: the daemon's restart), say where the step stands, and
        wait for the operator. True if the step was skipped, False to try it again (a
        latched fault cleared first); abort raises."""
        rec = self.recorder
        hooks = step_type(step.type)
        options: tuple[str, ...] = ("retry", "skip", "abort")
        if err is None:
            what = f"step {index} ({step.type}) was interrupted by the daemon's restart"
            detail: dict[str, Any] = {"step_index": index, "after": "daemon restart"}
        else:
            what = f"step {index} ({step.type}): {err}"
            detail = {"step_index": index, "error": type(err).__name__}
            if isinstance(err, InstrumentError):
                detail["instrument"] = err.instrument
                detail["fault"] = getattr(err, "fault", None)
            if hooks.interrupted is not None:
                detail.update(hooks.interrupted(prog)[0])
            await rec.interruption(what, detail)
        text = what
        if isinstance(err, PreconditionError):
            if hooks.assess is not None:
                options = ("retry", "abort")  # nothing was done: skipping leaves nothing
            text = f"{what}. retry once done, abort = end the run" if len(options) == 2 else what
        elif hooks.assess is not None:
            try:
                found = await self._abortable(hooks.assess(self._context(index), step, prog))
            except (InstrumentError, OSError) as exc:
                text = f"{what}; its instrument cannot be read ({exc}): check it by hand"
            else:
                text = f"{what}{': ' if err is None else '; '}{found.text}"
                options = found.options
                detail = {**detail, "case": found.case, **found.facts}
                await rec.interruption(found.text, {"step_index": index, "case": found.case,
                                                    **found.facts})  # fmt: skip
        while True:
            action = await self._recovery(index, text, detail, options, err)
            if action == "skip":
                await self._skip(index, step, prog, hooks)
                return True
            still = await clear_latch(self._step_handles(step, err))
            if still is None:
                return False
            text = (f"step {index} ({step.type}): {still}: fix the cause, then retry")
            await rec.interruption(text, {"step_index": index, "after": "retry"})

    async def _skip(
        self, index: int, step: Any, prog: StepProgress, hooks: StepType
    ) -> None:
        """Skip the step; its instrument released (what it holds afterwards recorded)."""
        rec = self.recorder
        if hooks.release is not None:
            try:
                held = await hooks.release(self._context(index), prog)
            except (InstrumentError, OSError) as exc:
                held = {"error": str(exc)}
            found = await survey(self.handles, self._bench)
            await rec.interruption(
                f"step {index} ({step.type}) skipped: its instrument released",
                {"step_index": index, "released": held, "labware": found},
            )  # fmt: skip
        phase: Literal["finished", "skipped"] = (
            "finished" if prog.done_by_instrument else "skipped")
        await rec.step_phase(step.type, phase, {"index": index, **prog.detail})

    async def _abortable(self, coro: Awaitable[_T]) -> _T:
        """``coro``'s result; an abort asked meanwhile cancels it and raises Aborted."""
        task = asyncio.ensure_future(coro)
        while True:
            asked = asyncio.ensure_future(self.control.changed())
            await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
            asked.cancel()
            if task.done():
                return task.result()
            if self.control.abort_requested:
                await cancel_and_wait(task)
                raise Aborted("aborted by operator")

    def _step_handles(self, step: Any, err: BaseException | None) -> list[InstrumentHandle]:
        """The instruments a retry of ``step`` clears latches on: its own and the one that
        faulted (a fault met before or after a daemon restart alike)."""
        faulted = err.instrument if isinstance(err, InstrumentError) else None
        roles = step_type(step.type).roles
        return [h for role, h in self.handles.items()
                if role in roles or h.config.id == faulted]  # fmt: skip

    def _step_names(self) -> list[str]:
        return [s.type for s in self.setup.protocol.steps]

    def _context(self, index: int) -> StepContext:
        return StepContext(
            config=self.config, recorder=self.recorder, journal=self.journal, clock=self.clock,
            handles=self.handles, plate_id=self.setup.plate_id, plate_layout=self.setup.layout,
            index=index, notify=self.notify, bench=self._bench,
            steps_before=tuple(self.setup.protocol.steps[: index - 1]),
            operator=self.setup.virtual_operator.perform if self.setup.virtual_operator
            else None,
        )  # fmt: skip

    async def _execute(
        self, ctx: StepContext, step: Any, prog: StepProgress, hooks: StepType
    ) -> Outcome:
        assert hooks.run is not None
        task = asyncio.create_task(hooks.run(ctx, step, prog),
                                   name=f"step:{self.run_id}:{ctx.index}")  # fmt: skip
        asked: asyncio.Future[None] | None = None
        try:
            while True:
                asked = asyncio.ensure_future(self.control.changed())
                await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
                asked.cancel()
                if task.done():
                    return _outcome(task)
                if self.control.abort_requested:
                    await cancel_and_wait(task)
                    raise Aborted("aborted by operator")
                if self.control.pause_requested == "now":
                    if hooks.pausable_midway:
                        self.control.pause_requested = None
                        await cancel_and_wait(task)
                        return Outcome("paused")
                    self.control.pause_requested = "after-step"
        finally:
            if asked is not None:
                asked.cancel()
            if not task.done():
                await cancel_and_wait(task)

    # ------------------------------------------------------------------- instruments safe

    async def _interrupted(self) -> None:
        """The daemon is stopping: the counter and harvester stop, the incubator keeps the
        plate at temperature; the run waits, interrupted, for a resume after the restart."""
        rec = self.recorder
        await make_safe(self._step_names(), self.handles, "shutdown")
        if rec.stopped:
            return
        if self._fresh and rec.counts.get("start", 0) == 0:
            # Never started (queued): nothing to resume; the run ends here, for good.
            await rec.stop("interrupted", "the daemon stopped before the run started",
                           "aborted")  # fmt: skip
            return
        index = rec.step_index
        if rec.prompt is not None:
            await rec.prompt_event(rec.prompt, "withdrawn")
        detail: dict[str, Any] = {"step_index": index, "step": rec.step, "previous": rec.state}
        if index is not None:
            detail["last_completed_step"] = index - 1 if index > 1 else None
        prog = self._progress.get(index) if index is not None else None
        told = step_type(rec.step).interrupted if rec.step in self._step_names() else None
        if prog is not None and told is not None:
            detail.update(told(prog)[0])
        await rec.interruption("daemon shutting down", detail)
        if rec.progress is not None:
            rec.progress = rec.progress.model_copy(update={"eta_s": None})
        await rec.set_state("interrupted", message=resume_hint(self.run_id, index, rec.step))


def resume_hint(run: str, index: int | None, step: str | None) -> str:
    """The message of an interrupted run's state: where it stopped, what to do."""
    at = "" if index is None else f" at step {index} ({step})"
    return (
        f"the daemon stopped{at}; `assay run resume {run}` goes on, "
        f"`assay run abort {run}` ends it"
    )


def _outcome(task: asyncio.Task[None]) -> Outcome:
    exc = task.exception()
    if exc is None:
        return Outcome("done")
    if isinstance(exc, InterlockError):
        return Outcome("interlock", exc)
    if isinstance(exc, InstrumentError | AnalysisError):
        return Outcome("fault", exc)
    raise exc

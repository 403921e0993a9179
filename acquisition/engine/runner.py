"""One protocol run: its steps in order, as a journaled state machine (:mod:`.states`).

The loop leases every instrument the protocol needs (``queued`` until they are free, so two
runs asking for one counter are serialised while runs on different instruments proceed at
once), then runs each step as a task while listening to :class:`~.control.RunControl`:

- pause ``now`` cancels a step that may be paused mid-way (:data:`PAUSABLE_MIDWAY`) and
  keeps its progress; otherwise, and for ``after-step``, the run pauses at the next step
  boundary. ``resume`` goes on from the step's progress;
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from acquisition.config import LabConfig
from acquisition.engine.bench_steps import run_count, run_harvest, run_incubate
from acquisition.engine.context import StepContext, StepProgress
from acquisition.engine.control import RunControl
from acquisition.engine.leasing import AbortedWhileQueued, lease_all
from acquisition.engine.operator import VirtualOperator
from acquisition.engine.recovery import ResumePoint, decide
from acquisition.engine.safety import cancel_and_wait, make_safe, uninterruptible
from acquisition.engine.simple_steps import run_analyze, run_wait
from acquisition.errors import AnalysisError, InterlockError
from acquisition.instruments import InstrumentHandle, InstrumentManager
from acquisition.journal import Journal
from acquisition.payloads import ExitStatus, PromptState, RunStateName
from acquisition.protocols import PromptStep, Protocol
from acquisition.run_recorder import RunRecorder, utcnow
from drivers.clock import Clock
from drivers.counter import CounterDriver
from drivers.errors import InstrumentError
from drivers.harvester import HarvesterDriver

__all__ = [
    "INSTRUMENT_KIND",
    "PAUSABLE_MIDWAY",
    "ProtocolRun",
    "RunSetup",
    "resume_hint",
]

log = structlog.get_logger("acquisition.engine")

PAUSABLE_MIDWAY: dict[str, bool] = {
    "incubate": True,  # the timer stops, the temperature is held
    "harvest": False,  # a plate half filtered cannot wait
    "count": True,  # the counter stops; the wells not counted yet are counted on resume
    "prompt": True,
    "wait": True,
    "analyze": False,
}
INSTRUMENT_KIND = {"incubate": "incubator", "harvest": "harvester", "count": "counter"}
_EXECUTORS: dict[str, Callable[[StepContext, Any, StepProgress], Coroutine[Any, Any, None]]] = {
    "incubate": run_incubate,
    "harvest": run_harvest,
    "count": run_count,
    "wait": run_wait,
    "analyze": run_analyze,
}


class _Aborted(Exception):
    pass


@dataclass(frozen=True)
class RunSetup:
    """Everything a run is started with; its start document records all of it."""

    protocol: Protocol
    protocol_definition: dict[str, Any]  # the file's data, as validated
    protocol_source: str
    plate_id: str
    plate_map: dict[str, Any] | None
    plate_map_source: str | None
    layout: Any  # PlateLayout | None
    instruments: dict[str, str]  # kind -> id
    virtual_operator: VirtualOperator | None = None


@dataclass(frozen=True)
class _Outcome:
    kind: str  # done | paused | fault | interlock
    error: BaseException | None = None


class ProtocolRun:
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
        recorder.steps_total = len(setup.protocol.steps)

    @property
    def run_id(self) -> str:
        return self.recorder.run

    @property
    def current_step_pausable(self) -> bool:
        index = self.recorder.step_index
        if index is None:
            return True
        return PAUSABLE_MIDWAY[self.setup.protocol.steps[index - 1].type]

    # -------------------------------------------------------------------- the whole run

    async def run(self) -> None:
        rec = self.recorder
        async with contextlib.AsyncExitStack() as leases:
            try:
                await self._lease_all(leases)
                if self._resume is not None:  # decided now, when the step would go on
                    point, scale = self._resume
                    self._decision = decide(self.setup.protocol, point, utcnow(), scale)
                if self._fresh:
                    await self._start_document()
                await self._steps()
                n = len(self.setup.protocol.steps)
                done = "the one step done" if n == 1 else f"all {n} steps done"
                await uninterruptible(self._end("success", done, "completed"))
            except _Aborted as exc:
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
        await make_safe(self.handles, aborting=exit_status != "success")
        if not rec.stopped:
            await rec.stop(exit_status, reason, final)

    async def _lease_all(self, stack: contextlib.AsyncExitStack) -> None:
        """Hold every instrument of the protocol; ``queued`` while one is busy or offline."""
        needed = {INSTRUMENT_KIND[s.type]: self.setup.instruments[INSTRUMENT_KIND[s.type]]
                  for s in self.setup.protocol.steps if s.type in INSTRUMENT_KIND}  # fmt: skip
        try:
            self.handles = await lease_all(
                self.instruments, self.recorder, self.control, needed, stack
            )
        except AbortedWhileQueued as exc:
            raise _Aborted(str(exc)) from None

    async def _start_document(self) -> None:
        s = self.setup
        await self.recorder.start(
            protocol={"name": s.protocol.name, "source": s.protocol_source,
                      "definition": s.protocol_definition},
            plate={"plate_id": s.plate_id, "format": 96, "source": s.plate_map_source,
                   "map": s.plate_map},
            instruments={
                h.config.id: {"kind": h.config.kind, "address": h.config.address,
                              "identity": h.identity}
                for h in self.handles.values()
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
            raise _Aborted("aborted by operator")
        if self.control.pause_requested is not None:
            await self._paused("paused by operator")

    # ------------------------------------------------------------------------ one step

    async def _step(self, index: int) -> None:
        step = self.setup.protocol.steps[index - 1]
        prog = self._progress.setdefault(index, StepProgress())
        rec = self.recorder
        rec.step_index = index
        if self._decision is not None:
            text, self._decision = self._decision, None
            if await self._recovery(index, text, {"after": "daemon restart"}) == "skip":
                await rec.step_phase(step.type, "skipped", {"index": index})
                return
        while True:
            if self.control.pause_requested is not None:  # asked before a fault or a retry
                await self._paused("paused by operator")
            phase: Literal["started", "resumed"] = "resumed" if prog.started else "started"
            prog.started = True
            rec.progress, rec.latest = None, None
            await rec.set_state("running", step=step.type, message=None)
            await rec.step_phase(step.type, phase, {"index": index})
            if isinstance(step, PromptStep):
                outcome = await self._prompt(index, step)
            else:
                outcome = await self._execute(self._context(index), step, prog)
            if outcome.kind == "done":
                await rec.step_phase(step.type, "finished", {"index": index, **prog.detail})
                return
            if outcome.kind == "interlock":
                assert isinstance(outcome.error, InterlockError)
                if outcome.error.action == "abort":
                    raise _Aborted(str(outcome.error))
                await rec.step_phase(step.type, "paused", {"index": index})
                await self._paused(str(outcome.error))
                continue
            if outcome.kind == "paused":
                await rec.step_phase(step.type, "paused", {"index": index})
                await self._paused(str(outcome.error) if outcome.error else "paused by operator")
                continue
            # an instrument fault, or an analysis that cannot be done
            err = outcome.error
            what = f"step {index} ({step.type}): {err}"
            detail: dict[str, Any] = {"step_index": index, "error": type(err).__name__}
            if isinstance(err, InstrumentError):
                detail["instrument"] = err.instrument
                detail["fault"] = getattr(err, "fault", None)
            if step.type == "count":
                detail["wells_done"] = len(prog.counted)
            await rec.interruption(what, detail)
            if await self._recovery(index, what, detail) == "skip":
                await rec.step_phase(step.type, "skipped", {"index": index, **prog.detail})
                return

    def _context(self, index: int) -> StepContext:
        return StepContext(
            config=self.config, recorder=self.recorder, journal=self.journal, clock=self.clock,
            handles=self.handles, plate_id=self.setup.plate_id, plate_layout=self.setup.layout,
            index=index, notify=self.notify,
            harvested=any(s.type == "harvest" for s in self.setup.protocol.steps[: index - 1]),
        )  # fmt: skip

    async def _execute(self, ctx: StepContext, step: Any, prog: StepProgress) -> _Outcome:
        task = asyncio.create_task(_EXECUTORS[step.type](ctx, step, prog),
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
                    raise _Aborted("aborted by operator")
                if self.control.pause_requested == "now":
                    if PAUSABLE_MIDWAY[step.type]:
                        self.control.pause_requested = None
                        await cancel_and_wait(task)
                        return _Outcome("paused")
                    self.control.pause_requested = "after-step"
        finally:
            if asked is not None:
                asked.cancel()
            if not task.done():
                await cancel_and_wait(task)

    # ----------------------------------------------------------------- waiting for people

    async def _wait_control(self, timeout_s: float | None = None) -> bool:
        """Until something is asked (True) or ``timeout_s`` of run-clock time (False)."""
        asked = asyncio.ensure_future(self.control.changed())
        waits: set[asyncio.Future[None]] = {asked}
        if timeout_s is not None:
            waits.add(asyncio.ensure_future(self.clock.sleep(max(0.0, timeout_s))))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits:
                fut.cancel()
        return asked.done() and not asked.cancelled()

    async def _paused(self, message: str) -> None:
        self.control.pause_requested = None
        self.control.resume_requested = False
        await self.recorder.set_state("paused", message=message)
        log.info("run paused", reason=message)
        while True:
            await self._wait_control()
            if self.control.abort_requested:
                raise _Aborted("aborted while paused")
            if self.control.take_resume():
                log.info("run resumed")
                return

    async def _prompt(self, index: int, step: PromptStep) -> _Outcome:
        rec = self.recorder
        prompt = PromptState(id=str(index), kind="operator", text=step.text,
                             options=["done", "abort"], action=step.action)  # fmt: skip
        self.control.answer = None
        rec.prompt = prompt
        await rec.prompt_event(prompt, "asked")
        await rec.set_state("awaiting-operator", message=step.text)
        helper = self._virtual_operator(prompt)
        deadline = None if step.timeout_s is None else self.clock.monotonic() + step.timeout_s
        try:
            while True:
                left = None if deadline is None else deadline - self.clock.monotonic()
                if left is not None and left <= 0:
                    await rec.prompt_event(prompt, "timed-out")
                    return _Outcome("paused", TimeoutError(f"no answer to {step.text!r} "
                                                           f"within {step.timeout_s:g} s"))
                await self._wait_control(left)
                if self.control.abort_requested:
                    await rec.prompt_event(prompt, "withdrawn")
                    raise _Aborted(f"aborted at the prompt {step.text!r}")
                answer = self.control.take_answer(prompt.id)
                if answer is not None:
                    await rec.prompt_event(prompt, "answered", answer=answer.text, by=answer.by)
                    if answer.text == "abort":
                        raise _Aborted(f"aborted at the prompt {step.text!r}")
                    await rec.set_state("running", message=None)
                    return _Outcome("done")
                if self.control.pause_requested is not None:
                    await rec.prompt_event(prompt, "withdrawn")
                    return _Outcome("paused")
        finally:
            if helper is not None:
                await cancel_and_wait(helper)

    def _virtual_operator(self, prompt: PromptState) -> asyncio.Task[None] | None:
        operator = self.setup.virtual_operator
        if operator is None:
            return None

        async def act() -> None:
            try:
                done = await operator.perform(prompt.action) if prompt.action else "nothing to do"
            except Exception as exc:  # the bench refused: a person has to do it
                log.warning("virtual operator could not act", action=prompt.action, error=str(exc))
                if self.recorder.prompt is prompt:
                    await self.recorder.set_state(
                        "awaiting-operator",
                        message=f"{prompt.text} (the virtual operator could not: {exc}; "
                        "do it by hand, then answer)",
                    )
                return
            log.info("virtual operator answered", did=done)
            self.control.give_answer(prompt.id, "done", "virtual-operator")

        return asyncio.create_task(act(), name=f"virtual-operator:{self.run_id}")

    async def _recovery(self, index: int, text: str, detail: dict[str, Any]) -> str:
        """``awaiting-recovery`` until the operator says retry, skip or abort."""
        rec = self.recorder
        prompt = PromptState(id=f"recover-{index}", kind="recovery", text=text,
                             options=["retry", "skip", "abort"])  # fmt: skip
        self.control.recovery = None
        rec.prompt = prompt
        await rec.prompt_event(prompt, "asked")
        await rec.set_state("awaiting-recovery", message=text)
        log.warning("run awaiting recovery", reason=text)
        while True:
            await self._wait_control()
            action = "abort" if self.control.abort_requested else self.control.take_recovery()
            if action is None:
                continue
            await rec.prompt_event(prompt, "answered", answer=action, by="operator")
            if action == "abort":
                raise _Aborted(f"aborted at recovery: {text}")
            await rec.set_state("running", message=None)
            return action

    # ------------------------------------------------------------------- instruments safe

    async def _interrupted(self) -> None:
        """The daemon is stopping: the counter and harvester stop, the incubator keeps the
        plate at temperature; the run waits, interrupted, for a resume after the restart."""
        rec = self.recorder
        for handle in self.handles.values():
            if isinstance(handle.driver, CounterDriver | HarvesterDriver):
                with contextlib.suppress(InstrumentError, OSError):
                    await handle.driver.abort()
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
        if prog is not None and rec.step == "count":
            detail["wells_done"] = len(prog.counted)
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


def _outcome(task: asyncio.Task[None]) -> _Outcome:
    exc = task.exception()
    if exc is None:
        return _Outcome("done")
    if isinstance(exc, InterlockError):
        return _Outcome("interlock", exc)
    if isinstance(exc, InstrumentError | AnalysisError):
        return _Outcome("fault", exc)
    raise exc

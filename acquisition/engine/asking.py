"""Waiting for people: pauses, operator prompts and recovery prompts of a protocol run, and
the virtual operator's part in them on a simulated bench.

:class:`Asking` is the part of :class:`~.runner.ProtocolRun` that waits on
:class:`~.control.RunControl`; it is a mixin so that the run loop reads in one place.

- A prompt is asked (``awaiting-operator``) until it is answered, times out (the run
  pauses) or the run is aborted. The run's first prompt names labware an earlier run left
  in an instrument (the operator clears it with the first step).
- A recovery prompt (``awaiting-recovery``) offers only the choices that make sense for
  where the step stands. A precondition the virtual operator can fix (empty the waste
  trap, put the plate in the harvester) is fixed by it and answered ``retry``; the prompt's
  record says what it did.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from acquisition.engine.control import RunControl
from acquisition.engine.safety import cancel_and_wait
from acquisition.errors import PreconditionError
from acquisition.payloads import PromptState
from acquisition.run_recorder import RunRecorder
from acquisition.steps.labware import BenchView, strays, survey
from drivers.clock import Clock

if TYPE_CHECKING:
    from acquisition.engine.setup import RunSetup
    from acquisition.instruments import InstrumentHandle

__all__ = ["Aborted", "Asking", "Outcome"]

log = structlog.get_logger("acquisition.engine")


class Aborted(Exception):
    """The run ends as aborted (by the operator, an interlock or a prompt's answer)."""


@dataclass(frozen=True)
class Outcome:
    kind: str  # done | paused | fault | interlock
    error: BaseException | None = None


class Asking:
    """Pauses and prompts of one run (see the module docstring)."""

    control: RunControl
    recorder: RunRecorder
    clock: Clock
    setup: RunSetup
    handles: dict[str, InstrumentHandle]
    _bench: BenchView | None
    _fresh: bool
    _first_prompt_asked: bool = False

    @property
    def run_id(self) -> str:
        return self.recorder.run

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
                raise Aborted("aborted while paused")
            if self.control.take_resume():
                log.info("run resumed")
                return

    async def _prompt_text(self, step: Any) -> str:
        """The prompt's text; the run's first prompt also names labware left in an
        instrument by an earlier run, since the operator is at the bench now."""
        if not self._fresh or self._first_prompt_asked:
            return str(step.text)
        self._first_prompt_asked = True
        found = strays(await survey(self.handles, self._bench), self.setup.plate_id)
        if not found:
            return str(step.text)
        return f"{step.text} (first take out what an earlier run left: {'; '.join(found)})"

    async def _prompt(self, index: int, step: Any) -> Outcome:
        """Ask a step without an executor (``text``, ``action``, ``timeout_s``)."""
        rec = self.recorder
        prompt = PromptState(id=str(index), kind="operator", text=await self._prompt_text(step),
                             options=["done", "abort"], action=step.action)  # fmt: skip
        self.control.answer = None
        rec.prompt = prompt
        await rec.prompt_event(prompt, "asked")
        await rec.set_state("awaiting-operator", message=prompt.text)
        helper = self._virtual_operator(prompt, prompt.action)
        deadline = None if step.timeout_s is None else self.clock.monotonic() + step.timeout_s
        try:
            while True:
                left = None if deadline is None else deadline - self.clock.monotonic()
                if left is not None and left <= 0:
                    await rec.prompt_event(prompt, "timed-out")
                    return Outcome("paused", TimeoutError(f"no answer to {step.text!r} "
                                                          f"within {step.timeout_s:g} s"))
                await self._wait_control(left)
                if self.control.abort_requested:
                    await rec.prompt_event(prompt, "withdrawn")
                    raise Aborted(f"aborted at the prompt {step.text!r}")
                answer = self.control.take_answer(prompt.id)
                if answer is not None:
                    await rec.prompt_event(prompt, "answered", answer=answer.text,
                                           by=answer.by, note=answer.note)  # fmt: skip
                    if answer.text == "abort":
                        raise Aborted(f"aborted at the prompt {step.text!r}")
                    await rec.set_state("running", message=None)
                    return Outcome("done")
                if self.control.pause_requested is not None:
                    await rec.prompt_event(prompt, "withdrawn")
                    return Outcome("paused")
        finally:
            if helper is not None:
                await cancel_and_wait(helper)

    def _virtual_operator(
        self, prompt: PromptState, action: str | None, answer: str = "done"
    ) -> asyncio.Task[None] | None:
        """On a simulated bench: do ``action`` and answer the prompt with ``answer``."""
        operator = self.setup.virtual_operator
        if operator is None or (action is None and prompt.kind == "recovery"):
            return None

        async def act() -> None:
            try:
                done = await operator.perform(action) if action else "nothing to do"
            except Exception as exc:  # the bench refused: a person has to do it
                log.warning("virtual operator could not act", action=action, error=str(exc))
                if self.recorder.prompt is prompt:
                    await self.recorder.set_state(
                        self.recorder.state,
                        message=f"{prompt.text} (the virtual operator could not: {exc}; "
                        "do it by hand, then answer)",
                    )
                return
            log.info("virtual operator answered", did=done)
            if prompt.kind == "recovery":
                self.control.recover("retry", by="virtual-operator", note=done)
            else:
                self.control.give_answer(prompt.id, answer, "virtual-operator", note=done)

        return asyncio.create_task(act(), name=f"virtual-operator:{self.run_id}")

    async def _recovery(
        self, index: int, text: str, detail: dict[str, Any],
        options: tuple[str, ...] = ("retry", "skip", "abort"),
        err: BaseException | None = None,
    ) -> str:  # fmt: skip
        """``awaiting-recovery`` until the operator gives one of ``options``."""
        rec = self.recorder
        # One id per question asked (the next document's number): a terminal that showed
        # one recovery prompt of a step still shows the step's next.
        prompt = PromptState(id=f"recover-{index}-{rec.last_seq + 1}", kind="recovery",
                             text=text, options=list(options))  # fmt: skip
        self.control.recovery = None
        rec.prompt = prompt
        await rec.prompt_event(prompt, "asked")
        await rec.set_state("awaiting-recovery", message=text)
        log.warning("run awaiting recovery", reason=text)
        action = err.action if isinstance(err, PreconditionError) else None
        helper = self._virtual_operator(prompt, action) if action else None
        try:
            while True:
                await self._wait_control()
                if self.control.abort_requested:
                    choice, by, note = "abort", "operator", None
                else:
                    taken = self.control.take_recovery()
                    if taken is None or taken.action not in options:
                        continue
                    choice, by, note = taken.action, taken.by, taken.note
                await rec.prompt_event(prompt, "answered", answer=choice, by=by, note=note)
                if choice == "abort":
                    raise Aborted(f"aborted at recovery: {text}")
                await rec.set_state("running", message=None)
                return choice
        finally:
            if helper is not None:
                await cancel_and_wait(helper)

"""What people ask of a run while it runs, delivered to the engine's loop.

Commands (``run.pause``, ``run.resume``, ``run.abort``, ``run.answer``, ``run.recover``)
arrive on the daemon's command task; the run's loop waits on :meth:`RunControl.changed`
and reads what was asked. Nothing here touches an instrument or the journal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

__all__ = ["Answer", "Recovery", "RunControl"]

RecoveryAction = Literal["retry", "skip", "abort"]


@dataclass(frozen=True)
class Answer:
    prompt_id: str
    text: str
    by: str
    note: str | None = None  # what the one who answered did


@dataclass(frozen=True)
class Recovery:
    action: RecoveryAction
    by: str = "operator"
    note: str | None = None


class RunControl:
    """Requests pending for one run."""

    def __init__(self) -> None:
        self.abort_requested = False
        self.pause_requested: Literal["now", "after-step"] | None = None
        self.resume_requested = False
        self.answer: Answer | None = None
        self.recovery: Recovery | None = None
        self._event = asyncio.Event()

    def _wake(self) -> None:
        self._event.set()

    async def changed(self) -> None:
        """Wait until something is asked (returns at once if something is pending)."""
        await self._event.wait()
        self._event.clear()

    def abort(self) -> None:
        self.abort_requested = True
        self._wake()

    def pause(self, when: Literal["now", "after-step"]) -> None:
        if self.pause_requested != "now":  # "now" wins over "after-step"
            self.pause_requested = when
        self.resume_requested = False
        self._wake()

    def resume(self) -> None:
        self.pause_requested = None
        self.resume_requested = True
        self._wake()

    def give_answer(
        self, prompt_id: str, text: str, by: str, note: str | None = None
    ) -> None:
        self.answer = Answer(prompt_id, text, by, note)
        self._wake()

    def recover(
        self, action: RecoveryAction, by: str = "operator", note: str | None = None
    ) -> None:
        self.recovery = Recovery(action, by, note)
        self._wake()

    def take_answer(self, prompt_id: str) -> Answer | None:
        answer, self.answer = self.answer, None
        return answer if answer is not None and answer.prompt_id == prompt_id else None

    def take_recovery(self) -> Recovery | None:
        action, self.recovery = self.recovery, None
        return action

    def take_resume(self) -> bool:
        resumed, self.resume_requested = self.resume_requested, False
        return resumed

"""What a step type may add to the run loop beyond running: preconditions checked before
its started document, an assessment of where it stands after a fault or a restart (the
recovery prompt's text and choices), and what skip and abort leave its instrument in.

Only the harvest has them today (:mod:`.harvest`); a step type without an entry is run
as it is and offered retry / skip / abort after a fault.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from acquisition.engine.context import StepContext, StepProgress
from acquisition.engine.harvest import (
    Assessment,
    assess_harvest,
    prepare_harvest,
    release_harvester,
)

__all__ = ["STEP_HOOKS", "StepHooks"]

Prepare = Callable[[StepContext, Any, StepProgress], Awaitable[dict[str, Any]]]
Assess = Callable[[StepContext, Any, StepProgress], Awaitable[Assessment]]
Release = Callable[[StepContext, StepProgress], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class StepHooks:
    prepare: Prepare | None = None
    """Raises PreconditionError; returns facts for the started document."""
    assess: Assess | None = None
    """After a fault or a daemon restart: where the step stands, and the choices."""
    release: Release | None = None
    """On skip: leave the instrument free (what it holds afterwards is recorded); sets
    ``done_by_instrument`` if the instrument had done the step (recorded as finished)."""


STEP_HOOKS: dict[str, StepHooks] = {
    "harvest": StepHooks(prepare_harvest, assess_harvest, release_harvester),
}

"""The step-type registry: what the engine, the protocol loader and the terminal know of a
step type, declared once by the type's own module.

A step type is one module under :mod:`acquisition.steps` (or anywhere, a test's module
included) that defines its protocol model (a :class:`StepModel` with units, see
:mod:`acquisition.quantities`) and calls :func:`register_step_type` with a
:class:`StepType`. Nothing else names it: the run loop, the resume after a crash, the
plan, the checks at run start and the terminal read the entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from acquisition.instruments import InstrumentHandle
    from acquisition.payloads import DataDocument, Progress
    from acquisition.steps.context import StepContext, StepProgress

__all__ = [
    "Assessment",
    "PlanLine",
    "SafeHow",
    "StepModel",
    "StepType",
    "register_step_type",
    "registry_version",
    "restore_step_types",
    "step_type",
    "step_types",
]

SafeHow = Literal["end", "abort", "shutdown"]
"""Why instruments are made safe: the run ended well, it was aborted (or a step skipped
past), or the daemon is stopping (the run will be resumed: keep what may be kept)."""


class StepModel(BaseModel):
    """Base of every step's protocol model: strict, frozen, ``type`` its registry name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


@dataclass(frozen=True)
class PlanLine:
    """One step in ``assay protocol check``'s plan."""

    settings: str
    duration_s: float  # expected; 0 for operator time and quick computations
    note: str = ""
    expected: str | None = None  # shown instead of "~<duration>" ("operator time")
    operator_time: bool = False  # the plan's total adds "plus operator time" for it


@dataclass(frozen=True)
class Assessment:
    """What the operator is told after an interrupted step, and what they may answer."""

    text: str
    options: tuple[str, ...]
    case: str
    facts: dict[str, Any]


Executor = Callable[["StepContext", Any, "StepProgress"], Coroutine[Any, Any, None]]
Prepare = Callable[["StepContext", Any, "StepProgress"], Awaitable[dict[str, Any]]]
Assess = Callable[["StepContext", Any, "StepProgress"], Awaitable[Assessment]]
Release = Callable[["StepContext", "StepProgress"], Awaitable[dict[str, Any]]]
MakeSafe = Callable[[Mapping[str, "InstrumentHandle"], SafeHow], Awaitable[None]]


@dataclass(frozen=True)
class StepType:
    """Everything the house needs to know of one step type (see the module docstring)."""

    name: str
    model: type[StepModel]
    plan: Callable[[Any], PlanLine]
    """The plan's settings and duration estimate (touching no instrument)."""
    run: Executor | None = None
    """Does the step; None: an operator prompt, asked by the run loop (``text``, ``action``
    and ``timeout_s`` of the model)."""
    roles: tuple[str, ...] = ()
    """The instrument roles it drives ("counter": whatever kind plays it, acquisition.kinds
    ``plays``), leased for the whole run; ``ctx.handle(role)`` in the executor."""
    pausable_midway: bool = True
    """A pause ``now`` may cancel it and go on from its progress (else: after the step)."""
    check: Callable[[Any, Sequence[StepModel]], tuple[str, str] | None] | None = None
    """What one step cannot know alone, given the steps before it: (location below the
    step, what was expected) or None."""
    check_setup: Callable[[Any, Any, str | None], tuple[str, str] | None] | None = None
    """At run start, against the run's plate layout (None if it has none) and where that
    came from: (location below the step, what was expected) or None."""
    needs_plate_map: str | None = None
    """Why a run of it needs a plate map ("analyses the count"), or None."""
    handles_plate: bool = True
    """It works on the run's plate (or its mat): a run of steps none of which does (perfuse,
    record) has no plate id."""
    prepare: Prepare | None = None
    """Preconditions read from the instruments before its started document (raises
    PreconditionError); returns the facts that document records."""
    assess: Assess | None = None
    """After a fault or a daemon restart: where the step stands and the choices (a step
    with an assessment is never simply redone after a restart)."""
    release: Release | None = None
    """On skip: leave the instrument free; what it holds afterwards is recorded."""
    make_safe: MakeSafe | None = None
    """Leave its instruments (by kind) safe when the run ends, aborts or the daemon stops."""
    rebuild: Callable[[StepProgress, DataDocument], None] | None = None
    """Fold one of the step's data documents into its progress (the resume after a crash)."""
    resume: Callable[[Any, StepProgress, datetime, float], str | None] | None = None
    """After a restart, started but not finished: None to go on from the progress, else the
    question put to the operator (retry / skip / abort). ``time_scale``: simulated seconds
    per real one. Without it (and without ``assess``) the step is simply done again."""
    interrupted: Callable[[StepProgress], tuple[dict[str, Any], Progress | None]] | None = None
    """What an interruption records of its progress, and the progress to show meanwhile."""
    timed_s: Callable[[Any], float] | None = None
    """The step's timer (an incubation's duration): the terminal logs its milestones."""


_REGISTRY: dict[str, StepType] = {}
_BUILTIN = "acquisition.steps.builtin"
_CHANGES: list[str] = []  # names in registration order: its length is the version


def register_step_type(entry: StepType) -> StepType:
    """Add ``entry`` (a name registered again is replaced: a module reloaded)."""
    if entry.model.model_fields["type"].annotation is str:
        raise TypeError(f"step type {entry.name}: its model's type must be Literal[{entry.name!r}]")
    _REGISTRY[entry.name] = entry
    _CHANGES.append(entry.name)
    return entry


def _loaded() -> dict[str, StepType]:
    """The registry, the shipped step types first in their order, then the others in the
    order they were registered."""
    shipped: tuple[str, ...] = importlib.import_module(_BUILTIN).SHIPPED  # they register
    if tuple(_REGISTRY)[: len(shipped)] != shipped and set(shipped) <= set(_REGISTRY):
        rank = {name: i for i, name in enumerate(shipped)}
        order = sorted(_REGISTRY, key=lambda n: (rank.get(n, len(rank)), _CHANGES.index(n)))
        _CHANGES.append("")  # the order of the union (and its messages) changed
        entries = {name: _REGISTRY[name] for name in order}
        _REGISTRY.clear()
        _REGISTRY.update(entries)
    return _REGISTRY


def step_types() -> Mapping[str, StepType]:
    """Every registered step type, by name (the shipped ones first)."""
    return _loaded()


def step_type(name: str) -> StepType:
    """KeyError for a name nobody registered."""
    return _loaded()[name]


def restore_step_types(saved: Mapping[str, StepType]) -> None:
    """Put the registry back as ``saved`` (``dict(step_types())`` taken before): a test
    that registered a type of its own leaves the others as it found them."""
    if dict(_REGISTRY) != dict(saved):
        _REGISTRY.clear()
        _REGISTRY.update(saved)
        _CHANGES.append("")  # the protocol model is rebuilt


def registry_version() -> int:
    """Grows with each registration (the protocol model is rebuilt when it changed)."""
    _loaded()
    return len(_CHANGES)

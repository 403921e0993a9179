"""Run states and the transitions between them (the engine's state machine, as data).

::

    queued ──> running <──> paused
                 │  ^ \\───> awaiting-operator ──> running | paused
                 │  └────── awaiting-recovery  (retry -> running, skip -> running)
                 v
    completed | aborted | failed | interrupted

Every state but ``completed``/``aborted``/``failed`` may go to ``aborted`` (the operator) or
``interrupted`` (the daemon stopped). ``interrupted`` is where a run waits after a daemon
restart: ``run.resume`` takes it back to ``running`` (or ``awaiting-recovery`` when a step
must not be redone without the operator), ``run.abort`` ends it.
"""

from __future__ import annotations

from typing import Final, get_args

from acquisition.errors import CommandError
from acquisition.payloads import TERMINAL_STATES, RunStateName

__all__ = ["FINAL", "OPEN", "TRANSITIONS", "check_transition", "refuse"]

STATES: Final = frozenset(get_args(RunStateName))
# ``interrupted`` ends the run's task (TERMINAL_STATES: a watch stops there) but not the run:
# it resumes from there, unless a stop document ended it (a run of an earlier version).
FINAL: Final = TERMINAL_STATES - {"interrupted"}
OPEN: Final = STATES - TERMINAL_STATES

TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    # waiting for its instruments (the message changes as they do); a resumed run may need
    # the operator's decision before its first step goes on
    "queued": frozenset(
        {"queued", "running", "awaiting-recovery", "aborted", "failed", "interrupted"}
    ),
    "running": STATES - {"queued"},  # running -> running: progress
    "paused": frozenset(
        {"running", "paused", "awaiting-recovery", "aborted", "interrupted", "failed"}
    ),
    "awaiting-operator": frozenset(
        {"running", "awaiting-operator", "paused", "aborted", "interrupted", "failed"}
    ),
    "awaiting-recovery": frozenset({"running", "aborted", "interrupted", "failed"}),
    # failed: a resume that crashed (a bug) ends the run, never leaves it to be resumed again
    "interrupted": frozenset({"running", "queued", "awaiting-recovery", "aborted", "failed"}),
    "completed": frozenset(),
    "aborted": frozenset(),
    "failed": frozenset(),
}


def check_transition(run: str, current: str, new: str) -> None:
    """AssertionError for a transition the engine must never make (a bug, not user input).
    :class:`~acquisition.run_recorder.RunRecorder` checks every state it writes."""
    if new not in TRANSITIONS.get(current, frozenset()):
        raise AssertionError(f"run {run}: no transition {current} -> {new}")


def refuse(run: str, state: str, verb: str) -> CommandError:
    """The conflict error for a command the run's state does not allow."""
    return CommandError("conflict", f"run '{run}' is {state}: cannot {verb} it")

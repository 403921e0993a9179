"""Reopening a link with jittered exponential backoff, on the injected clock.

Shared by every link (VISA, serial): try, wait the next backoff delay, try again, until the
deadline would pass (then :class:`~drivers.errors.LinkError`) or the caller stops wanting the
link (the attempt's own error is raised as it is).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from drivers.backoff import Backoff
from drivers.clock import Clock
from drivers.errors import LinkError

__all__ = ["reopen_with_backoff"]


async def reopen_with_backoff(
    attempt: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff,
    clock: Clock,
    timeout_s: float,
    wanted: Callable[[], bool],
    instrument: str | None,
) -> None:
    """Call ``attempt`` until it succeeds; ``LinkError`` once ``timeout_s`` would pass."""
    deadline = clock.monotonic() + timeout_s
    for delay in backoff.delays():
        try:
            await attempt()
            return
        except LinkError as exc:
            if not wanted():
                raise
            if clock.monotonic() + delay > deadline:
                raise LinkError(
                    f"no link after {timeout_s:g} s: {exc}", instrument=instrument
                ) from exc
        await clock.sleep(delay)

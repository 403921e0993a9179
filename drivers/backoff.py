"""Jittered exponential backoff, as a pure calculation.

The caller owns the waiting (through its injected :class:`~drivers.clock.Clock`);
:class:`Backoff` only says how long attempt ``n`` should wait, and :class:`ReconnectBackoff`
keeps the attempt counter of a link that can drop again once up, so both can be tested
without time and without sockets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff", "ReconnectBackoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays of ``base_s * factor**attempt`` capped at ``cap_s``, with "equal jitter".

    Equal jitter draws uniformly from ``[d/2, d]``: retries from many hosts spread out, yet a
    retry never fires immediately after a failure (full jitter can draw 0).
    """

    base_s: float = 0.05
    factor: float = 2.0
    cap_s: float = 2.0
    random: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.factor < 1 or self.cap_s < self.base_s:
            raise ValueError("need base_s > 0, factor >= 1 and cap_s >= base_s")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt`` (0-based)."""
        if attempt < 0:
            raise ValueError("attempt must be 0 or more")
        # Multiply step by step and stop once capped, so huge attempts cannot overflow.
        delay = self.base_s
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.cap_s:
                return self.cap_s
        return min(delay, self.cap_s)

    def delay(self, attempt: int) -> float:
        """Jittered delay before retry number ``attempt`` (0-based)."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + self.random() * ceiling / 2

    def delays(self) -> Iterator[float]:
        """Endless delays for attempts 0, 1, 2, ..."""
        attempt = 0
        while True:
            yield self.delay(attempt)
            attempt += 1


@dataclass
class ReconnectBackoff:
    """The delays of a link that, once up, may drop again (an MQTT connection).

    A connection counts as a recovery, and the delays start over from attempt 0, only if it
    stayed up at least ``stable_s``. One that drops sooner counts as a failed attempt: the
    next delay grows (jittered, capped by ``backoff``) instead of resetting, so a flapping
    link, or two clients that keep taking one client id from each other, back off instead
    of reconnecting every few milliseconds.
    """

    backoff: Backoff
    stable_s: float = 10.0
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.stable_s < 0:
            raise ValueError("need stable_s >= 0")

    def next_delay(self, lasted_s: float | None) -> float:
        """The wait before the next connect; ``lasted_s``: how long the connection just
        ended had been up, None if the attempt never got up."""
        if lasted_s is not None and lasted_s >= self.stable_s:
            self.attempt = 0
        delay = self.backoff.delay(self.attempt)
        self.attempt += 1
        return delay

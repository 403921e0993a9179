"""Jittered exponential backoff, as a pure calculation.

The caller owns the attempt counter and the waiting (through its injected
:class:`~drivers.clock.Clock`); this class only says how long attempt ``n`` should wait, so
it can be tested without time and without sockets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff"]


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

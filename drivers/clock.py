"""Time as a dependency.

Code that waits never calls :func:`asyncio.sleep` or :func:`time.monotonic` directly; it
asks a :class:`Clock`. Production uses :class:`MonotonicClock`; simulations use
:class:`ScaledClock` (simulated seconds pass ``scale`` times faster than real ones); tests use
:class:`VirtualClock`, whose time only moves when the test (or ``autojump``) moves it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "MonotonicClock", "ScaledClock", "VirtualClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time in seconds, and a way to wait on it."""

    def monotonic(self) -> float:
        """Seconds since an arbitrary origin; never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of this clock's time have passed."""
        ...


class MonotonicClock:
    """Real time."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time running ``scale`` times faster than real time."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"time scale must be positive, got {scale}")
        self.scale = scale
        self._origin = time.monotonic()

    def monotonic(self) -> float:
        return (time.monotonic() - self._origin) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.scale)


class VirtualClock:
    """Time that moves only when told to.

    ``await clock.sleep(s)`` parks the caller until :meth:`advance` moves time past its
    deadline. With ``autojump=True`` the clock jumps straight to the next deadline whenever
    every sleeper is parked, so a 90-minute wait completes in microseconds of real time.

    ``idle_s``: with real I/O in flight (a request to an instrument on a socket) every
    sleeper may be parked while a reply is on its way; jumping then would let simulated
    time run ahead of the conversation. With ``idle_s`` > 0 the clock only jumps after
    that much real time without any sleep or wake-up, which outlasts a loopback round trip.
    """

    def __init__(
        self, start: float = 0.0, *, autojump: bool = False, idle_s: float = 0.0
    ) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()
        self._autojump = autojump
        self._idle_s = idle_s
        self._last_activity = time.perf_counter()
        self._jump_handle: asyncio.Handle | None = None
        self.jumps = 0  # how many times autojump moved time (benchmarks report it)

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._ids), fut))
        self._last_activity = time.perf_counter()
        if self._autojump:
            self._schedule_jump(loop)
        await fut

    def hold(self) -> None:
        """Stop autojumping: time stands still until :meth:`release` (tests freeze a run
        at a chosen point this way, then act on it)."""
        self._autojump = False

    def release(self) -> None:
        """Autojump again (and jump now if everyone is waiting)."""
        self._autojump = True
        if self._sleepers:
            self._schedule_jump(asyncio.get_running_loop())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._now += seconds
        self._wake_due()

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def _schedule_jump(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._jump_handle is None:
            self._jump_handle = loop.call_soon(self._jump_after_idle, loop, 3)

    def _jump_after_idle(self, loop: asyncio.AbstractEventLoop, settle: int) -> None:
        # Let other ready callbacks run a few times before deciding everyone is parked.
        if settle > 0:
            self._jump_handle = loop.call_soon(self._jump_after_idle, loop, settle - 1)
            return
        self._jump_handle = None
        if not self._autojump:
            return
        quiet = time.perf_counter() - self._last_activity
        if quiet < self._idle_s:
            self._jump_handle = loop.call_later(self._idle_s - quiet, self._jump_after_idle,
                                                loop, 0)  # fmt: skip
            return
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        if self._sleepers:
            self._now = max(self._now, self._sleepers[0][0])
            self.jumps += 1
            self._last_activity = time.perf_counter()
            self._wake_due()
            if self._sleepers:
                self._schedule_jump(loop)

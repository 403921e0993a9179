"""An asyncio link to a line-oriented VISA instrument (pyvisa + pyvisa-py).

pyvisa is blocking and not safe for concurrent use of one resource, so every call runs in
the link's own single-thread executor (created lazily, shut down by :meth:`VisaLink.close`)
while holding the link's single :class:`asyncio.Lock`; the event loop never blocks, and a
stalled instrument holds only its own thread, never one of the default executor's shared
workers. The link owns framing (one command line out, one reply line back), translation
of foreign errors into :mod:`drivers.errors`, and recovery:

* Any failure (``VisaIOError``, raw ``OSError`` from pyvisa-py, an undecodable reply) closes
  the resource. The next call reopens it once; :meth:`VisaLink.reconnect` retries with
  jittered backoff.
* Why reopen rather than drain after a timeout: a reply that arrives after the drain window
  would still be read as the answer to the next query. A fresh socket cannot carry a stale
  reply, so reopening is the one recovery that is always correct. pyvisa-py 0.8.1 also
  reports a peer that closed the socket as a read timeout (it treats EOF as "no data yet"),
  so reopening after a timeout is what detects a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import pyvisa
import structlog
from pyvisa import constants
from pyvisa.errors import Error as VisaError
from pyvisa.errors import VisaIOError

from drivers.backoff import Backoff
from drivers.clock import Clock, MonotonicClock
from drivers.errors import (
    InstrumentReplyError,
    InstrumentTimeoutError,
    LinkError,
    ProtocolError,
)
from drivers.reconnect import reopen_with_backoff

__all__ = ["VisaLink", "resource_manager"]

L = TypeVar("L")
Decoder = Callable[[bytes], tuple[L | None, int]]

_log = structlog.get_logger()
_RM_LOCK = threading.Lock()  # guards the first creation of the process-wide ResourceManager


@functools.cache
def _cached_resource_manager() -> Any:
    return pyvisa.ResourceManager("@py")


def resource_manager() -> Any:
    """The process's one pyvisa ResourceManager (pyvisa-py backend), created lazily.

    Blocking (imports and probes the backend): call it from a worker thread.
    """
    with _RM_LOCK:
        return _cached_resource_manager()


class _IncompleteReplyError(ProtocolError):
    """The read ended without a full line (truncated reply)."""


class VisaLink(Generic[L]):
    """One instrument reached through a VISA resource string, e.g.
    ``TCPIP::127.0.0.1::5025::SOCKET``.

    ``decode`` is the instrument codec's line decoder (``decode(buf) -> (line, consumed)``);
    ``probe`` is a command whose reply proves the instrument answers (sent on every open, as
    pyvisa-py "opens" a socket to a closed port without complaint).
    """

    def __init__(
        self,
        resource: str,
        *,
        decode: Decoder[L],
        max_line: int,
        probe: bytes | None = None,
        timeout_s: float = 3.0,
        instrument_id: str = "instrument",
        clock: Clock | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.resource = resource
        self.instrument_id = instrument_id
        self._decode = decode
        self._max_line = max_line
        self._probe = probe
        self._timeout_ms = max(1, round(timeout_s * 1000))
        self._clock: Clock = clock or MonotonicClock()
        self._backoff = backoff or Backoff()
        self._lock = asyncio.Lock()
        self._res: Any | None = None
        self._wanted = False  # open() called and close() not yet
        self._stale = False  # a reply made no sense: reopen before the next exchange
        self._had_link = False  # a link once worked: later failures are "lost"
        self._lost = False  # "link lost" already logged, "reconnected" pending
        self._executor: ThreadPoolExecutor | None = None  # this link's one worker thread
        self.reconnects = 0
        """Successful re-opens after the first open (fault recovery, resync, reconnect)."""

    @property
    def connected(self) -> bool:
        return self._res is not None

    async def open(self) -> None:
        """Open the resource and check the instrument answers; raises :class:`LinkError`."""
        async with self._lock:
            self._wanted = True
            if self._res is None or self._stale:
                await self._drop_locked()
                await self._open_locked()

    async def close(self) -> None:
        """Close the resource; idempotent."""
        async with self._lock:
            self._wanted = False
            try:
                await self._drop_locked()
            finally:
                executor, self._executor = self._executor, None
                if executor is not None:
                    # No call is running (we hold the lock): the idle thread just exits.
                    executor.shutdown(wait=False)

    async def query(self, command: bytes) -> L:
        """Send one command line and return its decoded reply line."""
        (reply,) = await self.query_many((command,))
        return reply

    async def query_many(self, commands: Sequence[bytes]) -> list[L]:
        """Send several commands back to back (one lock hold, one thread hop) and return
        their replies in order. Reopens a resource closed by an earlier failure first."""
        async with self._lock:
            self._check_wanted()
            if self._stale:
                await self._drop_locked()
            if self._res is None:
                await self._open_locked()
            res = self._res
            try:
                replies: list[L] = await self._run(self._exchange_blocking, res, list(commands))
            except asyncio.CancelledError:
                self._stale = True  # the exchange may or may not have completed
                raise
            except (VisaError, OSError, ProtocolError) as exc:
                self._res = None  # the worker closed it
                raise self._translate(exc) from exc
            return replies

    def mark_stale(self) -> None:
        """Like :meth:`resync`, for synchronous callers: the next call reopens first."""
        self._stale = True

    async def resync(self) -> None:
        """Forget the current resource because a reply made no sense (e.g. a stale reply);
        the next call reopens a fresh session, so nothing late can be misread."""
        async with self._lock:
            await self._drop_locked()

    async def reconnect(self, timeout_s: float) -> None:
        """Close, then reopen with jittered exponential backoff for up to ``timeout_s``
        seconds of the link's clock; raises :class:`LinkError` when time runs out."""
        await self.resync()
        await reopen_with_backoff(
            self._reopen,
            backoff=self._backoff,
            clock=self._clock,
            timeout_s=timeout_s,
            wanted=lambda: self._wanted,
            instrument=self.instrument_id,
        )

    async def _reopen(self) -> None:
        async with self._lock:
            self._check_wanted()
            await self._open_locked()

    # ------------------------------------------------------------------ internals

    async def _drop_locked(self) -> None:
        res, self._res = self._res, None
        if res is not None:
            await self._run(_close_quietly, res)

    def _check_wanted(self) -> None:
        if not self._wanted:
            raise LinkError("link is not open", instrument=self.instrument_id)

    async def _open_locked(self) -> None:
        try:
            self._res = await self._run(self._open_blocking, on_orphan=_close_quietly)
        except (VisaError, OSError, ProtocolError) as exc:
            raise self._translate(exc) from exc
        except Exception as exc:  # pyvisa-py raises bare Exception("could not connect: ...")
            self._note_lost(exc)
            raise LinkError(
                f"cannot open {self.resource}: {exc}", instrument=self.instrument_id
            ) from exc
        if self._had_link:
            self.reconnects += 1
        self._had_link = True
        self._stale = False
        if self._lost:
            self._lost = False
            _log.info("reconnected", instrument=self.instrument_id, resource=self.resource)

    async def _run(
        self, fn: Callable[..., Any], *args: Any, on_orphan: Callable[[Any], None] | None = None
    ) -> Any:
        """Run a blocking call in the link's worker thread (context variables copied, as
        :func:`asyncio.to_thread` does).

        A thread cannot be interrupted: if the caller is cancelled, keep the lock until the
        call returns (the resource must not see two calls at once), hand a result nobody will
        receive to ``on_orphan`` (e.g. close a freshly opened resource), then re-raise.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"visa-{self.instrument_id}"
            )
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        task = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait((task,))
            if not task.cancelled() and task.exception() is None and on_orphan is not None:
                on_orphan(task.result())
            raise

    def _open_blocking(self) -> Any:
        res = resource_manager().open_resource(
            self.resource,
            read_termination="\n",
            write_termination="\n",
            timeout=self._timeout_ms,
            open_timeout=self._timeout_ms,
        )
        if self._probe is not None:
            self._exchange_blocking(res, [self._probe])  # closes res on failure
        return res

    def _exchange_blocking(self, res: Any, commands: list[bytes]) -> list[L]:
        try:
            replies: list[L] = []
            for command in commands:
                res.write_raw(command)
                data = res.read_bytes(self._max_line, break_on_termchar=True)
                replies.append(self._decode_whole(data))
            return replies
        except BaseException:
            _close_quietly(res)
            raise

    def _decode_whole(self, data: bytes) -> L:
        line, used = self._decode(data)
        if line is None or used != len(data):
            raise _IncompleteReplyError(f"incomplete reply: {data[:40]!r}")
        return line

    def _translate(self, exc: BaseException) -> LinkError | InstrumentReplyError:
        self._note_lost(exc)
        where = self.instrument_id
        if isinstance(exc, ProtocolError):
            return InstrumentReplyError(f"undecodable reply: {exc}", instrument=where)
        if isinstance(exc, VisaIOError) and exc.error_code == constants.StatusCode.error_timeout:
            return InstrumentTimeoutError(
                f"no reply within {self._timeout_ms} ms", instrument=where
            )
        return LinkError(f"{type(exc).__name__}: {exc}", instrument=where)

    def _note_lost(self, exc: BaseException) -> None:
        if self._had_link and not self._lost:
            self._lost = True
            error = f"{type(exc).__name__}: {exc}"
            _log.warning("link lost", instrument=self.instrument_id, error=error)


def _close_quietly(res: Any) -> None:
    """Close a resource that may already be broken; a failing close has nothing to report
    beyond the error that made us close it."""
    with contextlib.suppress(VisaError, OSError):
        res.close()

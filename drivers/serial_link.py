"""An asyncio link to a line-oriented serial instrument (pyserial + pyserial-asyncio-fast).

``url`` is what :func:`serial.serial_for_url` understands: a device path (``/dev/ttyUSB0``,
a pty such as ``/dev/pts/7`` or a symlink to one) or ``socket://host:port`` (a ser2net box,
a simulator on TCP). Framing is :func:`split_line`, a pure function fuzzed on its own: one
line per ``eol``, at most ``max_line`` bytes before the terminator.

The link owns one request at a time (one :class:`asyncio.Lock`), the receive buffer, and
recovery:

* Bytes that arrive while no request waits are stale (a late reply, line noise): they are
  dropped before every write.
* Noise *between* a request and its reply: a request may pass ``accept``, the driver's
  cheap check that a line is a frame of its protocol at all. A line that fails it while
  more input follows within a short quiet window is skipped (:attr:`SerialLink.skipped_lines`)
  and the link reads on, within the same ``timeout_s``; a failing line with nothing after
  it is returned, since it is most likely the reply itself, garbled, and the driver decides
  (it retries once, see :class:`drivers.base.SerialInstrument`).
* A reply timeout, a line over ``max_line`` or a cancelled request marks the link for
  *resync*: before its next write the link discards input until the line has been quiet
  for a short window (bounded by ``timeout_s``), so a reply that arrives late is never taken
  for the answer to the next command. A driver that finds a reply of the wrong shape calls
  :meth:`SerialLink.mark_resync` for the same effect.
* EOF or an OS error closes the link (:class:`~drivers.errors.LinkError`). The next request
  reopens it once (a pty simulator re-created at the same symlink is found again);
  :meth:`SerialLink.reconnect` retries with jittered backoff on the injected clock.

Reply timeouts are real time (they bound waiting on a real transport); every other wait
(backoff) uses the injected :class:`~drivers.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import serial
import serial_asyncio_fast
import structlog

from drivers.backoff import Backoff
from drivers.clock import Clock, MonotonicClock
from drivers.errors import FrameTooLongError, InstrumentTimeoutError, LinkError
from drivers.reconnect import reopen_with_backoff

__all__ = ["SerialLink", "skip_line", "split_line"]

_log = structlog.get_logger()
_CLOSE_WAIT_S = 2.0  # how long close() waits for the transport to report it is gone
_QUIET_S = 0.05  # resync: the line must stay silent this long before the next write


def split_line(
    buf: bytes | bytearray, *, eol: bytes = b"\r", max_line: int = 512
) -> tuple[bytes | None, int]:
    """Cut the first ``eol``-terminated line off ``buf``.

    Returns ``(line, consumed)`` with the terminator stripped from ``line``, or ``(None, 0)``
    when more bytes are needed. Raises :class:`FrameTooLongError` when ``max_line`` bytes
    pass without a terminator; the caller then drops :func:`skip_line` bytes and resyncs.
    """
    if not eol or max_line < 1:
        raise ValueError("need a non-empty eol and max_line >= 1")
    end = buf.find(eol, 0, max_line + len(eol))
    if end < 0:
        if len(buf) >= max_line + len(eol):
            raise FrameTooLongError(len(buf), max_line)
        return None, 0
    return bytes(buf[:end]), end + len(eol)


def skip_line(buf: bytes | bytearray, *, eol: bytes = b"\r") -> int:
    """How many bytes of ``buf`` to drop to resynchronise: through the next ``eol``, or all
    but a trailing partial terminator when there is none."""
    end = buf.find(eol)
    if end >= 0:
        return end + len(eol)
    keep = next((n for n in range(len(eol) - 1, 0, -1) if buf.endswith(eol[:n])), 0)
    return len(buf) - keep


class _Receiver(asyncio.Protocol):
    """Collects bytes into a bounded buffer and wakes the one waiting request."""

    def __init__(self, cap: int) -> None:
        self.buf = bytearray()
        self.cap = cap
        self.lost = False
        self.error: BaseException | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > self.cap:  # nobody reads: keep the tail only (bounded memory)
            del self.buf[: len(self.buf) - self.cap]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    async def wait(self) -> None:
        """Until new bytes arrive or the connection is lost."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class SerialLink:
    """One serial (or serial-over-TCP) instrument speaking ``eol``-terminated lines."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        eol: bytes = b"\r",
        max_line: int = 512,
        timeout_s: float = 2.0,
        instrument_id: str = "",
        clock: Clock | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        split_line(b"", eol=eol, max_line=max_line)  # validates eol and max_line
        self.url = url
        self.baudrate = baudrate
        self.eol = eol
        self.max_line = max_line
        self.timeout_s = timeout_s
        self.instrument_id = instrument_id
        self._clock: Clock = clock or MonotonicClock()
        self._backoff = backoff or Backoff()
        self._lock = asyncio.Lock()
        self._transport: asyncio.BaseTransport | None = None
        self._rx: _Receiver | None = None
        self._wanted = False  # open() called and close() not yet
        self._resync = False  # drain until quiet before the next write
        self._had_link = False
        self._lost = False  # "link lost" logged, "reconnected" pending
        self.reconnects = 0
        """Successful re-opens after the first open (fault recovery or reconnect)."""
        self.skipped_lines = 0
        """Lines skipped as noise because ``accept`` refused them and more input followed."""

    @property
    def connected(self) -> bool:
        return self._rx is not None and not self._rx.lost

    async def open(self) -> None:
        """Open the port; raises :class:`LinkError` if it cannot be opened."""
        async with self._lock:
            self._wanted = True
            if not self.connected:
                await self._drop_locked()
                await self._open_locked()

    async def close(self) -> None:
        """Close the port; idempotent."""
        async with self._lock:
            self._wanted = False
            await self._drop_locked()

    async def __aenter__(self) -> SerialLink:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def mark_resync(self) -> None:
        """A reply made no sense (perhaps a late one): drain until quiet before the next
        write."""
        self._resync = True

    async def request(
        self, line: bytes, *, reply: bool = True, accept: Callable[[bytes], bool] | None = None
    ) -> bytes:
        """Write ``line`` + eol and return the next complete reply line (eol stripped), or
        ``b""`` at once when ``reply`` is False. Reopens a link closed by an earlier fault.
        With ``accept``, a line it refuses is skipped as noise if more input follows (see
        the module docstring); ``accept`` must not raise.

        Raises :class:`InstrumentTimeoutError` when no full line comes within ``timeout_s``,
        :class:`FrameTooLongError` for a reply longer than ``max_line``, :class:`LinkError`
        when the port is gone.
        """
        if self.eol in line:
            raise ValueError(f"a request may not contain the terminator: {line[:40]!r}")
        async with self._lock:
            self._check_wanted()
            if not self.connected:
                await self._drop_locked()
                await self._open_locked()
            try:
                return await self._exchange(line, reply, accept)
            except asyncio.CancelledError:
                self._resync = True  # the reply may still come: never take it for the next
                raise

    async def reconnect(self, timeout_s: float) -> None:
        """Close, then reopen with jittered exponential backoff for up to ``timeout_s``
        seconds of the link's clock; raises :class:`LinkError` when time runs out."""
        async with self._lock:
            await self._drop_locked()
        await reopen_with_backoff(
            self._reopen,
            backoff=self._backoff,
            clock=self._clock,
            timeout_s=timeout_s,
            wanted=lambda: self._wanted,
            instrument=self._where,
        )

    async def _reopen(self) -> None:
        async with self._lock:
            self._check_wanted()
            await self._open_locked()

    # ------------------------------------------------------------------ internals

    @property
    def _where(self) -> str | None:
        return self.instrument_id or None

    async def _exchange(
        self, line: bytes, reply: bool, accept: Callable[[bytes], bool] | None
    ) -> bytes:
        rx = self._rx
        assert rx is not None and self._transport is not None  # ensured by the caller
        if self._resync:
            await self._drain_until_quiet(rx)
        rx.buf.clear()  # stale bytes from before this request
        self._check_alive(rx)
        write: Any = self._transport
        write.write(line + self.eol)
        if not reply:
            return b""
        try:
            async with asyncio.timeout(self.timeout_s):
                got = await self._read_line(rx)
                while accept is not None and not accept(got) and await self._more_soon(rx):
                    self.skipped_lines += 1
                    got = await self._read_line(rx)
                return got
        except TimeoutError as exc:
            self._resync = True
            rx.buf.clear()
            raise InstrumentTimeoutError(
                f"no reply to {line[:20]!r} within {self.timeout_s:g} s", instrument=self._where
            ) from exc

    async def _read_line(self, rx: _Receiver) -> bytes:
        while True:
            try:
                got, used = split_line(rx.buf, eol=self.eol, max_line=self.max_line)
            except FrameTooLongError:
                self._resync = True
                rx.buf.clear()
                raise
            if got is not None:
                del rx.buf[:used]
                return got
            self._check_alive(rx)
            await rx.wait()

    async def _more_soon(self, rx: _Receiver) -> bool:
        """Whether input follows within the quiet window (or the port is gone: the next read
        then reports it)."""
        if rx.buf or rx.lost:
            return True
        try:
            async with asyncio.timeout(min(_QUIET_S, self.timeout_s / 4)):
                await rx.wait()
        except TimeoutError:
            return False
        return True

    async def _drain_until_quiet(self, rx: _Receiver) -> None:
        """Discard input until none has arrived for a short window (at most ``timeout_s``)."""
        quiet_s = min(_QUIET_S, self.timeout_s / 4)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                while True:
                    rx.buf.clear()
                    self._check_alive(rx)
                    try:
                        async with asyncio.timeout(quiet_s):
                            await rx.wait()
                    except TimeoutError:
                        break
        rx.buf.clear()
        self._resync = False

    def _check_wanted(self) -> None:
        if not self._wanted:
            raise LinkError("link is not open", instrument=self._where)

    def _check_alive(self, rx: _Receiver) -> None:
        if rx.lost:
            error = rx.error or EOFError("end of file")
            self._note_lost(error)
            raise LinkError(
                f"port closed: {type(error).__name__}: {error}", instrument=self._where
            ) from error

    async def _open_locked(self) -> None:
        rx = _Receiver(cap=4 * (self.max_line + len(self.eol)))
        # A serial device has one owner: a second program reading the same port would steal
        # replies. pyserial's exclusive mode takes an advisory flock on the device (which,
        # unlike TIOCEXCL, also holds for root); socket:// URLs have no such thing.
        exclusive = None if "://" in self.url else True
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                asyncio.get_running_loop(), lambda: rx, self.url, baudrate=self.baudrate,
                exclusive=exclusive,
            )  # fmt: skip
        except (serial.SerialException, OSError, ValueError) as exc:
            self._note_lost(exc)
            busy = "lock" in str(exc).lower()
            why = "it is in use by another program" if busy else str(exc)
            raise LinkError(f"cannot open {self.url}: {why}", instrument=self._where) from exc
        self._transport, self._rx = transport, rx
        self._resync = False
        if self._had_link:
            self.reconnects += 1
        self._had_link = True
        if self._lost:
            self._lost = False
            _log.info("reconnected", instrument=self.instrument_id, url=self.url)

    async def _drop_locked(self) -> None:
        transport, rx = self._transport, self._rx
        self._transport = self._rx = None
        if transport is None or rx is None:
            return
        if not rx.lost:
            abort: Any = transport
            abort.abort()  # no flush: a stalled port must not hold close() up
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await asyncio.shield(rx.closed)

    def _note_lost(self, exc: BaseException) -> None:
        if self._had_link and not self._lost:
            self._lost = True
            error = f"{type(exc).__name__}: {exc}"
            _log.warning("link lost", instrument=self.instrument_id, error=error)

"""An asyncio link to an instrument speaking tagged request/reply lines over TCP.

Every request carries a tag its reply repeats (:mod:`drivers.amplifier.codec`), so the link
pairs replies with requests by tag rather than by order: a reply that arrives after its
request timed out finds no one waiting and is dropped (:attr:`TaggedLineLink.late_replies`),
never taken for the answer to the next command. Several requests may be in flight.

The link owns the socket, a reader task that cuts lines (bounded: a line over ``max_line``
is dropped and the reader resynchronises at the next terminator) and the table of waiting
requests. A lost connection fails every waiting request at once with
:class:`~drivers.errors.LinkError`; the next request connects again (one attempt, spaced by
the backoff on the injected clock). Reply timeouts are real time (a wire property).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

import structlog

from drivers.backoff import Backoff
from drivers.clock import Clock, MonotonicClock
from drivers.errors import FrameTooLongError, InstrumentTimeoutError, LinkError
from drivers.serial_link import split_line

__all__ = ["TaggedLineLink", "end_connection"]

_log = structlog.get_logger()
_CONNECT_TIMEOUT_S = 3.0


async def end_connection(reader_task: asyncio.Task[None] | None,
                         writer: asyncio.StreamWriter | None) -> None:  # fmt: skip
    """A TCP link's teardown: its reader task stopped (a cancellation of the caller still
    goes through), then its socket closed."""
    if reader_task is not None:
        reader_task.cancel()
        await asyncio.wait({reader_task})
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


class TaggedLineLink:
    """One TCP peer at ``host:port`` speaking ``eol``-terminated lines with tags."""

    def __init__(
        self, host: str, port: int, *, tag_of: Callable[[bytes], int | None],
        eol: bytes = b"\n", max_line: int = 512, timeout_s: float = 3.0, max_tag: int = 999_999,
        instrument_id: str = "", clock: Clock | None = None, backoff: Backoff | None = None,
    ) -> None:  # fmt: skip
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.instrument_id = instrument_id
        self._tag_of = tag_of
        self._eol, self._max_line = eol, max_line
        self._clock: Clock = clock or MonotonicClock()
        self._backoff = backoff or Backoff()
        self._tags = itertools.cycle(range(1, max_tag + 1))
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._connect_lock = asyncio.Lock()
        self._wanted = False
        self._discarding = False
        self._failures = 0
        self._next_attempt = 0.0
        self._ever_connected = False
        self.reconnects = 0
        """Successful connects after the first."""
        self.late_replies = 0
        """Replies whose request had already given up (timed out or cancelled)."""
        self.dropped_lines = 0
        """Lines with no tag, or over ``max_line`` (dropped; the reader resynchronised)."""

    @property
    def connected(self) -> bool:
        return self._writer is not None and self._reader_task is not None \
            and not self._reader_task.done()  # fmt: skip

    async def open(self) -> None:
        """Connect now; :class:`LinkError` if the peer is unreachable."""
        self._wanted = True
        self._next_attempt = 0.0
        await self._ensure_connected()

    async def close(self) -> None:
        self._wanted = False
        await self._drop(LinkError("link closed", instrument=self.instrument_id))

    def next_tag(self) -> int:
        while (tag := next(self._tags)) in self._pending:
            pass
        return tag

    async def request(self, tag: int, wire: bytes, *, timeout_s: float | None = None) -> bytes:
        """Send ``wire`` (a request tagged ``tag``) and return the reply line with that tag.
        :class:`InstrumentTimeoutError` if none comes within ``timeout_s`` (default the
        link's), :class:`LinkError` if the connection is lost first."""
        if not self._wanted:
            raise LinkError("link is not open", instrument=self.instrument_id)
        await self._ensure_connected()
        writer = self._writer
        assert writer is not None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[tag] = future
        try:
            writer.write(wire)
            await writer.drain()
            wait = self.timeout_s if timeout_s is None else timeout_s
            async with asyncio.timeout(wait):
                return await future
        except TimeoutError:
            raise InstrumentTimeoutError(
                f"no reply to {wire[:40].decode('ascii', 'replace').strip()!r} "
                f"within {wait:g} s", instrument=self.instrument_id,
            ) from None  # fmt: skip
        except (ConnectionError, OSError) as exc:
            if self._writer is writer:  # not a connection another request made since
                await self._drop(exc)
            raise LinkError(f"connection lost: {exc}", instrument=self.instrument_id) from exc
        finally:
            if self._pending.get(tag) is future:
                del self._pending[tag]

    # ------------------------------------------------------------------ internals

    async def _ensure_connected(self) -> None:
        async with self._connect_lock:
            if self.connected:
                return
            if not self._wanted:
                raise LinkError("link is not open", instrument=self.instrument_id)
            if self._writer is not None:  # the peer went away: release the old socket
                await self._drop(LinkError("connection lost", instrument=self.instrument_id))
            wait = self._next_attempt - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                self._failures += 1
                self._next_attempt = self._clock.monotonic() + self._backoff.delay(self._failures)
                raise LinkError(f"cannot connect to {self.host}:{self.port}: {exc}",
                                instrument=self.instrument_id) from exc  # fmt: skip
            if self._ever_connected:
                self.reconnects += 1
                _log.info("link restored", instrument=self.instrument_id)
            self._ever_connected = True
            self._failures = 0
            self._writer = writer
            self._reader_task = asyncio.create_task(
                self._read(reader), name=f"link-reader-{self.instrument_id or self.port}"
            )

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        self._discarding = False
        error: BaseException = LinkError("connection closed by the instrument",
                                         instrument=self.instrument_id)  # fmt: skip
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                self._dispatch(buf)
        except (ConnectionError, OSError) as exc:
            error = LinkError(f"connection lost: {exc}", instrument=self.instrument_id)
        self._fail_pending(error)
        _log.warning("link lost", instrument=self.instrument_id, error=str(error))

    def _dispatch(self, buf: bytearray) -> None:
        while buf:
            if self._discarding:  # the rest of a line too long to keep, up to its end
                end = buf.find(self._eol)
                if end < 0:
                    del buf[: len(buf) - (len(self._eol) - 1)]
                    return
                del buf[: end + len(self._eol)]
                self._discarding = False
                continue
            try:
                line, used = split_line(buf, eol=self._eol, max_line=self._max_line)
            except FrameTooLongError:
                self.dropped_lines += 1
                self._discarding = True
                continue
            if line is None:
                return
            del buf[:used]
            tag = self._tag_of(line)
            if tag is None:
                self.dropped_lines += 1
                continue
            future = self._pending.pop(tag, None)
            if future is None or future.done():
                self.late_replies += 1
            else:
                future.set_result(line)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def _drop(self, error: BaseException) -> None:
        writer, self._writer = self._writer, None
        task, self._reader_task = self._reader_task, None
        await end_connection(task, writer)
        self._fail_pending(error if isinstance(error, LinkError)
                           else LinkError(str(error), instrument=self.instrument_id))  # fmt: skip

"""The digitizer's link: one TCP socket, a reader task, replies by tag, data in a bounded
queue.

The reader task owns the socket's input: it cuts frames (:class:`~.codec.FrameDecoder`),
hands control replies (:class:`~.codec.Ack`, :class:`~.codec.Ident`,
:class:`~.codec.StatusReply`) to the request waiting on their tag, and puts acquisition
messages (:class:`~.codec.Data`, :class:`~.codec.End`, :class:`~.codec.Overrun`) and
corruption reports in a bounded queue. When the consumer falls behind and the queue is full,
the reader drops the message rather than stop reading (a stopped reader would stall the
replies too): the consumer finds the hole from the sequence numbers and reports it, with
:attr:`DigitizerLink.host_overruns` counting what was dropped here. Nothing blocks the event
loop: the socket is asyncio's, decoding a frame is a CRC and a ``numpy.frombuffer``.
"""

from __future__ import annotations

import asyncio
import itertools

import structlog

from drivers.digitizer.codec import (
    Ack,
    Corrupt,
    Data,
    End,
    Frame,
    FrameDecoder,
    Ident,
    Message,
    Overrun,
    StatusReply,
    decode_message,
    encode,
)  # fmt: skip
from drivers.errors import InstrumentTimeoutError, LinkError, ProtocolError
from drivers.tcp_lines import end_connection

__all__ = ["DigitizerLink", "Lost", "Stream"]

_log = structlog.get_logger()
_CONNECT_TIMEOUT_S = 3.0


class Lost:
    """The link's marker in the data queue: the connection went away."""

    def __init__(self, error: LinkError) -> None:
        self.error = error


Stream = Data | End | Overrun | Corrupt | Lost


class DigitizerLink:
    def __init__(self, host: str, port: int, *, timeout_s: float = 3.0, queue_size: int = 512,
                 instrument_id: str = "digitizer") -> None:  # fmt: skip
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.instrument_id = instrument_id
        self.queue: asyncio.Queue[Stream] = asyncio.Queue(maxsize=queue_size)
        self._tags = itertools.cycle(range(1, 65536))
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.host_overruns = 0
        """Data messages dropped because the consumer's queue was full."""
        self.corrupt_frames = 0
        self.reconnects = 0
        self._ever = False

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def open(self) -> None:
        async with self._lock:
            if self.connected:
                return
            await self._drop()
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                raise LinkError(f"cannot connect to {self.host}:{self.port}: {exc}",
                                instrument=self.instrument_id) from exc  # fmt: skip
            self.reconnects += self._ever
            self._ever = True
            self._writer = writer
            self._reader = asyncio.create_task(self._read(reader),
                                               name=f"digitizer-reader-{self.instrument_id}")

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    def next_tag(self) -> int:
        while (tag := next(self._tags)) in self._pending:
            pass
        return tag

    def clear_queue(self) -> None:
        """Forget what an earlier acquisition left in the queue."""
        while not self.queue.empty():
            self.queue.get_nowait()

    async def request(self, message: Message, tag: int) -> Message:
        """Send ``message`` and return the reply carrying ``tag``."""
        await self.open()
        writer = self._writer
        assert writer is not None
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[tag] = future
        try:
            writer.write(encode(message))
            await writer.drain()
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise InstrumentTimeoutError(f"no reply to {type(message).__name__} within "
                                         f"{self.timeout_s:g} s",
                                         instrument=self.instrument_id) from None  # fmt: skip
        except (ConnectionError, OSError) as exc:
            raise LinkError(f"connection lost: {exc}", instrument=self.instrument_id) from exc
        finally:
            self._pending.pop(tag, None)

    async def next_event(self, timeout_s: float) -> Stream:
        """The next acquisition message; :class:`InstrumentTimeoutError` after ``timeout_s``
        of silence."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.queue.get()
        except TimeoutError:
            raise InstrumentTimeoutError(f"no data for {timeout_s:g} s",
                                         instrument=self.instrument_id) from None  # fmt: skip

    # ------------------------------------------------------------------ internals

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        error = LinkError("connection closed by the digitizer", instrument=self.instrument_id)
        try:
            while chunk := await reader.read(1 << 18):
                for item in decoder.feed(chunk):
                    self._route(item)
        except (ConnectionError, OSError) as exc:
            error = LinkError(f"connection lost: {exc}", instrument=self.instrument_id)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._put(Lost(error), force=True)
        _log.warning("link lost", instrument=self.instrument_id, error=str(error))

    def _route(self, item: Frame | Corrupt) -> None:
        if isinstance(item, Corrupt):
            if item.why == "bad checksum":
                self.corrupt_frames += 1
                self._put(item)
            return
        try:
            message = decode_message(item)
        except ProtocolError as exc:
            self._put(Corrupt(len(item.payload), f"undecodable frame: {exc}"))
            return
        if isinstance(message, Ack | Ident | StatusReply):
            future = self._pending.get(message.tag)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, Data | End | Overrun):
            self._put(message)

    def _put(self, item: Stream, *, force: bool = False) -> None:
        if self.queue.full():
            if not force:
                self.host_overruns += 1
                return
            self.queue.get_nowait()  # the loss marker must get through
        self.queue.put_nowait(item)

    async def _drop(self) -> None:
        """Close the socket; whoever waits (a reply, a sweep) learns it at once."""
        writer, self._writer = self._writer, None
        task, self._reader = self._reader, None
        await end_connection(task, writer)
        if task is not None:
            error = LinkError("link closed", instrument=self.instrument_id)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._put(Lost(error), force=True)

"""The serial link: its framing function fuzzed, and the link itself over a real pty
(:class:`simulators.pty_port.PtyPort`) and over ``socket://`` with hostile peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.backoff import Backoff
from drivers.clock import VirtualClock
from drivers.errors import FrameTooLongError, InstrumentTimeoutError, LinkError, ProtocolError
from drivers.serial_link import SerialLink, _Receiver, skip_line, split_line
from simulators.pty_port import PtyPort

TIMEOUT_S = 0.3
Handler = Callable[[bytes], Awaitable[bytes | None]]

# --------------------------------------------------------------------------- framing


@given(st.binary(max_size=300), st.sampled_from([b"\r", b"\n", b"\r\n"]),
       st.integers(1, 64))
def test_split_line_whole_buffer(data: bytes, eol: bytes, max_line: int) -> None:
    try:
        line, used = split_line(data, eol=eol, max_line=max_line)
    except FrameTooLongError:
        assert eol not in data[: max_line + len(eol)]
        return
    if line is None:
        assert used == 0 and eol not in data and len(data) < max_line + len(eol)
    else:
        assert data[:used] == line + eol and eol not in line and len(line) <= max_line


@given(st.lists(st.binary(max_size=40), max_size=20), st.sampled_from([b"\r", b"\r\n"]))
def test_split_line_fed_byte_by_byte_stays_bounded(chunks: list[bytes], eol: bytes) -> None:
    """An assembler built on split_line/skip_line: every terminated line comes out whole or
    as one error, and the buffer never outgrows the bound."""
    max_line = 16
    data = eol.join(chunks)
    buf = bytearray()
    lines: list[bytes] = []
    discarding = False
    for i in range(len(data)):
        buf += data[i : i + 1]
        while buf:
            if discarding:
                drop = skip_line(buf, eol=eol)
                if drop == 0:
                    break  # only a possible half terminator is left: wait for more
                discarding = not buf[:drop].endswith(eol)
                del buf[:drop]
                continue
            try:
                line, used = split_line(buf, eol=eol, max_line=max_line)
            except ProtocolError:
                discarding = True
                continue
            if line is None:
                break
            lines.append(line)
            del buf[:used]
        assert len(buf) <= max_line + len(eol)
    expected = [c for c in data.split(eol)[:-1] if len(c) <= max_line]
    short_only = all(len(c) <= max_line for c in data.split(eol))
    if short_only:
        assert lines == expected


def _receive(chunks: list[bytes], eol: bytes, max_line: int) -> tuple[list[object], int]:
    """Feed ``chunks`` to the link's real receive buffer (:class:`_Receiver`) and read with
    the link's real :meth:`SerialLink._read_line` after each, as a waiting request would.
    Returns the lines (or error types) read and the largest buffer seen."""
    link = SerialLink("unused", eol=eol, max_line=max_line)

    async def run() -> tuple[list[object], int]:
        rx = _Receiver(cap=4 * (max_line + len(eol)))
        out: list[object] = []
        biggest = 0
        for chunk in chunks:
            rx.data_received(chunk)
            biggest = max(biggest, len(rx.buf))
            assert len(rx.buf) <= rx.cap
            while True:  # every line that is complete now; stop when one would wait
                try:
                    got = await asyncio.wait_for(link._read_line(rx), 1.0) if _ready(
                        rx.buf, eol, max_line) else None
                except FrameTooLongError:
                    out.append(FrameTooLongError)
                    continue
                if got is None:
                    break
                out.append(got)
        return out, biggest

    return asyncio.run(run())


def _ready(buf: bytearray, eol: bytes, max_line: int) -> bool:
    """Whether _read_line would return or raise at once (a line or an overlong one)."""
    return eol in buf[: max_line + len(eol)] or len(buf) >= max_line + len(eol)


def _expected(data: bytes, eol: bytes, max_line: int) -> list[object]:
    """What split_line says the stream holds, when the link clears its buffer after an
    overlong line (as it does: the request fails and the link resyncs)."""
    out: list[object] = []
    buf = bytearray(data)
    while True:
        try:
            line, used = split_line(buf, eol=eol, max_line=max_line)
        except FrameTooLongError:
            out.append(FrameTooLongError)
            buf.clear()
            continue
        if line is None:
            return out
        out.append(line)
        del buf[:used]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=20), st.just(b"\r"), st.just(b"OK*04\r"),
                          st.binary(min_size=40, max_size=120)), max_size=12),
       st.sampled_from([b"\r", b"\r\n"]))
def test_the_links_receive_buffer_is_bounded_and_frames_like_split_line(
    chunks: list[bytes], eol: bytes
) -> None:
    max_line = 16
    got, biggest = _receive(chunks, eol, max_line)
    assert biggest <= 4 * (max_line + len(eol))
    if all(len(c) <= 3 * (max_line + len(eol)) for c in chunks):  # never trimmed
        # read after every chunk: a whole-stream split gives the same lines, except that
        # the link drops what follows an overlong line in the same buffer (it resyncs)
        expected: list[object] = []
        pending = b""
        for chunk in chunks:
            pending += chunk
            items = _expected(pending, eol, max_line)
            expected += items
            pending = b"" if FrameTooLongError in items else _rest(pending, eol, max_line)
        assert got == expected


def _rest(buf: bytes, eol: bytes, max_line: int) -> bytes:
    """The unterminated tail split_line leaves in ``buf``."""
    while True:
        line, used = split_line(buf, eol=eol, max_line=max_line)
        if line is None:
            return buf
        buf = buf[used:]


def test_an_unread_receive_buffer_keeps_only_its_tail() -> None:
    async def run() -> None:
        rx = _Receiver(cap=32)
        for n in range(100):
            rx.data_received(b"%03d\r" % n)
            assert len(rx.buf) <= 32
        assert bytes(rx.buf).endswith(b"099\r")

    asyncio.run(run())


def test_split_line_examples() -> None:
    assert split_line(b"OK*4F\rST?", eol=b"\r") == (b"OK*4F", 6)
    assert split_line(b"partial", eol=b"\r") == (None, 0)
    with pytest.raises(FrameTooLongError):
        split_line(b"x" * 9, eol=b"\r", max_line=8)
    assert skip_line(b"junk\r\nnext", eol=b"\r\n") == 6
    assert skip_line(b"junk\r", eol=b"\r\n") == 4  # keeps a possible half terminator
    with pytest.raises(ValueError):
        split_line(b"", eol=b"")


# --------------------------------------------------------------------------- over a pty


@contextlib.asynccontextmanager
async def served(handler: Handler, link_path: Path | None = None) -> AsyncIterator[PtyPort]:
    port = PtyPort(link_path=link_path)
    task = asyncio.create_task(port.serve(handler))
    try:
        yield port
    finally:
        await port.stop()
        await task


def points_to(link: str) -> str:
    return os.path.realpath(link)


async def echo(line: bytes) -> bytes:
    return b"R:" + line


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[PtyPort]:
    async with served(echo, tmp_path / "dev" / "ttyECHO") as p:
        yield p


@pytest.fixture
async def link(port: PtyPort) -> AsyncIterator[SerialLink]:
    lnk = SerialLink(port.address, timeout_s=TIMEOUT_S, instrument_id="echo")
    await lnk.open()
    try:
        yield lnk
    finally:
        await lnk.close()


async def test_request_reply_over_a_symlinked_pty(port: PtyPort, link: SerialLink) -> None:
    assert points_to(port.address) == port.slave_path
    assert link.connected
    assert await link.request(b"ID?") == b"R:ID?"
    assert await link.request(b"AB", reply=False) == b""
    assert await link.request(b"ST?") == b"R:AB"  # the unread reply was stale: dropped
    assert await link.request(b"ST?") == b"R:ST?"


async def test_reply_arriving_one_byte_at_a_time(port: PtyPort, link: SerialLink) -> None:
    port.inject("byte_by_byte")
    assert await link.request(b"SLOW") == b"R:SLOW"
    assert await link.request(b"NEXT") == b"R:NEXT"


async def test_garbage_reply_is_returned_as_is_then_the_link_recovers(
    port: PtyPort, link: SerialLink
) -> None:
    port.inject("garbage")
    assert not (await link.request(b"X")).startswith(b"R:")
    assert await link.request(b"Y") == b"R:Y"


async def test_noise_before_the_reply_is_skipped_when_the_caller_says_so(
    port: PtyPort, link: SerialLink
) -> None:
    def accept(line: bytes) -> bool:
        return line.startswith(b"R:")

    port.inject("noise_then_reply")
    assert not (await link.request(b"A")).startswith(b"R:")  # no accept: the first line
    assert await link.request(b"B") == b"R:B"  # ... and the reply behind it was dropped
    port.inject("noise_then_reply")
    port.inject("noise_then_reply")
    assert await link.request(b"C", accept=accept) == b"R:C"
    assert await link.request(b"D", accept=accept) == b"R:D"
    assert link.skipped_lines == 2
    port.inject("garbage")  # a refused line with nothing after it is returned at once
    assert not (await link.request(b"E", accept=accept)).startswith(b"R:")
    assert await link.request(b"F", accept=accept) == b"R:F"
    assert link.skipped_lines == 2


async def test_garbage_between_frames_is_discarded(tmp_path: Path) -> None:
    async def noisy(line: bytes) -> bytes:
        return b"R:" + line + b"\r\x00\xffnoise"  # unterminated junk after every reply

    async with served(noisy) as port, SerialLink(port.address, timeout_s=TIMEOUT_S) as lnk:
        for n in range(3):
            assert await lnk.request(b"Q%d" % n) == b"R:Q%d" % n


async def test_stalled_reply_times_out_and_never_answers_the_next_request() -> None:
    release = asyncio.Event()

    async def late(line: bytes) -> bytes:
        if line == b"SLOW":
            await release.wait()
        return b"R:" + line

    async with served(late) as port, SerialLink(port.address, timeout_s=TIMEOUT_S) as lnk:
        with pytest.raises(InstrumentTimeoutError):
            await lnk.request(b"SLOW")
        release.set()  # the late reply now arrives, just before the next request
        assert await lnk.request(b"NEXT") == b"R:NEXT"
        assert await lnk.request(b"AGAIN") == b"R:AGAIN"


async def test_stall_fault_then_recovery(port: PtyPort, link: SerialLink) -> None:
    port.inject("stall")
    with pytest.raises(InstrumentTimeoutError) as info:
        await link.request(b"X")
    assert info.value.retryable
    assert await link.request(b"Y") == b"R:Y"


async def test_overlong_reply_is_a_protocol_error_then_recovers() -> None:
    async def long(line: bytes) -> bytes:
        return b"L" * 600 if line == b"BIG" else b"R:" + line

    async with served(long) as port, SerialLink(port.address, timeout_s=TIMEOUT_S) as lnk:
        with pytest.raises(FrameTooLongError):
            await lnk.request(b"BIG")
        assert await lnk.request(b"SMALL") == b"R:SMALL"


async def test_port_closing_mid_reply_gives_link_error_then_reopens(
    port: PtyPort, link: SerialLink
) -> None:
    port.inject("close")
    with pytest.raises(LinkError) as info:
        await link.request(b"X")
    assert not isinstance(info.value, InstrumentTimeoutError)
    assert not link.connected
    assert port.reopens == 1 and points_to(port.address) == port.slave_path
    assert await link.request(b"Y") == b"R:Y"  # reopened through the same symlink
    assert link.reconnects == 1


async def test_cancelled_request_does_not_leave_its_reply_for_the_next() -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def late(line: bytes) -> bytes:
        if line == b"SLOW":
            arrived.set()
            await release.wait()
        return b"R:" + line

    async with served(late) as port, SerialLink(port.address, timeout_s=2.0) as lnk:
        task = asyncio.create_task(lnk.request(b"SLOW"))
        await asyncio.wait_for(arrived.wait(), 2.0)  # the request is out: its reply is due
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        assert await lnk.request(b"NEXT") == b"R:NEXT"


async def test_concurrent_requests_are_serialised(link: SerialLink) -> None:
    replies = await asyncio.gather(*(link.request(b"C%d" % n) for n in range(20)))
    assert replies == [b"R:C%d" % n for n in range(20)]


async def test_errors_for_closed_and_missing_ports(tmp_path: Path) -> None:
    lnk = SerialLink(str(tmp_path / "nothing"), timeout_s=TIMEOUT_S)
    with pytest.raises(LinkError):
        await lnk.open()
    with pytest.raises(LinkError):
        await lnk.request(b"X")  # never opened
    await lnk.close()
    await lnk.close()
    with pytest.raises(ValueError):
        await SerialLink("x").request(b"A\rB")


async def test_reconnect_backs_off_on_the_clock_then_gives_up(tmp_path: Path) -> None:
    clock = VirtualClock(autojump=True)
    address = tmp_path / "ttyGONE"
    async with served(echo, address):
        lnk = SerialLink(str(address), timeout_s=TIMEOUT_S, clock=clock,
                         backoff=Backoff(base_s=0.5, cap_s=4.0))
        await lnk.open()
    # The port is gone (symlink removed): reconnect waits on the clock, not in real time.
    with pytest.raises(LinkError):
        await lnk.reconnect(30.0)
    assert 20.0 <= clock.monotonic() <= 30.0
    async with served(echo, address):
        await lnk.reconnect(30.0)
        assert lnk.reconnects == 1
        assert await lnk.request(b"BACK") == b"R:BACK"
    await lnk.close()


# --------------------------------------------------------------------------- socket://


async def test_socket_url_and_peer_reset() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readuntil(b"\r"):
                writer.write(b"R:" + line)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with SerialLink(f"socket://127.0.0.1:{port}", timeout_s=TIMEOUT_S) as lnk:
            assert await lnk.request(b"PING") == b"R:PING"
            writers[0].transport.abort()
            with pytest.raises(LinkError):
                await lnk.request(b"LOST")
            assert await lnk.request(b"AGAIN") == b"R:AGAIN"  # reopened on demand
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


async def test_a_serial_device_has_one_owner(tmp_path: Path) -> None:
    """A second program on the same port would steal replies: it is refused, clearly."""
    async with served(echo, tmp_path / "dev") as port:
        first = SerialLink(port.address, timeout_s=1.0)
        second = SerialLink(port.address, timeout_s=1.0)
        await first.open()
        try:
            with pytest.raises(LinkError, match="in use by another program"):
                await second.open()
            assert await first.request(b"hello") == b"R:hello"
        finally:
            await first.close()
        await second.open()  # free again once the owner let go
        assert await second.request(b"again") == b"R:again"
        await second.close()

"""A pseudo-terminal that a serial-instrument simulator serves, and a driver opens like a
real serial port (``/dev/pts/N``, or a stable symlink to it).

The simulator side reads the pty master without blocking the loop (``loop.add_reader``),
splits lines with the link's own framing (:func:`drivers.serial_link.split_line`), awaits
``on_line`` for each and writes its reply. The slave fd stays open here for the port's whole
life: with no slave fd open, reading the master fails with EIO.

A pty models neither baud rate nor modem lines (stack.md): bytes arrive as fast as the
kernel moves them, which is the hardest case for a host's framing anyway.

Transport faults (:meth:`PtyPort.inject`), each applied to one reply: the next reply that
no earlier injected fault is waiting for (inject ``garbage`` twice to garble two replies):

* ``garbage``: random bytes (never the terminator) are sent instead of the reply, then the
  terminator. The host sees one line that fails its checksum or syntax.
* ``noise_then_reply``: a line of random bytes, then the real reply. The host must not take
  the noise for its answer, nor the answer for the reply to its next command.
* ``byte_by_byte``: the reply goes out one byte at a time with small real gaps.
* ``stall``: the reply is never sent. The host times out.
* ``close``: half of the reply is written, then both ends of the pty are closed and a new
  pty is opened in their place. A host holding the old slave sees a hang-up (pyserial raises
  ``SerialException``: *device reports readiness to read but returned no data*, or an EIO),
  i.e. :class:`~drivers.errors.LinkError`. With ``link_path`` the symlink is re-pointed to
  the new slave before this method returns, so reopening the same address recovers; without
  one the slave path changes (:attr:`PtyPort.slave_path`) and the host must be told.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import random
import tty
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Literal, get_args

import structlog

from drivers.errors import FrameTooLongError
from drivers.serial_link import skip_line, split_line

__all__ = ["TRANSPORT_FAULTS", "PtyPort", "TransportFault"]

TransportFault = Literal["garbage", "noise_then_reply", "byte_by_byte", "stall", "close"]
TRANSPORT_FAULTS: Final = get_args(TransportFault)
_READ_CHUNK = 4096
_BYTE_GAP_S = 0.002  # real seconds between bytes of a byte_by_byte reply

_log = structlog.get_logger()


class PtyPort:
    """One pty pair; ``serve`` answers the host line by line until :meth:`stop`."""

    def __init__(
        self, *, link_path: Path | None = None, eol: bytes = b"\r", max_line: int = 512
    ) -> None:
        split_line(b"", eol=eol, max_line=max_line)  # validates eol and max_line
        self.eol = eol
        self.max_line = max_line
        self.link_path = link_path
        self._rng = random.Random(0x5E71A1)
        self._faults: deque[TransportFault] = deque()
        self._buf = bytearray()
        self._discarding = False
        self._lines: asyncio.Queue[bytes | None] | None = None
        self._stopped = False
        self._writable: asyncio.Future[None] | None = None  # a write waiting for room
        self.reopens = 0
        """How many times a ``close`` fault re-created the pty."""
        self._master, self._slave, self.slave_path = _open_pty()
        self._link()

    @property
    def address(self) -> str:
        """What a driver's config names: the symlink if there is one, else the slave."""
        return str(self.link_path) if self.link_path is not None else self.slave_path

    def inject(self, kind: TransportFault) -> None:
        """Apply a transport fault to the next reply not already given one (see the module
        docstring)."""
        if kind not in TRANSPORT_FAULTS:
            raise ValueError(f"unknown transport fault {kind!r}; known: {TRANSPORT_FAULTS}")
        self._faults.append(kind)

    async def serve(self, on_line: Callable[[bytes], Awaitable[bytes | None]]) -> None:
        """Answer each line with ``await on_line(line)`` (+ eol; None: no reply) until
        :meth:`stop`. Lines longer than ``max_line`` are dropped unanswered."""
        if self._lines is not None:
            raise RuntimeError("this port is already being served")
        self._lines = asyncio.Queue()
        self._watch()
        try:
            while not self._stopped:
                line = await self._lines.get()
                if line is None:
                    break
                reply = await on_line(line)
                if reply is not None and not self._stopped:
                    await self._send(reply + self.eol)
        finally:
            self._unwatch()
            self._lines = None

    async def stop(self) -> None:
        """Stop serving, remove the symlink and close both ends; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._lines is not None:
            self._lines.put_nowait(None)
        if self._writable is not None:
            _set_done(self._writable)  # a host that never reads must not hold stop() up
        self._unwatch()
        self._close_fds()
        if self.link_path is not None and self.link_path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                self.link_path.unlink()
        await asyncio.sleep(0)

    # ------------------------------------------------------------------ internals

    def _link(self) -> None:
        if self.link_path is None:
            return
        self.link_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.slave_path)
        tmp.replace(self.link_path)  # atomic: a driver never sees the link missing

    def _watch(self) -> None:
        if self._lines is not None and not self._stopped:
            asyncio.get_running_loop().add_reader(self._master, self._readable)

    def _unwatch(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # already closed
            asyncio.get_running_loop().remove_reader(self._master)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # cannot happen while we hold the slave; stop reading
            _log.warning("pty read failed", path=self.slave_path, error=str(exc))
            self._unwatch()
            return
        self._buf += data
        self._split()

    def _split(self) -> None:
        assert self._lines is not None  # only called while serving
        while self._buf:
            if self._discarding:
                drop = skip_line(self._buf, eol=self.eol)
                if drop == 0:
                    return  # only a possible half terminator is left: wait for more
                ended = self._buf[:drop].endswith(self.eol)
                del self._buf[:drop]
                self._discarding = not ended
                continue
            try:
                line, used = split_line(self._buf, eol=self.eol, max_line=self.max_line)
            except FrameTooLongError:
                self._discarding = True
                continue
            if line is None:
                return
            del self._buf[:used]
            self._lines.put_nowait(line)

    async def _send(self, data: bytes) -> None:
        fault = self._faults.popleft() if self._faults else None
        if fault == "stall":
            return
        if fault == "garbage":
            await self._write(self._noise() + self.eol)
        elif fault == "noise_then_reply":
            await self._write(self._noise() + self.eol + data)  # one write: no gap between
        elif fault == "byte_by_byte":
            for i in range(len(data)):
                await self._write(data[i : i + 1])
                await asyncio.sleep(_BYTE_GAP_S)
        elif fault == "close":
            await self._write(data[: max(1, len(data) // 2)])
            self._reopen()
        else:
            await self._write(data)

    def _noise(self) -> bytes:
        """4-39 random bytes, printable or high, never the terminator."""
        noise = bytes(self._rng.choice((self._rng.randrange(0x80, 0x100),
                                         self._rng.randrange(0x21, 0x7F)))
                      for _ in range(self._rng.randrange(4, 40)))
        return noise.replace(self.eol[:1], b"?")

    async def _write(self, data: bytes) -> None:
        """Write everything, waiting (not spinning) while the pty buffer is full."""
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view and not self._stopped:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                self._writable = loop.create_future()
                loop.add_writer(self._master, _set_done, self._writable)
                try:
                    await self._writable
                finally:
                    self._writable = None
                    with contextlib.suppress(ValueError, OSError):
                        loop.remove_writer(self._master)
                continue
            view = view[n:]

    def _reopen(self) -> None:
        """The ``close`` fault: drop both ends, then appear again as a new pty."""
        self._unwatch()
        self._close_fds()
        self._buf.clear()
        self._discarding = False
        self._master, self._slave, self.slave_path = _open_pty()
        self._link()
        self.reopens += 1
        _log.info("pty reopened", path=self.slave_path, link=self.address)
        self._watch()

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _open_pty() -> tuple[int, int, str]:
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)

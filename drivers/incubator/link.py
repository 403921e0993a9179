"""An asyncio Modbus link (pymodbus client) with typed errors and reconnect with backoff.

Addresses are URLs, so the simulator, a serial server and the real port are one config line
apart:

* ``modbus-tcp://host[:port]`` (port 502 by default): Modbus TCP (MBAP framing).
* ``modbus-rtu://<serial url>[?baud=9600&parity=N&bytesize=8&stopbits=1]``: Modbus RTU
  through pyserial (``AsyncModbusSerialClient``), e.g. ``modbus-rtu:///dev/ttyUSB0?baud=9600``.
  Defaults are the Eurotherm's 9600 8N1.
* ``modbus-rtu://socket://host:port``: RTU frames on a TCP stream (a serial device server,
  or the simulator's RTU listener). Same bytes on the wire, but carried by pymodbus' TCP
  client with the RTU framer rather than pyserial's ``socket://`` handler, whose ``close()``
  sleeps 0.3 s on the event loop and leaks the socket after a peer reset.

What pymodbus does not do for us, and this link does:

* A connection lost mid-command fails that command at once with :class:`LinkError` (pymodbus
  would wait out its timeout): a per-connection "lost" future raced against the request.
* After a timeout or a loss the client is discarded; the next call connects a fresh one, so a
  late reply can never be read as the answer to the next request (RTU has no transaction id).
* pymodbus' own reconnect loop is off (``reconnect_delay=0``); failed connects are spaced by
  :class:`~drivers.backoff.Backoff` on the injected clock, one attempt per call.
* Exception responses become :class:`InstrumentReplyError` with ``code`` set (2 = illegal
  data address, 3 = illegal data value, ...).

Reply timeouts are real time (a wire property), not the injected clock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.backoff import Backoff
from drivers.clock import Clock, MonotonicClock
from drivers.errors import InstrumentReplyError, InstrumentTimeoutError, LinkError

__all__ = ["ModbusAddress", "ModbusLink", "parse_address"]

_log = structlog.get_logger()
_Client = AsyncModbusTcpClient | AsyncModbusSerialClient
_SERIAL_OPTIONS = {"baud": int, "bytesize": int, "parity": str, "stopbits": int}


@dataclass(frozen=True)
class ModbusAddress:
    transport: Literal["tcp", "rtu"]
    target: str
    """Host (tcp) or pyserial URL / device path (rtu)."""
    port: int = 502
    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


def parse_address(address: str) -> ModbusAddress:
    """Parse a ``modbus-tcp://`` or ``modbus-rtu://`` URL; :class:`ValueError` if invalid."""
    if address.startswith("modbus-tcp://"):
        rest = address.removeprefix("modbus-tcp://")
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            host, port_text = rest, "502"
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"expected modbus-tcp://host:port, got {address!r}")
        return ModbusAddress("tcp", host, int(port_text))
    if address.startswith("modbus-rtu://"):
        target, _, query = address.removeprefix("modbus-rtu://").partition("?")
        if not target:
            raise ValueError(f"expected modbus-rtu://<serial url>, got {address!r}")
        options: dict[str, int | str] = {}
        for key, value in parse_qsl(query, strict_parsing=bool(query)):
            if key not in _SERIAL_OPTIONS:
                raise ValueError(f"unknown serial option {key!r} in {address!r}")
            try:
                options[key] = _SERIAL_OPTIONS[key](value)
            except ValueError as exc:
                raise ValueError(f"bad {key}={value!r} in {address!r}") from exc
        return ModbusAddress("rtu", target, **options)  # type: ignore[arg-type]
    raise ValueError(f"not a Modbus address (modbus-tcp:// or modbus-rtu://): {address!r}")


class ModbusLink:
    """One Modbus device (``device_id``) at ``address``; calls are serialised by a lock."""

    def __init__(
        self,
        address: str,
        *,
        device_id: int = 1,
        timeout_s: float = 2.0,
        instrument_id: str = "instrument",
        clock: Clock | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if not 0 <= device_id <= 247:
            raise ValueError("device_id must be 0..247")
        self.address = address
        self.target = parse_address(address)
        self.device_id = device_id
        self.instrument_id = instrument_id
        self._timeout_s = timeout_s
        self._clock: Clock = clock or MonotonicClock()
        self._backoff = backoff or Backoff()
        self._lock = asyncio.Lock()
        self._client: _Client | None = None
        self._lost: asyncio.Future[None] | None = None  # set when this connection drops
        self._wanted = False
        self._failures = 0  # consecutive failed connects
        self._next_attempt = 0.0  # clock time before which no connect is tried
        self._had_link = False
        self._logged_lost = False
        self.reconnects = 0
        """Successful connects after the first (fault recovery)."""
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs raw frames

    @property
    def connected(self) -> bool:
        return self._client is not None and not (self._lost is not None and self._lost.done())

    async def open(self) -> None:
        """Connect now (no backoff wait); :class:`LinkError` if the device is unreachable."""
        async with self._lock:
            self._wanted = True
            if not self.connected:
                self._next_attempt = 0.0
                await self._connect_locked()

    async def close(self) -> None:
        async with self._lock:
            self._wanted = False
            self._drop_locked()

    async def read(self, address: int, count: int = 1) -> list[int]:
        """Read ``count`` holding registers (function 3)."""
        reply = await self._exchange(
            lambda c: c.read_holding_registers(address, count=count, device_id=self.device_id),
            f"read {count} from {address}",
        )
        words = list(getattr(reply, "registers", ()))
        if len(words) != count:
            raise InstrumentReplyError(
                f"asked for {count} register(s) at {address}, got {len(words)}",
                instrument=self.instrument_id,
            )
        return words

    async def write(self, address: int, value: int) -> None:
        """Write one register (function 6) and check the echo."""
        reply = await self._exchange(
            lambda c: c.write_register(address, value, device_id=self.device_id),
            f"write {value} to {address}",
        )
        echo = list(getattr(reply, "registers", ()))
        if echo != [value] or getattr(reply, "address", address) != address:
            raise InstrumentReplyError(
                f"write of {value} to {address} echoed {echo} at {getattr(reply, 'address', '?')}",
                instrument=self.instrument_id,
            )

    async def write_many(self, address: int, values: Sequence[int]) -> None:
        """Write consecutive registers (function 16)."""
        await self._exchange(
            lambda c: c.write_registers(address, list(values), device_id=self.device_id),
            f"write {len(values)} at {address}",
        )

    # ------------------------------------------------------------------ internals

    async def _exchange(
        self, request: Callable[[_Client], Awaitable[ModbusPDU]], what: str
    ) -> ModbusPDU:
        async with self._lock:
            if not self._wanted:
                raise LinkError("link is not open", instrument=self.instrument_id)
            if not self.connected:
                if self._client is not None:
                    self._note_lost("connection dropped while idle")
                self._drop_locked()
                await self._connect_locked()
            client, lost = self._client, self._lost
            assert client is not None and lost is not None  # just connected
            task = asyncio.ensure_future(request(client))
            racers: set[asyncio.Future[Any]] = {task, lost}
            try:
                done, _ = await asyncio.wait(racers, timeout=self._timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                await self._abandon_locked(task)  # the reply may still come: fresh socket
                raise
            if task not in done:
                dropped = lost in done
                await self._abandon_locked(task)
                if dropped:
                    raise self._lost_error(f"connection lost during {what}")
                raise self._lost_error(f"no reply within {self._timeout_s:g} s to {what}",
                                       timeout=True)
            try:
                reply = task.result()
            except ModbusException as exc:
                self._drop_locked()
                raise self._lost_error(f"{what}: {exc}") from exc
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            raise InstrumentReplyError(
                f"{what}: Modbus exception {code:02d} ({_EXCEPTION_NAMES.get(code, 'unknown')})",
                instrument=self.instrument_id,
                code=code,
            )
        return reply

    async def _abandon_locked(self, task: asyncio.Future[ModbusPDU]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ModbusException):
            await task
        self._drop_locked()

    def _lost_error(self, message: str, *, timeout: bool = False) -> LinkError:
        self._note_lost(message)
        cls = InstrumentTimeoutError if timeout else LinkError
        return cls(message, instrument=self.instrument_id)

    async def _connect_locked(self) -> None:
        wait = self._next_attempt - self._clock.monotonic()
        if wait > 0:
            await self._clock.sleep(wait)
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()
        client = self._make_client(functools.partial(_on_connect_change, lost))
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:  # a serial open may raise on some URLs
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        else:
            reason = "refused or unreachable"
        if not ok:
            client.close()
            self._failures += 1
            self._next_attempt = self._clock.monotonic() + self._backoff.delay(self._failures - 1)
            self._note_lost(reason)
            raise LinkError(f"cannot connect to {self.address}: {reason}",
                            instrument=self.instrument_id)
        self._client, self._lost = client, lost
        self._failures = 0
        if self._had_link:
            self.reconnects += 1
        self._had_link = True
        if self._logged_lost:
            self._logged_lost = False
            _log.info("reconnected", instrument=self.instrument_id, address=self.address)

    def _make_client(self, on_connect: Callable[[bool], None]) -> _Client:
        t = self.target
        # pymodbus' timeout is a backstop only: our own wait (same length) fires first.
        common = {"timeout": self._timeout_s * 2, "retries": 0, "reconnect_delay": 0.0,
                  "trace_connect": on_connect}
        if t.transport == "tcp":
            return AsyncModbusTcpClient(t.target, port=t.port, **common)  # type: ignore[arg-type]
        if (stream := urlsplit(t.target)).scheme == "socket" and stream.hostname and stream.port:
            # RTU frames on a TCP stream: asyncio's socket, not pyserial's socket:// handler,
            # which sleeps 0.3 s inside close() (blocking the loop) and leaks the socket when
            # the peer has reset it.
            return AsyncModbusTcpClient(stream.hostname, port=stream.port, framer=FramerType.RTU,
                                        **common)  # type: ignore[arg-type]
        return AsyncModbusSerialClient(
            t.target, framer=FramerType.RTU, baudrate=t.baud, bytesize=t.bytesize,
            parity=t.parity, stopbits=t.stopbits, **common,  # type: ignore[arg-type]
        )

    def _drop_locked(self) -> None:
        client, self._client = self._client, None
        lost, self._lost = self._lost, None
        if lost is not None and not lost.done():
            lost.cancel()
        if client is not None:
            client.close()

    def _note_lost(self, reason: str) -> None:
        if self._had_link and not self._logged_lost:
            self._logged_lost = True
            _log.warning("link lost", instrument=self.instrument_id, error=reason)


def _on_connect_change(lost: asyncio.Future[None], up: bool) -> None:
    if not up and not lost.done():
        lost.set_result(None)


_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

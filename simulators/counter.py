"""Simulated microplate scintillation counter served over TCP (a VISA ``::SOCKET`` resource).

Wire protocol: ``docs/protocols/counter.md``; state machine: :mod:`simulators.counter_model`;
physics: :mod:`simulators.counting`. Faults can be injected from Python
(:meth:`CounterSimulator.inject_fault`) or over the control channel
(:mod:`simulators.control`):

* ``disconnect``: reset every client connection now (TCP RST); the count goes on.
* ``unplug`` / ``plug``: the cable pulled: every connection reset and every new one reset
  at once until ``plug``; the instrument itself goes on (a running count continues).
* ``stall``: withhold the next reply; it is sent late, just before the reply to the next
  command on the same connection (the classic stale-reply trap for a host that timed out).
* ``garbage``: replace the next reply by random non-ASCII bytes (ending in ``\\n``).
* ``door_open`` / ``door_close``: opening the door aborts a running count (fault 202).
* ``hv_fault``: a PMT high-voltage fault puts a running count in FAULT (220).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Mapping
from typing import Final, Literal, get_args

import structlog

from drivers.clock import Clock, ScaledClock
from drivers.counter.codec import (
    Command,
    ErrorCode,
    ErrorReply,
    Line,
    LineAssembler,
    WellCount,
    encode_line,
    parse_command,
)
from drivers.errors import FrameTooLongError, ProtocolError
from simulators.counter_model import CounterModel
from simulators.counting import Medium, PhysicsConfig
from simulators.plates import demo_plate
from simulators.world_api import FilterMat, WorldHooks

__all__ = ["FAULT_KINDS", "CounterSimulator", "FaultKind"]

FaultKind = Literal[
    "disconnect", "unplug", "plug", "stall", "garbage", "door_open", "door_close", "hv_fault"
]
FAULT_KINDS: Final = get_args(FaultKind)
_READ_CHUNK = 4096

_log = structlog.get_logger()


class CounterSimulator:
    """A counter listening on ``host:port`` (port 0 picks a free one, see :attr:`port`).

    Given a ``world``, it registers there as ``instrument_id`` and loads every filter mat
    the world places at ``counter:<instrument_id>`` (as a ``filtermat`` plate named by the
    mat id)."""

    def __init__(
        self,
        *,
        detectors: int = 12,
        time_scale: float = 1.0,
        clock: Clock | None = None,
        seed: int = 0,
        physics: PhysicsConfig | None = None,
        serial: str | None = None,
        world: WorldHooks | None = None,
        instrument_id: str = "counter",
    ) -> None:
        self.clock: Clock = clock or ScaledClock(time_scale)
        self.model = CounterModel(
            detectors=detectors,
            clock=self.clock,
            rng=random.Random(seed),
            physics=physics,
            serial=serial or f"MB2-{seed:04d}",
        )
        self._fault_rng = random.Random(seed + 1)  # own stream: faults never change counts
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stall_next = False
        self._unplugged = False
        self._garbage_next = False
        self.host = "127.0.0.1"
        self.port = 0
        if world is not None:
            world.register_counter(instrument_id, self._load_mat)

    @property
    def resource(self) -> str:
        """The VISA resource string a driver uses to reach this simulator."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, drop every client and wait for their handlers to finish."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> CounterSimulator:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ operator API

    def load_plate(
        self,
        plate_id: str,
        dpm_by_well: Mapping[str, float],
        luminescence_cpm_by_well: Mapping[str, float] | None = None,
        *,
        medium: Medium = "filtermat",
        quench_by_well: Mapping[str, float] | None = None,
    ) -> None:
        self.model.load_plate(
            plate_id, dpm_by_well, luminescence_cpm_by_well, medium=medium,
            quench_by_well=quench_by_well,
        )

    def load_demo_plate(self, seed: int = 1, plate_id: str = "DEMO-0001") -> None:
        plate = demo_plate(seed, plate_id)
        self.load_plate(plate.plate_id, plate.dpm_by_well, plate.luminescence_cpm_by_well)

    def _load_mat(self, mat: FilterMat | None) -> None:
        """The world placed a harvested mat in this counter (None: took it out)."""
        if mat is None:
            self.model.unload_plate()
        else:
            self.load_plate(mat.mat_id, mat.dpm_by_well, medium="filtermat")

    def inject_fault(self, kind: FaultKind) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        _log.info("fault injected", kind=kind)
        if kind in ("disconnect", "unplug"):
            self._unplugged = kind == "unplug"
            for writer in list(self._connections.values()):
                _reset(writer)
        elif kind == "plug":
            self._unplugged = False
        elif kind == "stall":
            self._stall_next = True
        elif kind == "garbage":
            self._garbage_next = True
        elif kind == "door_open":
            self.model.open_door()
        elif kind == "door_close":
            self.model.close_door()
        else:
            self.model.high_voltage_fault()

    def records(self) -> list[WellCount]:
        """Every well counted so far in the current count, in completion order."""
        return self.model.completed()

    def snapshot(self) -> dict[str, object]:
        status = self.model.status()
        plate = self.model.plate
        return {
            "state": status.state,
            "done": status.done,
            "total": status.total,
            "count_id": status.count_id,
            "fault_code": status.fault_code,
            "fault_text": status.fault_text,
            "door_open": self.model.door_open,
            "plate_id": None if plate is None else plate.plate_id,
            "detectors": self.model.detectors,
            "connections": len(self._connections),
            "sim_time_s": self.clock.monotonic(),
        }

    # ------------------------------------------------------------------ wire

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # always inside the server's handler task
        if self._unplugged:
            _reset(writer)
            return
        self._connections[task] = writer
        assembler = LineAssembler()
        held = b""  # a stalled reply, sent late before the next one
        try:
            while data := await reader.read(_READ_CHUNK):
                out = bytearray()
                for item in assembler.feed(data):
                    reply = self._reply_to(item)
                    if self._stall_next:
                        self._stall_next = False
                        held += reply
                        continue
                    if self._garbage_next:
                        self._garbage_next = False
                        reply = self._garbage()
                    out += held + reply
                    held = b""
                if out:
                    writer.write(bytes(out))
                    await writer.drain()
        except ConnectionError as exc:  # the client (or a disconnect fault) reset the socket
            _log.debug("client connection lost", error=str(exc))
        finally:
            del self._connections[task]
            writer.transport.abort()

    def _reply_to(self, item: Line | ProtocolError) -> bytes:
        command: Command | ErrorReply
        if isinstance(item, FrameTooLongError):
            command = ErrorReply(ErrorCode.TOO_MUCH_DATA, "Too much data")
        elif isinstance(item, ProtocolError):
            command = ErrorReply(ErrorCode.SYNTAX, "Syntax error: non-printable bytes")
        else:
            command = parse_command(item)
        return encode_line(self.model.handle(command))

    def _garbage(self) -> bytes:
        rng = self._fault_rng
        noise = bytes(rng.choice((rng.randrange(0x80, 0x100), rng.randrange(1, 10)))
                      for _ in range(rng.randrange(8, 40)))
        return b"\xff" + noise + b"\n"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop a connection with a TCP RST (SO_LINGER 0), as a crashed instrument would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

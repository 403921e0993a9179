"""Simulated incubator: a Eurotherm 3200-style controller with a plate shaker, served over
Modbus TCP (and, optionally, Modbus RTU framing over TCP, as a serial device server would).

Register map and scaling: ``docs/protocols/incubator.md`` and
:mod:`drivers.incubator.registers`; physics: :mod:`simulators.thermal`.

Built on pymodbus' ``ModbusTcpServer`` with a ``SimDevice``: the SimData blocks fix which
addresses exist (anything else answers exception 02, as the real controller does) and which
are read-only; the device's ``action`` hook runs on every access, advances the physics to
the injected clock's "now", fills the requested registers from the model (reads) or
validates every written value and then applies them all (writes; one out-of-range value
answers exception 03 and changes nothing). The
model integrates over clock time when it is read, so no background task is needed and a
90-minute incubation on a :class:`~drivers.clock.VirtualClock` costs one integration.

Faults (:meth:`IncubatorSimulator.inject_fault`, also over the control channel):

* ``door_open`` / ``door_close``: the chamber loses heat fast while open.
* ``sensor_break``: PV reads 0x8000 (no value), status bit 5, output 0 %.
* ``over_temperature``: the heater sticks on (failed SSR): the PV climbs past the alarm 1
  threshold (``over_temperature_c``, 40 C by default) and status bit 0 sets.
* ``clear``: undo sensor break, stuck heater and stall.
* ``disconnect``: reset every client connection now (TCP RST).
* ``stall``: answer nothing (requests are neither applied nor answered) for ``stall_s``
  seconds of the simulator's clock.
"""

from __future__ import annotations

import math
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, get_args

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.clock import Clock
from drivers.errors import ProtocolError
from drivers.incubator.registers import (
    FLOAT_BASE,
    NO_VALUE,
    REGISTERS,
    Reg,
    Scaling,
    StatusBits,
    decode_float,
    decode_scaled,
    encode_float,
    encode_scaled,
    encode_status,
    float_address,
    resolution,
)
from simulators.thermal import ShakerModel, ThermalModel, ThermalParams
from simulators.world_api import WorldHooks

__all__ = ["FAULT_KINDS", "FaultKind", "IncubatorSimHandle", "IncubatorSimSpec",
           "IncubatorSimulator", "start_incubator_simulator"]

FaultKind = Literal[
    "door_open", "door_close", "sensor_break", "over_temperature", "clear", "disconnect", "stall"
]
FAULT_KINDS: Final = get_args(FaultKind)
_log = structlog.get_logger()


@dataclass(frozen=True)
class IncubatorSimSpec:
    """Where the simulator listens and its physics knobs (see :class:`ThermalParams`)."""

    instrument_id: str = "incubator"
    host: str = "127.0.0.1"
    port: int = 0
    """Modbus TCP port; 0 picks a free one."""
    rtu_port: int | None = None
    """If set, also serve Modbus RTU framing over TCP here (0 = any free port)."""
    device_id: int = 1
    decimals: int = 1
    ambient_c: float = 21.0
    initial_c: float = 21.0
    time_constant_s: float = 600.0
    door_time_constant_s: float = 180.0
    heater_rise_c: float = 30.0
    proportional_band_c: float = 4.0
    integral_time_s: float = 240.0
    over_temperature_c: float = 40.0
    sp_rate_c_per_min: float = 0.0
    setpoint_low_c: float = 0.0
    setpoint_high_c: float = 60.0
    has_shaker: bool = True
    """False: a bare controller, registers 300-302 answer exception 02."""
    shaker_min_rpm: int = 100
    shaker_max_rpm: int = 1500
    shaker_accel_rpm_per_s: float = 500.0
    stall_s: float = 30.0

    def thermal_params(self) -> ThermalParams:
        return ThermalParams(
            ambient_c=self.ambient_c, initial_c=self.initial_c,
            time_constant_s=self.time_constant_s, door_time_constant_s=self.door_time_constant_s,
            heater_rise_c=self.heater_rise_c, proportional_band_c=self.proportional_band_c,
            integral_time_s=self.integral_time_s, over_temperature_c=self.over_temperature_c,
        )


class IncubatorSimulator:
    """The controller, its shaker and its Modbus listeners."""

    def __init__(self, spec: IncubatorSimSpec, clock: Clock) -> None:
        encode_scaled(spec.setpoint_high_c, spec.decimals)  # validates decimals and range
        self.spec = spec
        self.clock = clock
        self.model = ThermalModel(spec.thermal_params())
        self.model.sp_rate_c_per_min = spec.sp_rate_c_per_min
        self.shaker = ShakerModel(spec.shaker_min_rpm, spec.shaker_max_rpm,
                                  spec.shaker_accel_rpm_per_s)
        self.writes: Counter[int] = Counter()
        """Accepted writes per parameter address (setpoint-wear accounting)."""
        self.requests = 0
        """Requests that reached a mapped address (answered or not)."""
        self._last_t = clock.monotonic()
        self._stall_until: float | None = None
        self._servers: list[ModbusTcpServer] = []
        self.host = spec.host
        self.port = 0
        self.rtu_port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        return f"modbus-tcp://{self.host}:{self.port}"

    @property
    def rtu_address(self) -> str | None:
        """The driver address for the RTU listener, if one is served."""
        if self.rtu_port is None:
            return None
        return f"modbus-rtu://socket://{self.host}:{self.rtu_port}"

    async def start(self) -> None:
        self.port = await self._listen(FramerType.SOCKET, self.spec.port)
        if self.spec.rtu_port is not None:
            self.rtu_port = await self._listen(FramerType.RTU, self.spec.rtu_port)

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            listener = server.transport
            self._reset_clients(server)
            await server.shutdown()  # type: ignore[no-untyped-call]
            if listener is not None:
                await listener.wait_closed()  # type: ignore[attr-defined]

    async def _listen(self, framer: FramerType, port: int) -> int:
        server = ModbusTcpServer(
            self._device(), framer=framer, address=(self.spec.host, port),
            trace_packet=self._trace_packet,
        )
        await server.serve_forever(background=True)
        self._servers.append(server)
        bound: int = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return bound

    def _device(self) -> SimDevice:
        blocks = []
        for reg in REGISTERS.values():
            if reg.address >= Reg.SHAKER_ON and not self.spec.has_shaker:
                continue
            ro = not reg.writable
            blocks.append(SimData(reg.address, datatype=DataType.REGISTERS, readonly=ro))
            if reg.float_mirrored:
                blocks.append(SimData(float_address(reg.address), count=2,
                                      datatype=DataType.REGISTERS, readonly=ro))
        return SimDevice(id=self.spec.device_id, simdata=blocks, action=self._action)

    # ------------------------------------------------------------------ operator / faults

    def open_door(self) -> None:
        self._advance()
        self.model.door_open = True

    def close_door(self) -> None:
        self._advance()
        self.model.door_open = False

    def inject_fault(self, kind: FaultKind) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        _log.info("fault injected", instrument=self.spec.instrument_id, kind=kind)
        self._advance()
        if kind == "door_open":
            self.model.door_open = True
        elif kind == "door_close":
            self.model.door_open = False
        elif kind == "sensor_break":
            self.model.sensor_break = True
        elif kind == "over_temperature":
            self.model.heater_stuck = True
        elif kind == "clear":
            self.model.sensor_break = self.model.heater_stuck = False
            self._stall_until = None
        elif kind == "disconnect":
            for server in self._servers:
                self._reset_clients(server)
        else:
            self._stall_until = self.clock.monotonic() + self.spec.stall_s

    def chamber_temperature_c(self) -> float:
        """The true chamber temperature (what the plate feels), sensor or not."""
        self._advance()
        return self.model.temperature_c

    @property
    def shaking(self) -> bool:
        self._advance()
        return self.shaker.on and self.shaker.rpm > 0

    @property
    def eeprom_writes(self) -> int:
        return sum(n for a, n in self.writes.items() if REGISTERS[a].eeprom)

    def snapshot(self) -> dict[str, object]:
        self._advance()
        m = self.model
        return {
            "temperature_c": round(m.temperature_c, 3), "target_c": m.target_sp_c,
            "working_setpoint_c": round(m.working_sp_c, 3), "output_pct": round(m.output_pct, 1),
            "door_open": m.door_open, "sensor_break": m.sensor_break,
            "heater_stuck": m.heater_stuck, "alarm_1": m.alarm_high, "loop_break": m.loop_break,
            "shaker_on": self.shaker.on, "shaker_rpm": round(self.shaker.rpm),
            "eeprom_writes": self.eeprom_writes, "requests": self.requests,
            "stalled": self._stalled(),
            "connections": sum(len(s.active_connections) for s in self._servers),
            "sim_time_s": self.clock.monotonic(),
        }

    # ------------------------------------------------------------------ Modbus plumbing

    def _stalled(self) -> bool:
        return self._stall_until is not None and self.clock.monotonic() < self._stall_until

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        return b"" if sending and self._stalled() else data  # a stalled device says nothing

    async def _action(  # noqa: PLR0917 (pymodbus fixes the signature)
        self, function_code: int, start_address: int, address: int, count: int,
        registers: list[int], values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        if self._stalled():
            return ExcCodes.DEVICE_BUSY  # not applied; the reply is dropped
        self._advance()
        if values is None:
            for a in range(address, address + count):
                registers[a - start_address] = self._word(a)
            return None
        return self._write(address, [int(v) for v in values])

    def _advance(self) -> None:
        now = self.clock.monotonic()
        dt, self._last_t = now - self._last_t, now
        if dt > 0:
            self.model.advance(dt)
            self.shaker.advance(dt)

    def _value(self, address: int) -> float:
        m, s = self.model, self.shaker
        values: dict[int, float] = {
            Reg.PV: m.temperature_c, Reg.TARGET_SP: m.target_sp_c,
            Reg.MANUAL_OP: m.manual_output_pct, Reg.WORKING_OP: m.output_pct,
            Reg.WORKING_SP: m.working_sp_c, Reg.SP1: m.target_sp_c, Reg.SP2: m.sp2_c,
            Reg.REMOTE_SP: m.remote_sp_c, Reg.OUTPUT_HIGH: m.output_high_pct,
            Reg.OUTPUT_LOW: m.output_low_pct, Reg.SP_RATE: m.sp_rate_c_per_min,
            Reg.LOOP_BREAK_TIME: m.loop_break_time_s, Reg.SHAKER_ON: float(s.on),
            Reg.SHAKER_RPM_SP: s.rpm_setpoint, Reg.SHAKER_RPM: round(s.rpm),
        }
        return values[address]

    def _word(self, address: int) -> int:
        if address >= FLOAT_BASE:
            param, low_half = divmod(address - FLOAT_BASE, 2)
            value = math.nan if param == Reg.PV and self.model.sensor_break else self._value(param)
            return encode_float(value)[low_half]
        reg = REGISTERS[address]
        if address == Reg.STATUS:
            return self._status_word()
        if address == Reg.PV and self.model.sensor_break:
            return NO_VALUE
        value = self._value(address)
        if reg.scaling is Scaling.SCALED:
            limit = 0x7FFF * resolution(self.spec.decimals)
            return encode_scaled(max(-limit, min(limit, value)), self.spec.decimals)
        return int(value)

    def _status_word(self) -> int:
        m = self.model
        return encode_status(StatusBits(
            alarms=(m.alarm_high, False, False, False), sensor_break=m.sensor_break,
            loop_break=m.loop_break, pv_over_range=m.pv_over_range,
        ))

    def _write(self, address: int, words: list[int]) -> ExcCodes | None:
        """A multi-register write is all or nothing, as on the real controller: every value
        is decoded and validated (in order, so a write of both output limits is checked
        against the other new limit) before the first one is applied."""
        setters: list[tuple[int, Callable[[], object]]] = []
        staged = {Reg.OUTPUT_LOW: self.model.output_low_pct,
                  Reg.OUTPUT_HIGH: self.model.output_high_pct}
        i = 0
        while i < len(words):
            a = address + i
            if a >= FLOAT_BASE:
                param, odd = divmod(a - FLOAT_BASE, 2)
                if odd or i + 1 >= len(words):
                    return ExcCodes.ILLEGAL_ADDRESS  # half a float
                try:
                    value: float | None = decode_float(words[i], words[i + 1])
                except ProtocolError:
                    return ExcCodes.ILLEGAL_VALUE
                i += 2
            else:
                param, i = a, i + 1
                scaled = REGISTERS[param].scaling is Scaling.SCALED
                word = words[i - 1]
                value = decode_scaled(word, self.spec.decimals) if scaled else word
            if value is None or (setter := self._setter(param, value, staged)) is None:
                return ExcCodes.ILLEGAL_VALUE
            if param in staged:
                staged[param] = value
            setters.append((param, setter))
        for param, apply in setters:
            apply()
            self.writes[param] += 1
        return None

    def _setter(
        self, param: int, value: float, limits: dict[int, float]
    ) -> Callable[[], object] | None:
        """Validate one parameter write; the function that applies it, or None if refused.
        ``limits`` are the output limits as the write so far would leave them."""
        m, s, spec = self.model, self.shaker, self.spec
        in_sp_range = spec.setpoint_low_c <= value <= spec.setpoint_high_c
        low, high = limits[Reg.OUTPUT_LOW], limits[Reg.OUTPUT_HIGH]
        setters: dict[int, tuple[bool, Callable[[], object]]] = {
            Reg.TARGET_SP: (in_sp_range, lambda: m.set_target(value)),
            Reg.SP1: (in_sp_range, lambda: m.set_target(value)),
            Reg.SP2: (in_sp_range, lambda: setattr(m, "sp2_c", value)),
            Reg.REMOTE_SP: (in_sp_range, lambda: setattr(m, "remote_sp_c", value)),
            Reg.MANUAL_OP: (0 <= value <= 100, lambda: setattr(m, "manual_output_pct", value)),
            Reg.OUTPUT_HIGH: (low <= value <= 100,
                              lambda: m.set_output_limits(m.output_low_pct, value)),
            Reg.OUTPUT_LOW: (0 <= value <= high,
                             lambda: m.set_output_limits(value, m.output_high_pct)),
            Reg.SP_RATE: (0 <= value <= 999, lambda: setattr(m, "sp_rate_c_per_min", value)),
            Reg.LOOP_BREAK_TIME: (0 <= value <= 9999 and value == int(value),
                                  lambda: setattr(m, "loop_break_time_s", int(value))),
            Reg.SHAKER_ON: (value in (0, 1), lambda: setattr(s, "on", value == 1)),
            Reg.SHAKER_RPM_SP: (s.min_rpm <= value <= s.max_rpm and value == int(value),
                                lambda: setattr(s, "rpm_setpoint", int(value))),
        }
        valid, apply = setters.get(param, (False, lambda: None))  # absent: read-only
        return apply if valid else None

    @staticmethod
    def _reset_clients(server: ModbusTcpServer) -> None:
        """Drop every connection with a TCP RST (SO_LINGER 0), as a crashed device would."""
        for conn in list(server.active_connections.values()):
            transport = conn.transport
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()  # type: ignore[attr-defined]


@dataclass
class IncubatorSimHandle:
    simulator: IncubatorSimulator

    @property
    def address(self) -> str:
        return self.simulator.address

    @property
    def rtu_address(self) -> str | None:
        """``modbus-rtu://socket://host:port`` if the spec asked for an RTU listener."""
        return self.simulator.rtu_address

    def describe(self) -> str:
        sim = self.simulator
        text = (f"incubator {sim.spec.instrument_id}: Modbus TCP on {sim.host}:{sim.port}"
                f" (device {sim.spec.device_id})")
        if sim.rtu_port is not None:
            text += f", Modbus RTU over TCP on {sim.host}:{sim.rtu_port}"
        return text

    async def stop(self) -> None:
        await self.simulator.stop()


async def start_incubator_simulator(
    spec: IncubatorSimSpec, clock: Clock, world: WorldHooks | None
) -> IncubatorSimHandle:
    """Start listening; register the chamber with ``world`` if given."""
    sim = IncubatorSimulator(spec, clock)
    await sim.start()
    if world is not None:
        world.register_incubator(
            spec.instrument_id, sim.chamber_temperature_c, lambda: sim.shaking)
    return IncubatorSimHandle(sim)

"""Simulated AutoMate ValveLink8.2 perfusion valve controller on a pty, with its bath.

Wire protocol: ``docs/protocols/perfusion.md`` (codec :mod:`drivers.perfusion.codec`). Three
parts, each testable alone:

* :class:`ValveController`: the eight valves, the modes, the spill latch and the ValveGuard
  faults (unplugged, shorted), as a pure state machine. Serial commands, front buttons and
  TTL inputs all act on it; whichever comes last wins.
* :class:`~simulators.perfusion_bath.BathModel`: what reaches the cell (dead-volume delay,
  then first-order exchange), solved exactly on the injected clock.
* :class:`PerfusionSimulator` serves the controller on a :class:`~simulators.pty_port.PtyPort`;
  :func:`start_perfusion_simulator` is the bench factory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast, get_args

import structlog

from drivers.clock import Clock
from drivers.perfusion.codec import (
    EOL,
    MAX_LINE,
    MODE_MASTER,
    MODE_ONE_ON,
    MODE_PRESELECT,
    MODE_TTL,
    VALVES,
    AcknowledgeSpill,
    CloseAll,
    CloseValve,
    Command,
    ErrorCode,
    ErrorReply,
    Identify,
    IdentityReply,
    ModeSpec,
    OkReply,
    OpenAll,
    OpenValve,
    QueryStatus,
    Reply,
    SetModes,
    StatusReply,
    ValveState,
    command_from_bytes,
    format_reply,
)
from simulators.perfusion_bath import BathModel
from simulators.pty_port import TRANSPORT_FAULTS, PtyPort, TransportFault
from simulators.world_api import WorldHooks

__all__ = [
    "FAULT_KINDS", "BathModel", "FaultKind", "PerfusionSimHandle", "PerfusionSimSpec",
    "PerfusionSimulator", "ValveController", "start_perfusion_simulator",
]

FaultKind = Literal[
    "spill", "unplug", "plug", "short", "repair",
    "garbage", "noise_then_reply", "byte_by_byte", "stall", "close",
]
FAULT_KINDS: Final = get_args(FaultKind)
_VALVE_FAULTS: Final = frozenset({"unplug", "plug", "short", "repair"})
_SUPPORTED_MODES: Final = frozenset({MODE_TTL, MODE_ONE_ON, MODE_PRESELECT, MODE_MASTER})

_log = structlog.get_logger()


class ValveController:
    """The ValveLink8.2's logic. ``changed`` is called after anything that may move a valve."""

    def __init__(
        self, *, address: int = 0, serial: str = "VL8-SIM-0001",
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.serial = serial
        self.open = [False] * VALVES  # index valve - 1
        self.plugged = [True] * VALVES
        self.shorted = [False] * VALVES
        self.ttl = [False] * VALVES
        self.spill_latched = False
        self.modes: dict[int, int | None] = {}
        self._changed = changed or (lambda: None)

    # ------------------------------------------------------------------ serial

    def handle(self, command: Command | ErrorReply) -> Reply | None:
        """The reply to one parsed line; None when it is addressed to another device."""
        if command.address != self.address:
            return None
        if isinstance(command, ErrorReply):
            return command
        code = self._apply(command)
        if isinstance(command, QueryStatus):
            return self.status()
        if isinstance(command, Identify):
            return IdentityReply(self.address, "ValveLink8.2-SIM", self.serial, "1.0")
        self._changed()
        return OkReply(self.address) if code is None else ErrorReply(self.address, code)

    def _apply(self, command: Command) -> ErrorCode | None:
        match command:
            case OpenValve(valve=v):
                return self._open(v, explicit=True)
            case CloseValve(valve=v):
                return self._close(v, explicit=True)
            case OpenAll():
                return self._open_all()
            case CloseAll():
                self.open = [False] * VALVES
                return None
            case SetModes(on=on, modes=modes):
                return self._set_modes(on, modes)
            case AcknowledgeSpill():
                self.spill_latched = False
        return None

    def status(self) -> StatusReply:
        modes = tuple(ModeSpec(n, v) for n, v in sorted(self.modes.items()))
        return StatusReply(self.address, self.valve_states(), modes, self.spill_latched)

    def valve_states(self) -> tuple[ValveState, ...]:
        def state(i: int) -> ValveState:
            if not self.plugged[i]:
                return "unplugged"
            if self.shorted[i]:
                return "shorted"
            return "open" if self.open[i] else "closed"

        return tuple(state(i) for i in range(VALVES))

    # ------------------------------------------------------------------ front panel, TTL

    def press_button(self, valve: int) -> None:
        """A valve's front pushbutton toggles it (whatever its other inputs say)."""
        if self.open[valve - 1]:
            self._close(valve, explicit=False)
        else:
            self._open(valve, explicit=False)
        self._changed()

    def set_ttl(self, valve: int, high: bool) -> None:
        """A TTL input level; in straight-through mode an edge opens (rising) or closes."""
        edge = high != self.ttl[valve - 1]
        self.ttl[valve - 1] = high
        if edge and MODE_TTL in self.modes:
            (self._open if high else self._close)(valve, explicit=False)
            self._changed()

    # ------------------------------------------------------------------ faults

    def trip_spill(self) -> None:
        """The spill sensor closes every valve and latches until acknowledged."""
        self.spill_latched = True
        self.open = [False] * VALVES
        self._changed()

    def set_valve_fault(self, kind: str, valve: int) -> None:
        """``unplug``/``plug`` a valve cable, ``short`` it (the valve drops closed) or
        ``repair`` the short."""
        i = valve - 1
        if kind in ("unplug", "short"):
            self.open[i] = False
        if kind in ("unplug", "plug"):
            self.plugged[i] = kind == "plug"
        else:
            self.shorted[i] = kind == "short"
        self._update_master()
        self._changed()

    # ------------------------------------------------------------------ logic

    def solution_valves(self) -> list[int]:
        """Open valves that carry a solution (the master valve is a shut-off, not one)."""
        master = self.modes.get(MODE_MASTER)
        open_ = [v for v in range(1, VALVES + 1) if self.open[v - 1] and v != master]
        if master is not None and open_ and not self.open[master - 1]:
            return []  # the master shut-off cannot open: nothing flows
        return open_

    def _open(self, valve: int, *, explicit: bool) -> ErrorCode | None:
        i = valve - 1
        if self.spill_latched:
            return ErrorCode.SPILL_LATCHED
        if explicit and valve == self.modes.get(MODE_MASTER):
            return ErrorCode.MODE_CONFLICT
        if not self.plugged[i]:
            return ErrorCode.VALVE_UNPLUGGED  # ValveGuard: not even tried
        if self.shorted[i]:
            return ErrorCode.VALVE_SHORTED
        if MODE_ONE_ON in self.modes:
            self.open = [False] * VALVES
        self.open[i] = True
        self._update_master()
        return None

    def _close(self, valve: int, *, explicit: bool) -> ErrorCode | None:
        if explicit and valve == self.modes.get(MODE_MASTER):
            return ErrorCode.MODE_CONFLICT
        was_open = self.open[valve - 1]
        self.open[valve - 1] = False
        rest = self.modes.get(MODE_PRESELECT)
        if was_open and rest is not None and rest != valve and not self.solution_valves():
            self._open(rest, explicit=False)  # preselect: the bath never runs dry
        self._update_master()
        return None

    def _open_all(self) -> ErrorCode | None:
        if self.spill_latched:
            return ErrorCode.SPILL_LATCHED
        if MODE_ONE_ON in self.modes:
            return ErrorCode.MODE_CONFLICT
        master = self.modes.get(MODE_MASTER)
        for i in range(VALVES):
            if self.plugged[i] and not self.shorted[i] and i + 1 != master:
                self.open[i] = True
        self._update_master()
        return None

    def _set_modes(self, on: bool, specs: tuple[ModeSpec, ...]) -> ErrorCode | None:
        if not on:
            for spec in specs:
                self.modes.pop(spec.number, None)
            return None
        new = dict(self.modes) | {s.number: s.valve for s in specs}
        master, rest = new.get(MODE_MASTER), new.get(MODE_PRESELECT)
        if (
            not set(new) <= _SUPPORTED_MODES
            or {MODE_TTL, MODE_ONE_ON} <= set(new)
            or (master is not None and master == rest)
        ):
            return ErrorCode.MODE_CONFLICT
        self.modes = new
        if MODE_ONE_ON in new and len(opened := self.solution_valves()) > 1:
            for v in opened[1:]:  # entering one-on keeps the lowest-numbered valve
                self.open[v - 1] = False
        self._update_master()
        return None

    def _update_master(self) -> None:
        master = self.modes.get(MODE_MASTER)
        if master is None:
            return
        i = master - 1
        others = any(self.open[j] for j in range(VALVES) if j != i)
        self.open[i] = others and self.plugged[i] and not self.shorted[i]


# ---------------------------------------------------------------------------- served


@dataclass(frozen=True)
class PerfusionSimSpec:
    """One simulated ValveLink8.2 and its bath. Defaults: gravity perfusion at 3 ml/min, a
    250 ul manifold and line (5 s delay), a ~0.5 ml bath (10 s exchange time constant)."""

    instrument_id: str = "perfusion"
    link_path: Path | None = None
    device_address: int = 0
    flow_ul_per_s: float = 50.0
    dead_volume_ul: float = 250.0
    exchange_tau_s: float = 10.0
    initial_solution: int = 1
    serial: str = "VL8-SIM-0001"


class PerfusionSimulator:
    """The controller and its bath behind a pty, on the injected ``clock``."""

    def __init__(self, spec: PerfusionSimSpec, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock
        self.bath = BathModel(
            flow_ul_per_s=spec.flow_ul_per_s, dead_volume_ul=spec.dead_volume_ul,
            exchange_tau_s=spec.exchange_tau_s, initial_solution=spec.initial_solution,
            start_s=clock.monotonic(),
        )
        self.controller = ValveController(
            address=spec.device_address, serial=spec.serial, changed=self._sync_bath
        )
        self.port = PtyPort(link_path=spec.link_path, eol=EOL, max_line=MAX_LINE - len(EOL))
        self._task: asyncio.Task[None] | None = None
        self.lines_received = 0
        """Every line the host sent, answered or not (tests check what a driver sends)."""

    @property
    def address(self) -> str:
        return self.port.address

    async def start(self) -> None:
        self._task = asyncio.create_task(
            self.port.serve(self._on_line), name=f"perfusion-sim-{self.spec.instrument_id}"
        )

    async def stop(self) -> None:
        await self.port.stop()
        task, self._task = self._task, None
        if task is not None:
            await task

    def inject_fault(self, kind: FaultKind, valve: int | None = None) -> None:
        """``spill``; ``unplug``/``plug``/``short``/``repair`` (need ``valve``); or a
        transport fault of the pty for the next reply (``garbage``, ``noise_then_reply``,
        ``byte_by_byte``, ``stall``, ``close``; inject twice for two replies)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        _log.info("fault injected", instrument=self.spec.instrument_id, kind=kind, valve=valve)
        if kind in TRANSPORT_FAULTS:
            self.port.inject(cast(TransportFault, kind))
        elif kind == "spill":
            self.controller.trip_spill()
        elif kind in _VALVE_FAULTS:
            if valve is None or not 1 <= valve <= VALVES:
                raise ValueError(f"fault {kind!r} needs a valve 1-{VALVES}")
            self.controller.set_valve_fault(kind, valve)

    def press_button(self, valve: int) -> None:
        self.controller.press_button(valve)

    def set_ttl(self, valve: int, high: bool) -> None:
        self.controller.set_ttl(valve, high)

    def bath_composition(self, at: float | None = None) -> dict[int, float]:
        """Fraction of each solution in the bath at ``at`` (default: the clock's now)."""
        return self.bath.composition(self.clock.monotonic() if at is None else at)

    async def _on_line(self, raw: bytes) -> bytes | None:
        self.lines_received += 1
        command = command_from_bytes(raw)
        if command is None:
            return None
        reply = self.controller.handle(command)
        return None if reply is None else format_reply(reply)

    def _sync_bath(self) -> None:
        self.bath.set_inlet(self.clock.monotonic(), self.controller.solution_valves())


@dataclass
class PerfusionSimHandle:
    simulator: PerfusionSimulator

    @property
    def address(self) -> str:
        return self.simulator.address

    def describe(self) -> str:
        sim = self.simulator
        return (f"{sim.spec.instrument_id}  {sim.address}  (pty {sim.port.slave_path}, "
                f"ValveLink8 ASCII, device address {sim.spec.device_address})")

    async def stop(self) -> None:
        await self.simulator.stop()


async def start_perfusion_simulator(
    spec: PerfusionSimSpec, clock: Clock, world: WorldHooks | None = None
) -> PerfusionSimHandle:
    """Start one perfusion controller on a pty; its bath is the world's (the patch rig's
    cell answers what it holds)."""
    sim = PerfusionSimulator(spec, clock)
    if world is not None:
        world.register_bath(spec.instrument_id, sim.bath_composition)
    await sim.start()
    return PerfusionSimHandle(sim)

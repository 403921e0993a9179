"""Simulated cell harvester served on a pty (a real ``/dev/pts/N`` the driver opens like a
serial port, optionally behind a stable symlink).

Wire protocol: ``docs/protocols/harvester.md`` (codec reused from
:mod:`drivers.harvester.codec`); state machine and sensors:
:mod:`simulators.harvester_model`. With a world, the plate is the one the world has at
``harvester:<id>``, and when a dry step completes on a mat that holds an aspirated plate the
world is asked to harvest it (:meth:`~simulators.world_api.WorldHooks.harvest`).

Faults (:meth:`HarvesterSimulator.inject_fault`):

* ``low_vacuum``: a leak; the pump reaches only about -0.15 bar and every vacuum step
  faults (10) once it has had time to settle.
* ``mat_not_seated``: the mat lifts; a running vacuum step faults (11), new ones are
  refused with ``ER 11``.
* ``clogged_wells``: the given wells drain slowly on the next aspirate (it takes longer and
  ``AN?`` lists them); the world leaves residue in them.
* ``buffer_empty`` / ``waste_full``: the reservoir is empty / the trap full (12 / 13).
* ``clear``: the operator fixes everything above (refills, empties, reseats, seals);
  a latched fault still needs ``AB`` from the host.
* ``empty_waste`` / ``refill_buffer`` / ``seat_mat``: the operator's routine care, one
  thing each (the virtual operator does them when a harvest's precondition asks).
* ``bad_checksum``: the next reply carries a wrong checksum (inject twice for two).
* ``garbage``, ``noise_then_reply``, ``byte_by_byte``, ``stall``, ``close``: transport
  faults of the :class:`~simulators.pty_port.PtyPort` on the next reply (inject twice for
  two).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import structlog

from drivers.clock import Clock
from drivers.errors import ProtocolError
from drivers.harvester.codec import (
    EOL,
    MAX_LINE,
    WELLS,
    CommandError,
    ErrorCode,
    Identify,
    Identity,
    OkReply,
    QueryAnomalies,
    QueryMat,
    QueryStatus,
    Reply,
    error_reply,
    format_anomalies,
    format_identity,
    format_mat,
    format_reply,
    format_status,
    open_frame,
    parse_command,
)
from simulators.harvester_model import Cycle, HarvesterModel, HarvesterParams
from simulators.pty_port import TRANSPORT_FAULTS, PtyPort
from simulators.world_api import FilterMat, HarvestSettings, WorldHooks

__all__ = [
    "FAULT_KINDS", "FaultKind", "HarvesterSimHandle", "HarvesterSimSpec", "HarvesterSimulator",
    "start_harvester_simulator",
]

FaultKind = Literal[
    "low_vacuum", "mat_not_seated", "clogged_wells", "buffer_empty", "waste_full", "clear",
    "empty_waste", "refill_buffer", "seat_mat",
    "bad_checksum", "garbage", "noise_then_reply", "byte_by_byte", "stall", "close",
]
FAULT_KINDS: Final = get_args(FaultKind)
DEFAULT_CLOGGED: Final = ("C4", "F9")
_log = structlog.get_logger()


@dataclass(frozen=True)
class HarvesterSimSpec:
    """Identity, where the simulator appears, and its timing and plumbing."""

    instrument_id: str = "harvester"
    link_path: Path | None = None
    """A stable symlink to the pty (what the daemon's config names); None: the bare pty."""
    serial: str = "H96-0001"
    aspirate_s: float = 15.0
    clogged_extra_s: float = 6.0
    wash_s_per_ml: float = 8.0
    release_s: float = 3.0
    vacuum_bar: float = -0.65
    buffer_capacity_ml: float = 4000.0
    waste_capacity_ml: float = 2000.0
    auto_load_mat: bool = True
    plate_present: bool = True
    """Without a world: whether a plate sits in the harvester at start."""

    def params(self) -> HarvesterParams:
        return HarvesterParams(
            aspirate_s=self.aspirate_s, clogged_extra_s=self.clogged_extra_s,
            wash_s_per_ml=self.wash_s_per_ml, release_s=self.release_s,
            vacuum_bar=self.vacuum_bar, buffer_capacity_ml=self.buffer_capacity_ml,
            waste_capacity_ml=self.waste_capacity_ml, auto_load_mat=self.auto_load_mat,
        )


class HarvesterSimulator:
    """The harvester behind a :class:`PtyPort`; :meth:`start` serves it, :meth:`stop` ends."""

    def __init__(
        self, spec: HarvesterSimSpec, clock: Clock, world: WorldHooks | None = None
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.world = world
        self.location = f"harvester:{spec.instrument_id}"
        self.plate_loaded = spec.plate_present
        self.model = HarvesterModel(spec.params(), self._plate_present, self._dried)
        self.mats: list[FilterMat] = []
        """Mats the world harvested here, oldest first."""
        self.cycles: list[Cycle] = []
        """Every completed cycle (aspirate + dry), with or without a world."""
        self.identity = Identity("BrandelSim", "HARV96-SIM", spec.serial, "1.4")
        self.port: PtyPort | None = None
        self._bad_checksums = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not started")
        return self.port.address

    async def start(self) -> None:
        self.port = PtyPort(link_path=self.spec.link_path, eol=EOL, max_line=MAX_LINE)
        name = self.spec.instrument_id
        self._tasks = [
            asyncio.create_task(self.port.serve(self._on_line), name=f"harvester-{name}-serve"),
            asyncio.create_task(self._run_events(), name=f"harvester-{name}-events"),
        ]

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def __aenter__(self) -> HarvesterSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ operator API

    def inject_fault(self, kind: FaultKind, wells: Collection[str] = ()) -> None:
        """Inject ``kind`` (see the module docstring); ``wells`` for ``clogged_wells``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        now = self.clock.monotonic()
        _log.info("fault injected", instrument=self.spec.instrument_id, kind=kind)
        model = self.model
        if kind in TRANSPORT_FAULTS:
            if self.port is not None:
                self.port.inject(kind)  # type: ignore[arg-type]
        elif kind == "bad_checksum":
            self._bad_checksums += 1
        elif kind == "low_vacuum":
            model.set_leak(True, now)
        elif kind == "mat_not_seated":
            model.unseat_mat(now)
        elif kind == "clogged_wells":
            chosen = tuple(wells) or DEFAULT_CLOGGED
            if bad := [w for w in chosen if w not in WELLS]:
                raise ValueError(f"not wells of a 96-well plate: {bad}")
            model.clog_next = frozenset(chosen)
        elif kind == "buffer_empty":
            model.advance(now)
            model.buffer_ml = 0.0
        elif kind == "waste_full":
            model.advance(now)
            model.waste_ml = model.params.waste_capacity_ml
        elif kind == "empty_waste":  # the operator's routine care, not a fault
            model.advance(now)
            model.waste_ml = 0.0
        elif kind == "refill_buffer":
            model.advance(now)
            model.buffer_ml = model.params.buffer_capacity_ml
        elif kind == "seat_mat":  # a fresh mat in the holder
            model.advance(now)
            if not model.mat_seated:
                model.mat_seated, model.cycle = True, Cycle(clogged=model.cycle.clogged)
        else:
            self.clear_faults()
        self._wake.set()

    def clear_faults(self) -> None:
        """The operator fixes every condition (refill, empty, reseat, seal the leak)."""
        now = self.clock.monotonic()
        model = self.model
        model.set_leak(False, now)
        model.buffer_ml = model.params.buffer_capacity_ml
        model.waste_ml = 0.0
        model.mat_seated = True
        model.clog_next = frozenset()
        self._bad_checksums = 0
        self._wake.set()

    def load_plate(self, present: bool = True) -> None:
        """Without a world: put a plate in (or take it out)."""
        self.plate_loaded = present

    def snapshot(self) -> dict[str, object]:
        status = self.model.status(self.clock.monotonic())
        return {
            "state": status.state, "step": status.step, "progress_pct": status.progress_pct,
            "vacuum_bar": status.vacuum_bar, "buffer_pct": status.buffer_pct,
            "waste_pct": status.waste_pct, "mat_seated": status.mat_seated,
            "plate_present": status.plate_present, "fault_code": status.fault_code,
            "mat": asdict(self.model.mat_report(self.clock.monotonic())),
            "address": None if self.port is None else self.port.address,
            "mats": [m.mat_id for m in self.mats], "sim_time_s": self.clock.monotonic(),
        }

    # ------------------------------------------------------------------ wire

    async def _on_line(self, line: bytes) -> bytes | None:
        if not line:
            return None  # a bare CR clears the input buffer on real instruments: no reply
        reply = self._reply_to(line)
        frame = format_reply(reply)
        if self._bad_checksums:
            self._bad_checksums -= 1
            frame = frame[:-2] + b"%02X" % (int(frame[-2:], 16) ^ 0x5A)
        return frame

    def _reply_to(self, line: bytes) -> Reply:
        try:
            body = open_frame(line).body
        except ProtocolError:
            return error_reply(ErrorCode.BAD_CHECKSUM)
        try:
            command = parse_command(body)
        except CommandError as exc:
            detail = body.partition(" ")[0][:12] if exc.code == 31 else str(exc)
            return error_reply(ErrorCode(exc.code), detail)
        now = self.clock.monotonic()
        if isinstance(command, Identify):
            return OkReply(format_identity(self.identity))
        if isinstance(command, QueryStatus):
            return OkReply(format_status(self.model.status(now)))
        if isinstance(command, QueryMat):
            return OkReply(format_mat(self.model.mat_report(now)))
        if isinstance(command, QueryAnomalies):
            self.model.advance(now)
            return OkReply(format_anomalies(self.model.cycle.clogged))
        refusal = self.model.start(command, now)
        self._wake.set()
        if refusal is not None:
            return error_reply(refusal.code, refusal.detail)
        return OkReply()

    # ------------------------------------------------------------------ time

    async def _run_events(self) -> None:
        """Wake the model when its next event is due, so completions (and the world's
        harvest) happen on time even if nobody asks."""
        while True:
            self._wake.clear()
            due = self.model.next_event()
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = None
            if math.isfinite(due):
                sleeper = asyncio.ensure_future(self._sleep_until(due))
            try:
                await asyncio.wait([f for f in (waiter, sleeper) if f is not None],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (waiter, sleeper):
                    if fut is not None and not fut.done():
                        fut.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await fut
            self.model.advance(self.clock.monotonic())

    async def _sleep_until(self, due: float) -> None:
        # The delay is taken when this task first runs, not when it is created: the clock
        # may have moved in between (and a virtual clock never wakes a sleep(0) by itself).
        delay = due - self.clock.monotonic()
        if delay > 0:
            await self.clock.sleep(delay)

    def _plate_present(self) -> bool:
        if self.world is not None:
            return self.world.plate_at(self.location) is not None
        return self.plate_loaded

    def _dried(self, cycle: Cycle) -> None:
        self.cycles.append(cycle)
        if self.world is None:
            return
        per_cycle = cycle.wash_s / cycle.washes if cycle.washes else 0.0
        settings = HarvestSettings(
            prewet_pei=cycle.prewet, washes=cycle.washes, wash_volume_ml=cycle.wash_volume_ml,
            wash_temperature_c=4.0, wash_seconds_per_cycle=per_cycle,
            clogged_wells=cycle.clogged,
        )
        try:
            mat = self.world.harvest(self.location, settings)
        except ValueError as exc:  # the plate was taken away mid-cycle
            _log.warning("nothing to harvest", instrument=self.spec.instrument_id, error=str(exc))
            return
        self.mats.append(mat)


@dataclass
class HarvesterSimHandle:
    simulator: HarvesterSimulator

    @property
    def address(self) -> str:
        return self.simulator.address

    def describe(self) -> str:
        sim = self.simulator
        port = sim.port
        where = port.slave_path if port is not None else "?"
        if sim.spec.link_path is not None:
            where = f"{sim.spec.link_path} -> {where}"
        return f"harvester {sim.spec.instrument_id}: RS-232 on pty {where}"

    async def stop(self) -> None:
        await self.simulator.stop()


async def start_harvester_simulator(
    spec: HarvesterSimSpec, clock: Clock, world: WorldHooks | None
) -> HarvesterSimHandle:
    """Open the pty and serve the harvester on it until the handle is stopped."""
    sim = HarvesterSimulator(spec, clock, world)
    await sim.start()
    return HarvesterSimHandle(sim)

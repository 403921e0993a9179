"""The simulated counter's state machine: commands in, reply lines out, no sockets.

A count is planned in full when it starts (:func:`simulators.counting.plan_count`) and
revealed as the clock passes each position's end, so the count keeps running whether or not
a client is connected, and no background task is needed. States::

    IDLE --COUN:STAR--> COUNTING --last position ends--> DONE
                           |--COUN:ABOR----------------> ABORTED (210 aborted by host)
                           |--door opens---------------> ABORTED (202 door open)
                           '--PMT high-voltage fault---> FAULT   (220)
    any state --*RST--> IDLE;  DONE/ABORTED/FAULT --COUN:STAR--> COUNTING (new count id)
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.clock import Clock
from drivers.counter.codec import (
    MAX_RECORDS_PER_REPLY,
    Abort,
    Command,
    ErrorCode,
    ErrorReply,
    Fetch,
    Identify,
    IdentityReply,
    QueryCountTime,
    QueryDetectors,
    QueryDoor,
    QueryError,
    QueryIsotope,
    QueryPlate,
    QueryPrecision,
    QueryStatus,
    Reset,
    SetCountTime,
    SetIsotope,
    SetPrecision,
    StartCount,
    State,
    StatusReply,
    WellCount,
    format_error,
    format_error_entry,
    format_float,
    format_identity,
    format_ok,
    format_records,
    format_status,
)
from simulators.counting import DetectorBank, Medium, PhysicsConfig, Plate, Position, plan_count

__all__ = ["CountRun", "CounterModel"]

VENDOR = "PerkinSim"
MODEL = "MicroBeta2-SIM"
FIRMWARE = "2.1.0"
_ERROR_QUEUE = 16


@dataclass
class CountRun:
    """One count: its plan, and how (and when) it ended early, if it did."""

    count_id: int
    plan: tuple[Position, ...]
    ends: list[float] = field(init=False)
    cumulative: list[int] = field(init=False)
    records: list[WellCount] = field(init=False)
    stopped_at: float | None = None
    stop_state: State = "ABORTED"
    fault_code: int = 0
    fault_text: str = ""

    def __post_init__(self) -> None:
        self.ends = [p.end_s for p in self.plan]
        self.records = [w for p in self.plan for w in p.wells]
        self.cumulative = [0]
        for p in self.plan:
            self.cumulative.append(self.cumulative[-1] + len(p.wells))

    @property
    def total(self) -> int:
        return len(self.records)

    def done(self, now: float) -> int:
        horizon = now if self.stopped_at is None else min(now, self.stopped_at)
        return self.cumulative[bisect.bisect_right(self.ends, horizon)]

    def state(self, now: float) -> State:
        if self.stopped_at is not None:
            return self.stop_state
        return "DONE" if self.done(now) == self.total else "COUNTING"

    def stop(self, now: float, state: State, code: int, text: str) -> None:
        """End the count now; wells of the position in progress are lost."""
        if self.state(now) == "COUNTING":
            self.stopped_at, self.stop_state = now, state
            self.fault_code, self.fault_text = code, text


class CounterModel:
    """Everything the counter knows, driven by commands and an injected clock."""

    def __init__(
        self,
        *,
        detectors: int = 12,
        clock: Clock,
        rng: random.Random,
        physics: PhysicsConfig | None = None,
        serial: str = "MB2-0001",
    ) -> None:
        self.detectors = detectors
        self.clock = clock
        self.rng = rng
        self.physics = physics or PhysicsConfig()
        self.serial = serial
        self.bank = DetectorBank.create(rng, detectors, self.physics)
        self.door_open = False
        self.plate: Plate | None = None
        self.run: CountRun | None = None
        self.count_time_s = 60.0
        self.precision_pct = 0.0
        self.isotope = "H3"
        self.errors: deque[ErrorReply] = deque(maxlen=_ERROR_QUEUE)
        self._next_count_id = 1

    # ------------------------------------------------------------------ operator actions

    def load_plate(
        self,
        plate_id: str,
        dpm_by_well: Mapping[str, float],
        luminescence_cpm_by_well: Mapping[str, float] | None = None,
        *,
        medium: Medium = "filtermat",
        quench_by_well: Mapping[str, float] | None = None,
    ) -> None:
        if self.counting:
            raise RuntimeError("cannot change the plate while counting")
        self.plate = Plate(
            plate_id=plate_id,
            dpm_by_well=dict(dpm_by_well),
            luminescence_cpm_by_well=dict(luminescence_cpm_by_well or {}),
            quench_by_well=dict(quench_by_well or {}),
            medium=medium,
            loaded_at_s=self.clock.monotonic(),
        )

    def unload_plate(self) -> None:
        if self.counting:
            raise RuntimeError("cannot take the plate out while counting")
        self.plate = None

    def open_door(self) -> None:
        self.door_open = True
        if self.run is not None:
            self.run.stop(self.clock.monotonic(), "ABORTED", ErrorCode.DOOR_OPEN, "door open")

    def close_door(self) -> None:
        self.door_open = False

    def high_voltage_fault(self) -> None:
        if self.run is not None:
            text = "PMT high voltage fault"
            self.run.stop(self.clock.monotonic(), "FAULT", ErrorCode.HV_FAULT, text)

    @property
    def counting(self) -> bool:
        return self.run is not None and self.run.state(self.clock.monotonic()) == "COUNTING"

    def completed(self) -> list[WellCount]:
        """Every record counted so far (the oracle tests compare the driver against)."""
        if self.run is None:
            return []
        return self.run.records[: self.run.done(self.clock.monotonic())]

    def status(self) -> StatusReply:
        now = self.clock.monotonic()
        if self.run is None:
            return StatusReply("IDLE", 0, 0, 0, 0, "")
        run = self.run
        return StatusReply(
            run.state(now), run.done(now), run.total, run.count_id, run.fault_code,
            run.fault_text,
        )

    # ------------------------------------------------------------------ commands

    def handle(self, command: Command | ErrorReply) -> str:
        """The reply line (without terminator) to one parsed command."""
        if isinstance(command, ErrorReply):
            return self._error(command.code, command.message)
        match command:
            case Identify():
                return format_identity(IdentityReply(VENDOR, MODEL, self.serial, FIRMWARE))
            case Reset():
                self.run = None
                self.count_time_s, self.precision_pct, self.isotope = 60.0, 0.0, "H3"
                self.errors.clear()
                return format_ok()
            case QueryError():
                entry = self.errors.popleft() if self.errors else ErrorReply(0, "No error")
                return format_error_entry(entry)
            case QueryDetectors():
                return str(self.detectors)
            case QueryDoor():
                return "OPEN" if self.door_open else "CLOSED"
            case QueryPlate():
                return "NONE" if self.plate is None else self.plate.plate_id
            case QueryCountTime():
                return format_float(self.count_time_s)
            case QueryPrecision():
                return format_float(self.precision_pct)
            case QueryIsotope():
                return self.isotope
            case SetCountTime() | SetPrecision() | SetIsotope():
                return self._configure(command)
            case StartCount(wells=wells):
                return self._start(wells)
            case QueryStatus():
                return format_status(self.status())
            case Fetch(start_index=start):
                if self.run is None:
                    return self._error(ErrorCode.NO_COUNT, "No count to fetch from")
                done = self.completed()
                return format_records(done[start : start + MAX_RECORDS_PER_REPLY])
            case Abort():
                if self.run is not None:
                    now = self.clock.monotonic()
                    self.run.stop(now, "ABORTED", ErrorCode.ABORTED_BY_HOST, "aborted by host")
                return format_ok()
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    def _configure(self, command: SetCountTime | SetPrecision | SetIsotope) -> str:
        if self.counting:
            return self._error(ErrorCode.BUSY, "Busy: count in progress")
        match command:
            case SetCountTime(seconds=seconds):
                self.count_time_s = seconds
            case SetPrecision(percent=percent):
                self.precision_pct = percent
            case SetIsotope(isotope=isotope):
                self.isotope = isotope
        return format_ok()

    def _start(self, wells: tuple[str, ...] | None) -> str:
        if self.counting:
            return self._error(ErrorCode.BUSY, "Busy: count in progress")
        if self.door_open:
            return self._error(ErrorCode.DOOR_OPEN, "Door open")
        if self.plate is None:
            return self._error(ErrorCode.NO_PLATE, "No plate loaded")
        plan = plan_count(
            self.rng, plate=self.plate, bank=self.bank, physics=self.physics,
            isotope=self.isotope, count_time_s=self.count_time_s,
            precision_pct=self.precision_pct, wells=wells, start_s=self.clock.monotonic(),
        )
        self.run = CountRun(self._next_count_id, plan)
        self._next_count_id += 1
        return format_ok(str(self.run.count_id), str(self.run.total))

    def _error(self, code: int, message: str) -> str:
        entry = ErrorReply(code, message)
        self.errors.append(entry)
        return format_error(entry.code, entry.message)

"""The harvester's state machine and sensors, as a pure model of time.

Nothing here waits or does I/O: every method takes ``now`` (seconds of the simulator's
clock) and first brings the model up to that time (:meth:`HarvesterModel.advance`), so a
step completes, a reservoir runs dry or a pump fails at the right simulated instant however
rarely the host asks. The simulator (:mod:`simulators.harvester`) owns the clock and wakes
the model at :meth:`HarvesterModel.next_event` to run completion side effects on time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.harvester.codec import (
    WELLS,
    Abort,
    Aspirate,
    Command,
    Dry,
    ErrorCode,
    MatReport,
    Prewet,
    Release,
    State,
    Status,
    Step,
    Wash,
)

__all__ = ["Cycle", "HarvesterModel", "HarvesterParams", "Refusal"]

_VACUUM_STEPS = ("PW", "AS", "WS", "DR")
_EPS_ML = 1e-6


@dataclass(frozen=True)
class HarvesterParams:
    """Timing and plumbing of one harvester; defaults give a 96-well plate in ~1.5 min."""

    aspirate_s: float = 15.0
    clogged_extra_s: float = 6.0
    """Clogged wells drain slowly: the aspirate takes this much longer."""
    wash_s_per_ml: float = 8.0
    """Seconds per wash cycle per mL per well."""
    release_s: float = 3.0
    vacuum_bar: float = -0.65
    leak_vacuum_bar: float = -0.15
    vacuum_tau_s: float = 0.8
    vacuum_settle_s: float = 2.0
    """After this long pulling, a vacuum weaker than ``vacuum_fault_bar`` is a fault."""
    vacuum_fault_bar: float = -0.3
    buffer_capacity_ml: float = 4000.0
    waste_capacity_ml: float = 2000.0
    well_volume_ml: float = 0.25
    pei_ml_per_well_s: float = 0.005
    wells: int = 96
    auto_load_mat: bool = True
    """The virtual operator puts a fresh mat in as soon as one is released."""


@dataclass
class Cycle:
    """What has been done to the mat now seated (reset when it is released)."""

    prewet: bool = False
    began: bool = False  # an aspirate started on this mat (the plate's liquid reached it)
    aspirated: bool = False
    washes: int = 0
    wash_volume_ml: float = 0.0
    wash_s: float = 0.0
    clogged: tuple[str, ...] = ()
    harvested: bool = False


@dataclass(frozen=True)
class Refusal:
    """A command the instrument refuses, with its error code and detail."""

    code: ErrorCode
    detail: str = ""


@dataclass
class HarvesterModel:
    params: HarvesterParams
    plate_present: Callable[[], bool]
    on_dried: Callable[[Cycle], None] = lambda cycle: None
    """Called once when a dry step completes on a mat that holds an aspirated plate."""
    state: State = "IDLE"
    step: Step = "NONE"
    command: Command | None = None
    fault: int = 0
    mat_seated: bool = True
    leak: bool = False
    buffer_ml: float = 0.0
    waste_ml: float = 0.0
    clog_next: frozenset[str] = frozenset()
    cycle: Cycle = field(default_factory=Cycle)
    mats_made: int = 0
    """Complete harvests (a dry after an aspirate) since power-on: ``MT?``'s ``made``."""
    _now: float = 0.0
    _start: float = 0.0
    _duration: float = 0.0
    _done: float = 0.0
    _vac: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (from, to, since)

    def __post_init__(self) -> None:
        self.buffer_ml = self.params.buffer_capacity_ml

    # ------------------------------------------------------------------ time

    def advance(self, now: float) -> None:
        """Run the model up to ``now``: flows, then at most one event per loop turn."""
        while self._now < now:
            t = min(now, self.next_event())
            self._flow(t - self._now)
            self._now = t
            if self.state != "BUSY":
                continue
            if self.step in _VACUUM_STEPS and self._vacuum_failed(t):
                self._trip(ErrorCode.LOW_VACUUM)
            elif self.step == "WS" and self.buffer_ml <= _EPS_ML:
                self._trip(ErrorCode.BUFFER_EMPTY)
            elif (self.step in _VACUUM_STEPS
                  and self.waste_ml >= self.params.waste_capacity_ml - _EPS_ML):
                self._trip(ErrorCode.WASTE_FULL)
            elif t >= self._start + self._duration:
                self._complete()

    def next_event(self) -> float:
        """The next simulated instant at which something happens by itself (inf: none)."""
        if self.state != "BUSY":
            return math.inf
        p = self.params
        events = [self._start + self._duration]
        if self.step in _VACUUM_STEPS:
            events.append(max(self._start + p.vacuum_settle_s, self._vacuum_crossing()))
        rate_in, rate_out = self._rates()
        if rate_out > 0:
            events.append(self._now + self.buffer_ml / rate_out)
        if rate_in > 0:
            events.append(self._now + (p.waste_capacity_ml - self.waste_ml) / rate_in)
        # Conditions already true now are caught by advance()'s checks: only future events.
        return min((e for e in events if e > self._now), default=math.inf)

    # ------------------------------------------------------------------ commands

    def start(self, command: Command, now: float) -> Refusal | None:
        """Start a step (or abort); None when accepted."""
        self.advance(now)
        if isinstance(command, Abort):
            if self.state == "BUSY":
                self._stop_pulling()
            self.state, self.fault, self.command = "IDLE", 0, None
            return None
        if self.state == "BUSY":
            if command == self.command:
                return None  # a repeat of the running step (e.g. after a garbled ack)
            return Refusal(ErrorCode.BUSY, f"step {self.step} running")
        if self.state == "FAULT":
            return Refusal(ErrorCode(self.fault), "latched, send AB")
        if refusal := self._check(command):
            return refusal
        self.step, self.command, self.state = _step_of(command), command, "BUSY"
        self._start, self._duration = now, self._duration_of(command)
        if self.step in _VACUUM_STEPS:
            self._pull(self._target())
        if isinstance(command, Aspirate):
            self.cycle.began = True
        if isinstance(command, Prewet):
            self.cycle.prewet = True
        if self._duration <= 0:
            self._complete()  # e.g. releasing a mat that is already out
        return None

    def status(self, now: float) -> Status:
        self.advance(now)
        p = self.params
        running = self.step == "WS" and self.state == "BUSY"
        progress = 100 if self._duration <= 0 else (self._done - self._start) / self._duration
        if self.state == "BUSY":
            progress = (now - self._start) / self._duration
        cycle = 0
        if running and isinstance(self.command, Wash):
            cycle = min(self.command.cycles, 1 + int(progress * self.command.cycles))
        return Status(
            state=self.state, step=self.step, cycle=cycle,
            progress_pct=max(0, min(100, math.floor(progress * 100 + 1e-9))),
            vacuum_bar=round(self.vacuum_bar(now), 2),
            buffer_pct=round(100 * max(0.0, self.buffer_ml) / p.buffer_capacity_ml, 1),
            waste_pct=round(min(100.0, 100 * self.waste_ml / p.waste_capacity_ml), 1),
            mat_seated=self.mat_seated, plate_present=self.plate_present(),
            fault_code=self.fault,
        )

    def mat_report(self, now: float) -> MatReport:
        self.advance(now)
        c = self.cycle
        return MatReport(seated=self.mat_seated, prewet=c.prewet, aspirated=c.aspirated,
                         washes=min(99, c.washes), dried=c.harvested,
                         made=self.mats_made % 100000, began=c.began)

    def vacuum_bar(self, now: float) -> float:
        start, target, since = self._vac
        return target + (start - target) * math.exp(-(now - since) / self.params.vacuum_tau_s)

    # ------------------------------------------------------------------ faults

    def unseat_mat(self, now: float) -> None:
        self.advance(now)
        self.mat_seated = False
        if self.state == "BUSY" and self.step in _VACUUM_STEPS:
            self._trip(ErrorCode.MAT_NOT_SEATED)

    def set_leak(self, leak: bool, now: float) -> None:
        self.advance(now)
        self.leak = leak
        if self.state == "BUSY" and self.step in _VACUUM_STEPS:
            self._pull(self._target())

    # ------------------------------------------------------------------ internals

    def _check(self, command: Command) -> Refusal | None:
        p = self.params
        if isinstance(command, Release):
            return None
        if not self.mat_seated:
            return Refusal(ErrorCode.MAT_NOT_SEATED)
        if self.waste_ml >= p.waste_capacity_ml - _EPS_ML:
            return Refusal(ErrorCode.WASTE_FULL)
        if isinstance(command, Aspirate) and not self.plate_present():
            return Refusal(ErrorCode.NO_PLATE)
        if isinstance(command, Wash) and self.buffer_ml < p.wells * command.volume_ml:
            return Refusal(ErrorCode.BUFFER_EMPTY, f"{self.buffer_ml:.0f} mL left")
        return None

    def _duration_of(self, command: Command) -> float:
        p = self.params
        match command:
            case Prewet(seconds) | Dry(seconds):
                return float(seconds)
            case Aspirate():
                return p.aspirate_s + (p.clogged_extra_s if self.clog_next else 0.0)
            case Wash(cycles, volume_ml):
                return cycles * volume_ml * p.wash_s_per_ml
            case Release():
                return p.release_s if self.mat_seated else 0.0
        return 0.0

    def _rates(self) -> tuple[float, float]:
        """(waste in, buffer out) in mL/s while the current step runs."""
        p, cmd = self.params, self.command
        if self.state != "BUSY":
            return 0.0, 0.0
        if isinstance(cmd, Wash):
            rate = p.wells / p.wash_s_per_ml  # volume_ml per well per (volume_ml * s/mL)
            return rate, rate
        if isinstance(cmd, Aspirate):
            return p.wells * p.well_volume_ml / self._duration, 0.0
        if isinstance(cmd, Prewet):
            return p.wells * p.pei_ml_per_well_s, 0.0
        return 0.0, 0.0

    def _flow(self, dt: float) -> None:
        rate_in, rate_out = self._rates()
        self.waste_ml = min(self.params.waste_capacity_ml, self.waste_ml + rate_in * dt)
        self.buffer_ml = max(0.0, self.buffer_ml - rate_out * dt)

    def _vacuum_crossing(self) -> float:
        """When the vacuum weakens past the fault level (inf: it never does)."""
        start, target, since = self._vac
        fault = self.params.vacuum_fault_bar
        if target <= fault:
            return math.inf
        if start >= fault:
            return since
        return since + self.params.vacuum_tau_s * math.log((start - target) / (fault - target))

    def _vacuum_failed(self, t: float) -> bool:
        p = self.params
        return (t >= self._start + p.vacuum_settle_s
                and self.vacuum_bar(t) > p.vacuum_fault_bar - 1e-9)

    def _target(self) -> float:
        return self.params.leak_vacuum_bar if self.leak else self.params.vacuum_bar

    def _pull(self, target: float) -> None:
        self._vac = (self.vacuum_bar(self._now), target, self._now)

    def _stop_pulling(self) -> None:
        self._pull(0.0)
        self._done = self._now

    def _trip(self, code: ErrorCode) -> None:
        if isinstance(self.command, Wash) and self._duration > 0:  # the cycles it finished
            done = math.floor(self.command.cycles * (self._now - self._start) / self._duration)
            self.cycle.washes += max(0, min(self.command.cycles, done))
            self.cycle.wash_volume_ml = self.command.volume_ml
            self.cycle.wash_s += self._now - self._start
        self._stop_pulling()
        self.state, self.fault, self.command = "FAULT", int(code), None

    def _complete(self) -> None:
        self._stop_pulling()
        self._done = self._start + self._duration
        cmd, self.state, self.command = self.command, "IDLE", None
        if isinstance(cmd, Aspirate):
            self.cycle.aspirated = True
            self.cycle.clogged = tuple(w for w in WELLS if w in self.clog_next)
            self.clog_next = frozenset()
        elif isinstance(cmd, Wash):
            self.cycle.washes += cmd.cycles
            self.cycle.wash_volume_ml = cmd.volume_ml
            self.cycle.wash_s += self._duration
        elif isinstance(cmd, Dry) and self.cycle.aspirated and not self.cycle.harvested:
            self.cycle.harvested = True
            self.mats_made += 1
            self.on_dried(self.cycle)
        elif isinstance(cmd, Release) and self.mat_seated:
            clogged = self.cycle.clogged
            self.cycle = Cycle(clogged=clogged)  # AN? still reports the last aspirate
            self.mat_seated = self.params.auto_load_mat


def _step_of(command: Command) -> Step:
    match command:
        case Prewet():
            return "PW"
        case Aspirate():
            return "AS"
        case Wash():
            return "WS"
        case Dry():
            return "DR"
        case Release():
            return "RL"
    return "NONE"

"""The one simulated world of a bench: plates, their temperature history, filter mats, and
where each of them is. Implements :class:`simulators.world_api.WorldHooks`.

Locations: ``bench`` (any number of plates and mats), ``incubator:<id>`` (any number of
plates; the id must be a registered incubator), ``harvester:<id>`` (one plate; the mats it
made stay there until moved) and ``counter:<id>`` (one mat; the id must be a registered
counter, which is told through its ``load_mat`` callback).

Time: the binding reaction of a plate starts when it is added. Each plate's liquid follows
the air around it (the registered chamber temperature in an incubator, the bench
temperature elsewhere) with a first-order lag, and its binding advances by the equivalent
time at the reference temperature (:mod:`simulators.binding`). The world integrates on
every event (add, move, harvest, snapshot), in steps of at most ``max_step_s`` with the air
temperature interpolated between the previous sample and now. Between events nothing
samples the incubator, so a door opened and closed in between would go unseen: for that,
run the world's own ticker (:meth:`World.start` / :meth:`World.stop`, or ``async with``),
which samples every ``tick_s`` on the injected clock. Do not run the ticker on a
``VirtualClock(autojump=True)``: a sleeper that never ends makes such a clock run away.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import structlog

from drivers.clock import Clock
from labware import wells as plate_wells
from simulators.binding import (
    BindingTruth,
    WellEquilibrium,
    filter_spot,
    mean_relaxing_temperature,
    rate_factor,
    relax_temperature,
    well_equilibrium,
)
from simulators.plate_map import PlateMap
from simulators.world_api import FilterMat, HarvestSettings

__all__ = ["World"]

_PLATE_PLACE = re.compile(r"bench|(incubator|harvester):[A-Za-z0-9_.\-]{1,64}")
_MAT_PLACE = re.compile(r"bench|(harvester|counter):[A-Za-z0-9_.\-]{1,64}")
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_CLOGGED_SHARE = (0.05, 0.5)  # share of a clogged well that still reaches the filter

_log = structlog.get_logger()


@dataclass
class _Segment:
    """One stay of a plate at one location: its liquid temperature range and mean."""

    location: str
    start_s: float
    end_s: float
    min_c: float
    max_c: float
    integral_c_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        span = self.end_s - self.start_s
        mean = self.integral_c_s / span if span > 0 else self.min_c
        return {"location": self.location, "from_s": round(self.start_s, 3),
                "to_s": round(self.end_s, 3), "min_c": round(self.min_c, 2),
                "max_c": round(self.max_c, 2), "mean_c": round(mean, 2)}


@dataclass
class _Plate:
    plate_id: str
    plate_map: PlateMap
    wells: dict[str, WellEquilibrium]
    location: str
    well_c: float
    ambient_c: float  # air temperature at the last sample
    shaking: bool
    last_s: float
    equivalent_s: float = 0.0  # binding time at the reference temperature
    harvested_at_s: float | None = None
    history: list[_Segment] = field(default_factory=list)


@dataclass
class _Mat:
    mat: FilterMat
    location: str
    made_at_s: float


class World:
    """One simulated bench (see the module docstring)."""

    def __init__(
        self,
        truth: BindingTruth,
        clock: Clock,
        *,
        seed: int = 1,
        bench_temperature_c: float = 21.0,
        plate_time_constant_s: float = 300.0,
        pipetting_cv: float = 0.02,
        tick_s: float = 10.0,
        max_step_s: float = 10.0,
    ) -> None:
        if tick_s <= 0 or max_step_s <= 0 or pipetting_cv < 0:
            raise ValueError("tick_s and max_step_s must be positive, pipetting_cv >= 0")
        self.truth = truth
        self.clock = clock
        self.bench_temperature_c = bench_temperature_c
        self.plate_time_constant_s = plate_time_constant_s
        self.pipetting_cv = pipetting_cv
        self.tick_s = tick_s
        self.max_step_s = max_step_s
        self._rng = random.Random(seed)
        self._incubators: dict[str, tuple[Callable[[], float], Callable[[], bool]]] = {}
        self._counters: dict[str, Callable[[FilterMat | None], None]] = {}
        self._plates: dict[str, _Plate] = {}
        self._mats: dict[str, _Mat] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._baths: dict[str, Callable[[], Mapping[int, float]]] = {}
        self._shared: dict[str, Any] = {}

    # ------------------------------------------------------------------ WorldHooks

    def register_incubator(
        self,
        instrument_id: str,
        chamber_temperature_c: Callable[[], float],
        shaking: Callable[[], bool],
    ) -> None:
        self.advance()  # plates already inside have been at the old temperature until now
        self._incubators[instrument_id] = (chamber_temperature_c, shaking)

    def register_counter(
        self, instrument_id: str, load_mat: Callable[[FilterMat | None], None]
    ) -> None:
        self._counters[instrument_id] = load_mat

    def register_bath(
        self, instrument_id: str, composition: Callable[[], Mapping[int, float]]
    ) -> None:
        self._baths[instrument_id] = composition

    def bath_composition(self, instrument_id: str | None = None) -> Mapping[int, float] | None:
        """What bathes the cell now (valve -> fraction) from the perfusion ``instrument_id``
        (default: the only one); None without a perfusion simulator."""
        if instrument_id is None:
            if len(self._baths) != 1:
                return None
            instrument_id = next(iter(self._baths))
        source = self._baths.get(instrument_id)
        return None if source is None else source()

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """The one object of ``key`` several simulators work on (the patch rig the amplifier
        and the digitizer both wire to), made by the first that asks."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def plate_at(self, location: str) -> str | None:
        """The plate placed last at ``location``, if any."""
        here = [p for p in self._plates.values() if p.location == location]
        return here[-1].plate_id if here else None

    def harvest(self, location: str, settings: HarvestSettings) -> FilterMat:
        """Filter the plate at ``location`` onto a new mat kept at ``location``. The plate is
        empty afterwards: harvesting it again gives a mat without activity."""
        self.advance()
        plate_id = self.plate_at(location)
        if plate_id is None:
            raise ValueError(f"no plate at {location}")
        plate = self._plates[plate_id]
        clogged = set(settings.clogged_wells)
        dpm: dict[str, float] = {}
        for well in (w for w in plate_wells(96) if w in plate.wells):
            eq = plate.wells[well]
            if plate.harvested_at_s is not None:
                dpm[well] = 0.0
                continue
            share = self._rng.uniform(*_CLOGGED_SHARE) if well in clogged else None
            spot = filter_spot(self.truth, eq, eq.specific_at(plate.equivalent_s), settings,
                               clogged_fraction=share)
            dpm[well] = spot.dpm
        now = self.clock.monotonic()
        plate.harvested_at_s = plate.harvested_at_s if plate.harvested_at_s is not None else now
        mat = FilterMat(self._mat_id(plate_id), plate_id, MappingProxyType(dpm))
        self._mats[mat.mat_id] = _Mat(mat, location, now)
        _log.info("plate harvested", plate_id=plate_id, mat_id=mat.mat_id, location=location)
        return mat

    # ------------------------------------------------------------------ operator

    def add_plate(self, plate_id: str, plate_map: PlateMap, location: str = "bench") -> None:
        """Pipetting done: the reaction starts now. ``ValueError`` for an unknown compound,
        a taken id or a bad location."""
        if not _ID.fullmatch(plate_id):
            raise ValueError(f"plate_id: 1-64 letters, digits, '_', '.', '-', got {plate_id!r}")
        if plate_id in self._plates:
            raise ValueError(f"plate {plate_id!r} already exists")
        self._check_plate_place(location, plate_id)
        self.advance()
        wells = {}
        for name, contents in plate_map.wells.items():
            actual = replace(contents, membrane_ug=self._pipette(contents.membrane_ug),
                             radioligand_nm=self._pipette(contents.radioligand_nm))
            try:
                wells[name] = well_equilibrium(self.truth, actual)
            except ValueError as exc:
                raise ValueError(f"well {name}: {exc}") from None
        now = self.clock.monotonic()
        ambient, shaking = self._air(location)
        plate = _Plate(plate_id, plate_map, wells, location, self.bench_temperature_c, ambient,
                       shaking, now)
        plate.history.append(_Segment(location, now, now, plate.well_c, plate.well_c))
        self._plates[plate_id] = plate

    def place_plate(self, plate_id: str, location: str) -> None:
        plate = self._plate(plate_id)
        if location == plate.location:
            return
        self._check_plate_place(location, plate_id)
        self.advance()
        now = self.clock.monotonic()
        plate.location = location
        self._plates[plate_id] = self._plates.pop(plate_id)  # keep placement order
        plate.ambient_c, plate.shaking = self._air(location)
        plate.history.append(_Segment(location, now, now, plate.well_c, plate.well_c))

    def place_mat(self, mat_id: str, location: str) -> None:
        """Move a mat; a counter it leaves is told (``None``), the one it enters gets it.
        If a counter refuses (e.g. while counting) nothing moves."""
        entry = self._mats.get(mat_id)
        if entry is None:
            raise ValueError(f"unknown mat {mat_id!r}")
        if location == entry.location:
            return
        if not _MAT_PLACE.fullmatch(location):
            raise ValueError(f"location: bench, harvester:<id> or counter:<id>, got {location!r}")
        new_counter = self._counter_loader(location) if location.startswith("counter:") else None
        holder = self.mat_at(location) if new_counter is not None else None
        if holder is not None:
            raise ValueError(f"{location} already holds mat {holder!r}")
        old_counter = (self._counter_loader(entry.location)
                       if entry.location.startswith("counter:") else None)
        if old_counter is not None:
            old_counter(None)
        if new_counter is not None:
            try:
                new_counter(entry.mat)
            except Exception:
                if old_counter is not None:
                    old_counter(entry.mat)
                raise
        entry.location = location
        self._mats[mat_id] = self._mats.pop(mat_id)  # keep placement order

    def mat_at(self, location: str) -> str | None:
        """The mat placed last at ``location``, if any."""
        here = [m for m in self._mats.values() if m.location == location]
        return here[-1].mat.mat_id if here else None

    def mat(self, mat_id: str) -> FilterMat:
        entry = self._mats.get(mat_id)
        if entry is None:
            raise ValueError(f"unknown mat {mat_id!r}")
        return entry.mat

    def incubator_ids(self) -> tuple[str, ...]:
        return tuple(self._incubators)

    # ------------------------------------------------------------------ time

    def advance(self) -> None:
        """Integrate every plate's temperature and binding up to now."""
        now = self.clock.monotonic()
        for plate in self._plates.values():
            self._advance_plate(plate, now)

    def equivalent_s(self, plate_id: str) -> float:
        """Binding time of a plate so far, in seconds at the reference temperature."""
        self.advance()
        return self._plate(plate_id).equivalent_s

    async def start(self) -> None:
        """Sample every plate's surroundings every ``tick_s`` until :meth:`stop`."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="world-ticker")

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def __aenter__(self) -> World:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(self.tick_s)
            self.advance()

    def _advance_plate(self, plate: _Plate, now: float) -> None:
        ambient, shaking = self._air(plate.location)
        span = now - plate.last_s
        if span > 0 and plate.harvested_at_s is None:
            steps = max(1, math.ceil(span / self.max_step_s))
            h = span / steps
            segment = plate.history[-1]
            for i in range(steps):
                air = plate.ambient_c + (ambient - plate.ambient_c) * (i + 0.5) / steps
                tau = self.plate_time_constant_s
                mid = mean_relaxing_temperature(plate.well_c, air, h, tau)
                plate.well_c = relax_temperature(plate.well_c, air, h, tau)
                plate.equivalent_s += rate_factor(self.truth, mid, plate.shaking) * h
                segment.integral_c_s += mid * h
                segment.min_c = min(segment.min_c, plate.well_c)
                segment.max_c = max(segment.max_c, plate.well_c)
            segment.end_s = now
        plate.last_s = max(plate.last_s, now)
        plate.ambient_c, plate.shaking = ambient, shaking

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """Everything the virtual operator may look at, JSON-ready."""
        self.advance()
        incubators = {
            iid: {"temperature_c": round(temp(), 3), "shaking": shake()}
            for iid, (temp, shake) in self._incubators.items()
        }
        counters = {cid: self.mat_at(f"counter:{cid}") for cid in self._counters}
        return {
            "sim_time_s": round(self.clock.monotonic(), 3),
            "bench_temperature_c": self.bench_temperature_c,
            "incubators": incubators,
            "counters": counters,
            "plates": {pid: self.plate_summary(pid) for pid in self._plates},
            "mats": {
                mid: {"plate_id": m.mat.plate_id, "location": m.location,
                      "made_at_s": round(m.made_at_s, 3),
                      "total_dpm": round(sum(m.mat.dpm_by_well.values()), 1)}
                for mid, m in self._mats.items()
            },
        }

    def plate_summary(self, plate_id: str) -> dict[str, Any]:
        plate = self._plate(plate_id)
        totals = [plate.wells[w] for w in plate.plate_map.role_wells("total")]
        approach = [eq.specific_at(plate.equivalent_s) / eq.specific_fmol
                    for eq in totals if eq.specific_fmol > 0]
        return {
            "location": plate.location,
            "wells": len(plate.wells),
            "harvested": plate.harvested_at_s is not None,
            "well_temperature_c": round(plate.well_c, 3),
            "equivalent_min_at_reference": round(plate.equivalent_s / 60.0, 3),
            "total_binding_of_equilibrium": (
                round(sum(approach) / len(approach), 4) if approach else None),
            "history": [s.summary() for s in plate.history],
        }

    def truth_summary(self) -> dict[str, Any]:
        shared = {key: obj.truth() for key, obj in self._shared.items() if hasattr(obj, "truth")}
        return {**self.truth.summary(), "pipetting_cv": self.pipetting_cv, **shared}

    # ------------------------------------------------------------------ internals

    def _plate(self, plate_id: str) -> _Plate:
        plate = self._plates.get(plate_id)
        if plate is None:
            raise ValueError(f"unknown plate {plate_id!r}")
        return plate

    def _air(self, location: str) -> tuple[float, bool]:
        if location.startswith("incubator:"):
            temperature, shaking = self._incubators[location.partition(":")[2]]
            return temperature(), shaking()
        return self.bench_temperature_c, False

    def _check_plate_place(self, location: str, plate_id: str) -> None:
        if not _PLATE_PLACE.fullmatch(location):
            raise ValueError(
                f"location: bench, incubator:<id> or harvester:<id>, got {location!r}")
        kind, _, iid = location.partition(":")
        if kind == "incubator" and iid not in self._incubators:
            raise ValueError(f"no incubator {iid!r} in this world")
        holder = self.plate_at(location) if kind == "harvester" else None
        if holder is not None and holder != plate_id:
            raise ValueError(f"{location} already holds plate {holder!r}; move it first")

    def _counter_loader(self, location: str) -> Callable[[FilterMat | None], None]:
        cid = location.partition(":")[2]
        loader = self._counters.get(cid)
        if loader is None:
            raise ValueError(f"no counter {cid!r} in this world")
        return loader

    def _mat_id(self, plate_id: str) -> str:
        n = 1 + sum(1 for m in self._mats.values() if m.mat.plate_id == plate_id)
        return f"{plate_id[:54]}-MAT{n}"

    def _pipette(self, amount: float) -> float:
        if amount <= 0 or self.pipetting_cv == 0:
            return amount
        return max(0.0, amount * self._rng.gauss(1.0, self.pipetting_cv))

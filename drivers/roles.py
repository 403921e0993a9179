"""The roles a run's steps depend on: what any counter, incubator, harvester or perfusion
controller must offer, whatever its vendor, class or transport.

A step asks for an instrument of a role (``isinstance(driver, Counter)``), never for a
concrete driver class, so a second vendor's counter with its own driver package plugs in
without editing the steps: its driver only has to have these methods (structural typing,
no inheritance needed). The value types they return (``WellCount``, ``MatReport`` ...) are
those of the shipped drivers; another driver returns the same types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from drivers.base import Instrument

if TYPE_CHECKING:
    from drivers.counter import CounterStatus, WellCount
    from drivers.harvester import HarvesterStatus, HarvestReport, MatReport
    from drivers.incubator import IncubatorStatus
    from drivers.perfusion import ValveStatus

__all__ = ["Counter", "Harvester", "Incubator", "Perfusion"]


@runtime_checkable
class Counter(Instrument, Protocol):
    """A microplate scintillation counter."""

    @property
    def instrument_id(self) -> str: ...
    async def status(self) -> CounterStatus: ...
    def count_plate(
        self, *, count_time_s: float, precision_pct: float | None = None, isotope: str = "H3",
        wells: Sequence[str] | None = None, resume_from: int | None = None,
    ) -> AsyncIterator[WellCount]:  # fmt: skip
        """Each well once, as it is counted."""
        ...
    async def abort(self) -> None: ...
    async def clear_fault(self) -> None: ...


@runtime_checkable
class Incubator(Instrument, Protocol):
    """An incubator / temperature controller with a shaker."""

    @property
    def instrument_id(self) -> str: ...
    async def status(self) -> IncubatorStatus: ...
    async def set_temperature(self, celsius: float) -> bool: ...
    async def start_shaking(self, rpm: int) -> None: ...
    async def stop_shaking(self) -> None: ...


@runtime_checkable
class Harvester(Instrument, Protocol):
    """A cell harvester filtering a plate onto a filter mat."""

    @property
    def instrument_id(self) -> str: ...
    async def status(self) -> HarvesterStatus: ...
    async def mat(self) -> MatReport: ...
    async def harvest(
        self, *, prewet_s: float = 10, washes: int = 3, wash_volume_ml: float = 1.0,
        dry_s: float = 30, release: bool = True, resume: MatReport | None = None,
    ) -> HarvestReport:  # fmt: skip
        """The whole cycle, or the rest of one stopped part-way on the same mat."""
        ...
    async def release_mat(self) -> None: ...
    async def abort(self) -> None: ...
    async def clear_fault(self) -> None: ...


@runtime_checkable
class Perfusion(Instrument, Protocol):
    """A perfusion valve controller."""

    @property
    def instrument_id(self) -> str: ...
    async def open_valve(self, valve: int) -> None: ...
    async def close_all(self) -> None: ...
    async def select_solution(self, valve: int) -> ValveStatus: ...
    async def clear_fault(self) -> None: ...


if TYPE_CHECKING:  # each shipped driver plays its role: mypy checks these
    from drivers.counter import CounterDriver
    from drivers.harvester import HarvesterDriver
    from drivers.incubator import IncubatorDriver
    from drivers.perfusion import PerfusionDriver

    _COUNTER: type[Counter] = CounterDriver
    _INCUBATOR: type[Incubator] = IncubatorDriver
    _HARVESTER: type[Harvester] = HarvesterDriver
    _PERFUSION: type[Perfusion] = PerfusionDriver

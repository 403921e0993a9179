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
    import numpy.typing as npt

    from drivers.amplifier import Meter, Mode, Telegraph
    from drivers.counter import CounterStatus, WellCount
    from drivers.digitizer import Sweep
    from drivers.harvester import HarvesterStatus, HarvestReport, MatReport
    from drivers.incubator import IncubatorStatus
    from drivers.perfusion import ValveStatus

__all__ = ["Amplifier", "Counter", "Digitizer", "Harvester", "Incubator", "Perfusion"]


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


@runtime_checkable
class Amplifier(Instrument, Protocol):
    """A patch-clamp amplifier (one headstage channel)."""

    @property
    def instrument_id(self) -> str: ...
    async def mode(self) -> Mode: ...
    async def set_mode(self, mode: Mode) -> None: ...
    async def set_holding(self, value: float, *, enable: bool | None = None) -> None: ...
    async def set_primary_signal(self, signal: str) -> None: ...
    async def holding(self) -> tuple[float, bool]: ...
    async def seal_test(self, on: bool, *, amplitude_v: float | None = None,
                        frequency_hz: float | None = None) -> None: ...  # fmt: skip
    async def meter(self) -> Meter: ...
    async def telegraph(self) -> Telegraph: ...
    async def compensation(self) -> dict[str, float | bool]: ...
    async def make_safe(self, holding_v: float) -> None: ...


@runtime_checkable
class Digitizer(Instrument, Protocol):
    """A digitizer playing a command and sampling inputs simultaneously."""

    @property
    def instrument_id(self) -> str: ...
    async def configure(self, rate_hz: int, inputs: Sequence[int], output: int = 0) -> None: ...
    async def upload(self, command_v: npt.ArrayLike) -> None: ...
    async def acquire_sweep(self, samples: int) -> Sweep: ...
    async def stop(self) -> None: ...


if TYPE_CHECKING:  # each shipped driver plays its role: mypy checks these
    from drivers.amplifier import AmplifierDriver
    from drivers.counter import CounterDriver
    from drivers.digitizer import DigitizerDriver
    from drivers.harvester import HarvesterDriver
    from drivers.incubator import IncubatorDriver
    from drivers.perfusion import PerfusionDriver

    _COUNTER: type[Counter] = CounterDriver
    _INCUBATOR: type[Incubator] = IncubatorDriver
    _HARVESTER: type[Harvester] = HarvesterDriver
    _PERFUSION: type[Perfusion] = PerfusionDriver
    _AMPLIFIER: type[Amplifier] = AmplifierDriver
    _DIGITIZER: type[Digitizer] = DigitizerDriver

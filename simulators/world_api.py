"""How instrument simulators meet the shared simulated world (implemented in world.py).

One :class:`World` per simulated bench carries physics across instruments: the incubator
reports the chamber temperature and shaking of whatever plate is inside; the harvester turns
the plate in it into a filter mat; the counter counts the mat an operator placed in it.
Simulators only call these hooks; the world never reaches into a simulator except through
the callbacks a simulator registered. Locations are named: ``bench``, ``incubator:<id>``,
``harvester:<id>``, ``counter:<id>``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FilterMat", "HarvestSettings", "WorldHooks"]


@dataclass(frozen=True)
class HarvestSettings:
    """What the harvester did to the plate; the world turns it into bound activity."""

    prewet_pei: bool
    washes: int
    wash_volume_ml: float
    wash_temperature_c: float = 4.0
    wash_seconds_per_cycle: float = 5.0
    clogged_wells: Collection[str] = ()


@dataclass(frozen=True)
class FilterMat:
    """A harvested filter mat: the activity (DPM) retained on each spot."""

    mat_id: str
    plate_id: str
    dpm_by_well: Mapping[str, float]


class WorldHooks(Protocol):
    def register_incubator(
        self,
        instrument_id: str,
        chamber_temperature_c: Callable[[], float],
        shaking: Callable[[], bool],
    ) -> None:
        """The incubator simulator tells the world how to read its chamber."""
        ...

    def register_counter(
        self, instrument_id: str, load_mat: Callable[[FilterMat | None], None]
    ) -> None:
        """The counter simulator is told when a mat is placed in it (None: removed)."""
        ...

    def register_bath(
        self, instrument_id: str, composition: Callable[[], Mapping[int, float]]
    ) -> None:
        """The perfusion simulator tells the world what its bath holds (valve -> fraction)."""
        ...

    def plate_at(self, location: str) -> str | None:
        """The id of the plate at ``location`` (e.g. ``harvester:harvester``), if any."""
        ...

    def harvest(self, location: str, settings: HarvestSettings) -> FilterMat:
        """Filter the plate at ``location`` onto a new mat, which stays at ``location``."""
        ...

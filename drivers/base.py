"""What the daemon needs from every instrument driver, whatever its class or transport.

A driver is an async context manager with ``open``/``close``, a ``connected`` flag, an
``identify()`` and a ``readings()`` snapshot. The daemon's instrument supervisor uses only
this; runs use the driver's own, instrument-specific API (``count_plate``,
``set_temperature``, ``wash``, ``open_valve`` ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Instrument", "ReadingValue", "Readings"]

ReadingValue = float | int | str | bool | None


@dataclass(frozen=True)
class Readings:
    """One snapshot of an instrument, as the daemon publishes it.

    ``state``: ``idle`` (ready), ``busy`` (doing something), ``fault`` (needs an operator;
    ``fault`` says what). ``values``: the key live readings, with the unit in the key name
    (``temperature_c``, ``vacuum_bar``, ``valve_open``), flat and JSON-able.
    """

    state: Literal["idle", "busy", "fault"]
    fault: str | None = None
    values: Mapping[str, ReadingValue] = field(default_factory=dict)


@runtime_checkable
class Instrument(Protocol):
    """The common surface of every driver."""

    @property
    def connected(self) -> bool: ...

    async def open(self) -> None:
        """Connect; raise :class:`~drivers.errors.LinkError` if unreachable."""
        ...

    async def close(self) -> None:
        """Disconnect; idempotent, never raises for an already-closed link."""
        ...

    async def identify(self) -> object:
        """Vendor, model, serial, firmware and the like: a Mapping, or a dataclass whose
        fields are str or int (the daemon publishes those fields)."""
        ...

    async def readings(self) -> Readings:
        """The current state and key readings (one short exchange with the instrument)."""
        ...

"""What a run is started with (from ``run.start`` or an interrupted run's start document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from acquisition.engine.operator import VirtualOperator
from acquisition.protocols import Protocol

__all__ = ["RunSetup"]


@dataclass(frozen=True)
class RunSetup:
    """Everything a run is started with; its start document records all of it."""

    protocol: Protocol
    protocol_definition: dict[str, Any]  # the file's data, as validated
    protocol_source: str
    plate_id: str | None  # None: no plate of its own (count-plate counts what is in the counter)
    plate_map: dict[str, Any] | None
    plate_map_source: str | None
    layout: Any  # PlateLayout | None
    instruments: dict[str, str]  # role -> id
    virtual_operator: VirtualOperator | None = None
    label: str | None = None  # the run.start label, in the start document

"""Incubator / temperature controller with plate shaker, over Modbus (TCP or RTU)."""

from drivers.incubator.driver import IncubatorDriver, IncubatorStatus
from drivers.incubator.registers import StatusBits

__all__ = ["IncubatorDriver", "IncubatorStatus", "StatusBits"]

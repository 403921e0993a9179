"""Perfusion valve controller (AutoMate ValveLink8.2, RS-232 ASCII): codec, driver, types."""

from drivers.perfusion.codec import ValveState
from drivers.perfusion.driver import PerfusionDriver, PerfusionMode, ValveStatus

__all__ = ["PerfusionDriver", "PerfusionMode", "ValveState", "ValveStatus"]

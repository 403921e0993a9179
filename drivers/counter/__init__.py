"""Microplate scintillation counter (MicroBeta2-style): codec, driver and their data types."""

from drivers.counter.codec import WellCount
from drivers.counter.driver import CounterDriver, CounterIdentity, CounterState, CounterStatus

__all__ = ["CounterDriver", "CounterIdentity", "CounterState", "CounterStatus", "WellCount"]

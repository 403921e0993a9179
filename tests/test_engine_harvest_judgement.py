"""Pure parts of the harvest's recovery: which case an interrupted harvest is in, from the
harvester's count of harvested mats before and now, its mat report and other runs'
harvests; and a retry clearing only latches an instrument reports (a unit test of the
engine layer: the instruments are stand-ins with the driver's interface)."""

from __future__ import annotations

from typing import Any

import pytest

from acquisition.config import HarvesterConfig
from acquisition.engine.safety import clear_latch
from acquisition.instruments import InstrumentHandle
from acquisition.steps.harvest import _case
from drivers.base import Readings
from drivers.harvester import MatReport

FRESH = MatReport(True, False, False, 0, False, 7)
CUT_SHORT = MatReport(True, True, False, 0, False, 7, began=True)
WASHED = MatReport(True, True, True, 2, False, 7, began=True)
DRIED = MatReport(True, True, True, 3, True, 8, began=True)
RELEASED = MatReport(True, False, False, 0, False, 8)


@pytest.mark.parametrize(
    ("made", "mat", "others", "case"),
    [
        (7, FRESH, [], "not-begun"),
        (7, CUT_SHORT, [], "partly"),  # an aspirate cut short: the plate is on the mat
        (7, WASHED, [], "partly"),
        (7, DRIED, [], "finished"),  # dried, still seated: the count grew by one
        (7, RELEASED, [], "finished"),  # and already released
        (9, RELEASED, [], "unknown"),  # the count went down: power-cycled
        (6, RELEASED, [], "unknown"),  # grew by two: someone else's cycle too
        (7, RELEASED, ["run-b"], "unknown"),  # another run harvested on it meanwhile
        (7, WASHED, ["run-b"], "unknown"),
        (8, DRIED, [], "unknown"),  # dried though the count did not move
        (None, WASHED, [], "partly"),  # a started document older than the count
        (None, DRIED, [], "unknown"),
        (None, FRESH, [], "not-begun"),
    ],
)
def test_the_case_follows_from_the_facts(
    made: int | None, mat: MatReport, others: list[str], case: str
) -> None:
    assert _case(made, mat, others) == case


class _Latching:
    """An instrument whose fault latches until ``clear_fault``; ``cause``: still there."""

    def __init__(self, fault: str | None, *, cause: bool = False) -> None:
        self.fault, self.cause, self.cleared = fault, cause, 0

    async def readings(self) -> Readings:
        return Readings(state="fault" if self.fault else "busy", fault=self.fault, values={})

    async def clear_fault(self) -> None:
        self.cleared += 1
        if not self.cause:
            self.fault = None


def _handle(driver: Any, iid: str) -> InstrumentHandle:
    config = HarvesterConfig(id=iid, kind="harvester", address="/dev/ttyH")
    return InstrumentHandle(config=config, driver=driver)


async def test_a_retry_clears_only_latches_that_are_reported() -> None:
    running, latched = _Latching(None), _Latching("waste_full")
    assert await clear_latch([_handle(running, "h1"), _handle(latched, "h2")]) is None
    assert (running.cleared, latched.cleared) == (0, 1)  # a running step is not aborted
    assert latched.fault is None


async def test_a_cause_still_there_is_said() -> None:
    door = _Latching("door_open", cause=True)
    still = await clear_latch([_handle(door, "c1")])
    assert still == "c1 still reports door_open after its latch was cleared"

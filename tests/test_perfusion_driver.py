"""The perfusion driver against the simulator over a real pty through pyserial (no mocks).

The simulator runs in-process behind a symlink in ``tmp_path``; the bath runs on a
:class:`VirtualClock` that the tests move. Transport faults are the pty's own (garbage
reply, byte-by-byte reply, stalled reply, port closed mid-reply).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.base import Instrument
from drivers.clock import VirtualClock
from drivers.errors import (
    InstrumentFaultError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    LinkError,
)
from drivers.perfusion import PerfusionDriver
from simulators.perfusion import (
    FaultKind,
    PerfusionSimHandle,
    PerfusionSimSpec,
    PerfusionSimulator,
    start_perfusion_simulator,
)

TIMEOUT_S = 0.3  # driver reply timeout: the stall test waits this long once


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def handle(tmp_path: Path, clock: VirtualClock) -> AsyncIterator[PerfusionSimHandle]:
    spec = PerfusionSimSpec(link_path=tmp_path / "valvelink", flow_ul_per_s=50,
                            dead_volume_ul=250, exchange_tau_s=10)
    h = await start_perfusion_simulator(spec, clock, None)
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
def sim(handle: PerfusionSimHandle) -> PerfusionSimulator:
    return handle.simulator


@pytest.fixture
async def driver(
    handle: PerfusionSimHandle, clock: VirtualClock
) -> AsyncIterator[PerfusionDriver]:
    drv = PerfusionDriver(handle.address, timeout_s=TIMEOUT_S, clock=clock)
    await drv.open()
    try:
        yield drv
    finally:
        await drv.close()


async def _pattern(driver: PerfusionDriver) -> str:
    return (await driver.valve_states()).pattern


async def test_identify_and_readings(driver: PerfusionDriver) -> None:
    assert isinstance(driver, Instrument) and driver.connected
    ident = await driver.identify()
    assert (ident["vendor"], ident["model"], ident["device_address"]) == (
        "AutoMate Scientific", "ValveLink8.2-SIM", 0)
    readings = await driver.readings()
    assert (readings.state, readings.fault) == ("idle", None)
    assert readings.values == {
        "valves": "00000000", "open_valve": None, "mode": "independent",
        "spill_latched": False, "shorted_valves": "", "unplugged_valves": "",
    }


async def test_open_close_and_one_on(driver: PerfusionDriver) -> None:
    await driver.open_valve(1)
    await driver.open_valve(3)
    assert await _pattern(driver) == "10100000"
    await driver.close_valve(1)
    assert (await driver.valve_states()).open_valve == 3
    status = await driver.set_mode("one_on", preselect=1)
    assert (status.mode, status.preselect, status.mode_text) == (
        "one_on", 1, "one_on+preselect/1")
    await driver.open_valve(6)
    assert await _pattern(driver) == "00000100"
    await driver.close_valve(6)  # preselect: the rest solution takes over
    assert (await driver.readings()).values["open_valve"] == 1
    await driver.close_all()
    assert await _pattern(driver) == "00000000"


async def test_repeated_intents_are_harmless_and_send_no_more_than_needed(
    driver: PerfusionDriver, sim: PerfusionSimulator
) -> None:
    await driver.open_valve(2)
    await driver.open_valve(2)  # sent again on purpose: the controller changes nothing
    assert await _pattern(driver) == "01000000"
    await driver.select_solution(4)
    assert await _pattern(driver) == "00010000"
    before = sim.lines_received
    assert (await driver.select_solution(4)).open_valve == 4
    assert sim.lines_received - before == 1  # the status query only
    await driver.set_mode("one_on", master=8)
    before = sim.lines_received
    status = await driver.set_mode("one_on", master=8)
    assert sim.lines_received - before == 1
    assert status.pattern == "00010001" and status.open_valve == 4
    await driver.set_mode("independent")
    assert (await driver.valve_states()).mode_text == "independent"


async def test_spill_closes_all_and_refuses_until_acknowledged(
    driver: PerfusionDriver, sim: PerfusionSimulator
) -> None:
    await driver.select_solution(2)
    sim.inject_fault("spill")
    readings = await driver.readings()
    assert (readings.state, readings.fault) == ("fault", "spill latched")
    assert readings.values["valves"] == "00000000"
    for attempt in (driver.open_valve(2), driver.select_solution(3)):
        with pytest.raises(InstrumentFaultError) as info:
            await attempt
        assert info.value.fault == "spill latched"
    await driver.close_all()  # closing is always allowed
    await driver.acknowledge_spill()
    await driver.acknowledge_spill()  # idempotent
    assert (await driver.readings()).state == "idle"
    assert (await driver.select_solution(2)).pattern == "01000000"


async def test_unplugged_valve_will_not_open(
    driver: PerfusionDriver, sim: PerfusionSimulator
) -> None:
    sim.inject_fault("unplug", valve=4)
    with pytest.raises(InstrumentFaultError) as info:
        await driver.open_valve(4)
    assert info.value.fault == "valve unplugged" and "valve 4" in str(info.value)
    readings = await driver.readings()
    assert readings.state == "idle" and readings.values["unplugged_valves"] == "4"
    await driver.open_valve(5)  # the others still work
    assert await _pattern(driver) == "00001000"


async def test_shorted_valve_stays_closed_and_reports_a_fault(
    driver: PerfusionDriver, sim: PerfusionSimulator
) -> None:
    await driver.open_valve(5)
    sim.inject_fault("short", valve=5)
    readings = await driver.readings()
    assert (readings.state, readings.fault) == ("fault", "valve shorted: 5")
    assert readings.values["valves"] == "00000000"
    with pytest.raises(InstrumentFaultError) as info:
        await driver.open_valve(5)
    assert info.value.fault == "valve shorted"
    sim.inject_fault("repair", valve=5)
    await driver.open_valve(5)
    assert (await driver.readings()).state == "idle"


async def test_refusals_carry_the_error_code(driver: PerfusionDriver) -> None:
    with pytest.raises(InstrumentReplyError) as info:
        await driver.set_mode("one_on", preselect=3, master=3)
    assert info.value.code == 3
    await driver.set_mode("independent", master=8)
    with pytest.raises(InstrumentReplyError) as info:
        await driver.close_valve(8)  # the master valve follows the others, not the host
    assert info.value.code == 3
    with pytest.raises(ValueError):
        await driver.open_valve(9)
    with pytest.raises(ValueError):
        await driver.set_mode("binary")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("faults", "error"),
    [(("garbage", "garbage"), InstrumentReplyError), (("stall",), InstrumentTimeoutError),
     (("close",), LinkError), (("byte_by_byte",), None), (("garbage",), None),
     (("noise_then_reply",), None)],
    ids=lambda v: "+".join(v) if isinstance(v, tuple) else getattr(v, "__name__", "ok"),
)
async def test_transport_faults_give_typed_errors_then_recover(
    driver: PerfusionDriver, sim: PerfusionSimulator, faults: tuple[FaultKind, ...],
    error: type[Exception] | None,
) -> None:
    await driver.open_valve(1)
    for fault in faults:
        sim.inject_fault(fault)
    if error is None:
        await driver.open_valve(2)  # one garbled reply is retried (opening is repeatable)
        assert driver.retries == (1 if faults == ("garbage",) else 0)
    else:
        with pytest.raises(error) as info:
            await driver.open_valve(2)  # the controller acts; only its reply is lost
        if isinstance(info.value, InstrumentReplyError):
            assert info.value.code is None  # garbled, not an instrument error code
        await driver.open_valve(2)  # the retry is harmless: the valve is open already
    assert await _pattern(driver) == "11000000"
    assert (await driver.identify())["model"] == "ValveLink8.2-SIM"
    assert driver.connected
    assert driver.reconnects == (1 if faults == ("close",) else 0)


async def test_noise_before_the_reply_is_skipped_and_leaves_nothing_stale(
    driver: PerfusionDriver, sim: PerfusionSimulator
) -> None:
    """Garbage between frames: a noise line, then the real reply. The driver skips the line
    that is not ``R0 ...`` and reads on within the same timeout."""
    sim.inject_fault("noise_then_reply")
    assert (await driver.identify())["serial"] == "VL8-SIM-0001"
    assert (await driver.valve_states()).pattern == "00000000"  # not a late identity
    sim.inject_fault("noise_then_reply")
    await driver.open_valve(3)
    sim.inject_fault("noise_then_reply")
    sim.inject_fault("noise_then_reply")
    status = await driver.select_solution(5)  # status, open, close, status: 4 exchanges
    assert status.pattern == "00001000"
    assert (await driver.identify())["model"] == "ValveLink8.2-SIM"
    assert driver.retries == 0 and driver._link.skipped_lines == 4


async def test_faults_in_a_row_never_leave_a_stale_reply(
    driver: PerfusionDriver, sim: PerfusionSimulator
) -> None:
    await driver.open_valve(6)
    for fault in ("stall", "garbage", "close", "noise_then_reply", "stall", "garbage", "close"):
        sim.inject_fault(fault)
        if fault == "garbage":
            sim.inject_fault(fault)  # garbled twice: the one retry is garbled too
        if fault == "noise_then_reply":
            assert (await driver.valve_states()).pattern == "00000100"
        else:
            with pytest.raises((InstrumentReplyError, LinkError)):
                await driver.valve_states()
        assert (await driver.identify())["serial"] == "VL8-SIM-0001"  # not a status reply
        assert (await driver.valve_states()).pattern == "00000100"


async def test_concurrent_callers_are_serialised(driver: PerfusionDriver) -> None:
    results = await asyncio.gather(
        driver.select_solution(3), driver.readings(), driver.identify(), driver.valve_states(),
        driver.open_valve(7),
    )
    assert len(results) == 5
    assert (await driver.valve_states()).valves[6] == "open"


async def test_bath_follows_the_selected_solution(
    driver: PerfusionDriver, sim: PerfusionSimulator, clock: VirtualClock
) -> None:
    await driver.select_solution(1)
    clock.advance(120)
    await driver.select_solution(2)
    start = clock.monotonic()
    clock.advance(4.5)  # dead volume 250 ul at 50 ul/s: 5 s before solution 2 arrives
    assert sim.bath_composition()[1] > 0.999
    clock.advance(0.5 + 10)  # one time constant after it arrived
    assert sim.bath_composition()[2] == pytest.approx(1 - math.exp(-1), abs=0.02)
    clock.advance(50)
    assert sim.bath_composition(start + 65)[2] > 0.99


async def test_wrong_device_address_times_out_at_open(
    handle: PerfusionSimHandle, clock: VirtualClock
) -> None:
    drv = PerfusionDriver(handle.address, device_address=3, timeout_s=TIMEOUT_S, clock=clock)
    with pytest.raises(InstrumentTimeoutError):
        await drv.open()  # nobody at address 3 answers
    assert not drv.connected
    await drv.close()


async def test_missing_port_is_a_link_error(tmp_path: Path) -> None:
    drv = PerfusionDriver(str(tmp_path / "nothing"), timeout_s=TIMEOUT_S)
    with pytest.raises(LinkError):
        await drv.open()
    assert not drv.connected
    await drv.close()
    await drv.close()  # idempotent
    with pytest.raises(ValueError):
        PerfusionDriver("x", device_address=10)

"""The incubator driver against its simulator over real Modbus TCP and RTU-over-TCP (no mocks),
on a VirtualClock: incubations of many simulated minutes take milliseconds. Hostile links
(bytes one at a time, garbage before a reply) go through a small TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from drivers.base import Instrument
from drivers.clock import VirtualClock
from drivers.errors import (
    InstrumentFaultError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    LinkError,
)
from drivers.incubator import IncubatorDriver
from drivers.incubator.registers import NO_VALUE, Reg
from simulators.incubator import (
    IncubatorSimHandle,
    IncubatorSimSpec,
    IncubatorSimulator,
    start_incubator_simulator,
)

TIMEOUT_S = 0.3  # reply timeout: the stall tests wait this long (real time) once


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(autojump=True)


@pytest.fixture
async def handle(clock: VirtualClock) -> AsyncIterator[IncubatorSimHandle]:
    h = await start_incubator_simulator(IncubatorSimSpec(rtu_port=0), clock, None)
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
def sim(handle: IncubatorSimHandle) -> IncubatorSimulator:
    return handle.simulator


@pytest.fixture(params=["tcp", "rtu"])
async def driver(
    request: pytest.FixtureRequest, handle: IncubatorSimHandle, clock: VirtualClock
) -> AsyncIterator[IncubatorDriver]:
    address = handle.address if request.param == "tcp" else handle.rtu_address
    assert address is not None
    drv = IncubatorDriver(address, clock=clock, timeout_s=TIMEOUT_S)
    await drv.open()
    try:
        yield drv
    finally:
        await drv.close()


async def _warm(driver: IncubatorDriver, clock: VirtualClock, celsius: float = 37.0) -> None:
    await driver.set_temperature(celsius)
    await clock.sleep(3600)


async def _until(condition: object, what: str) -> None:
    """Wait (real time, bounded) for a network-side event, e.g. a request reaching the sim."""
    for _ in range(400):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def test_identify_and_initial_readings(driver: IncubatorDriver) -> None:
    assert isinstance(driver, Instrument)
    assert driver.connected
    ident = await driver.identify()
    assert ident["vendor"] == "Eurotherm" and ident["device_id"] == 1
    readings = await driver.readings()
    assert readings.state == "idle" and readings.fault is None
    values = readings.values
    assert values["temperature_c"] == 21.0 and values["setpoint_c"] == 21.0
    assert values["shaking"] is False and values["shaker_rpm"] == 0
    assert not any(values[f"alarm_{i}"] for i in range(1, 5))


async def test_set_temperature_never_rewrites_an_unchanged_setpoint(
    driver: IncubatorDriver, sim: IncubatorSimulator
) -> None:
    assert await driver.set_temperature(37.0) is True
    assert await driver.set_temperature(37.0) is False
    assert await driver.set_temperature(36.96) is False  # 37.0 at the register's resolution
    assert sim.writes[Reg.TARGET_SP] == 1
    assert await driver.set_temperature(36.5) is True
    assert sim.eeprom_writes == 2
    for bad in (float("nan"), 5000.0):
        with pytest.raises(ValueError):
            await driver.set_temperature(bad)
    with pytest.raises(InstrumentReplyError) as refused:
        await driver.set_temperature(99.0)  # the controller's range ends at 60 C
    assert refused.value.code == 3
    assert sim.eeprom_writes == 2
    assert await driver.set_ramp_rate(0.0) is False
    both = await asyncio.gather(driver.set_temperature(25.0), driver.set_temperature(25.0))
    assert sorted(both) == [False, True]  # concurrent callers: still one write
    assert sim.eeprom_writes == 3


async def test_wait_until_stable_reaches_37_within_tolerance_and_hold(
    driver: IncubatorDriver, clock: VirtualClock
) -> None:
    await driver.set_temperature(37.0)
    started = clock.monotonic()
    stable_at = await driver.wait_until_stable(tolerance_c=0.2, hold_s=120, timeout_s=3600,
                                               poll_s=5)
    assert started < stable_at <= clock.monotonic() - 120
    readings = await driver.readings()
    assert readings.state == "idle"
    temperature = readings.values["temperature_c"]
    assert isinstance(temperature, float) and abs(temperature - 37.0) <= 0.2


async def test_wait_until_stable_times_out_on_the_clock(
    driver: IncubatorDriver, clock: VirtualClock
) -> None:
    await driver.set_temperature(37.0)
    with pytest.raises(InstrumentTimeoutError, match="not stable"):
        await driver.wait_until_stable(tolerance_c=0.2, hold_s=60, timeout_s=120, poll_s=5)
    assert clock.monotonic() == pytest.approx(120, abs=5)


async def test_ramp_rate_makes_readings_busy_until_the_ramp_ends(
    driver: IncubatorDriver, clock: VirtualClock
) -> None:
    assert await driver.set_ramp_rate(2.0) is True
    await driver.set_temperature(30.0)
    await clock.sleep(60)
    status = await driver.status()
    assert status.ramping and status.working_setpoint_c == pytest.approx(23.0)
    assert (await driver.readings()).state == "busy"
    await driver.wait_until_stable(tolerance_c=0.3, hold_s=60, timeout_s=3600, poll_s=10)
    assert not (await driver.status()).ramping


async def test_shaker_on_and_off_idempotently(
    driver: IncubatorDriver, sim: IncubatorSimulator, clock: VirtualClock
) -> None:
    await driver.start_shaking(600)
    await clock.sleep(5)
    readings = await driver.readings()
    assert readings.state == "busy"
    assert readings.values["shaking"] is True and readings.values["shaker_rpm"] == 600
    await driver.start_shaking(600)
    assert sim.writes[Reg.SHAKER_ON] == 1 and sim.writes[Reg.SHAKER_RPM_SP] == 1
    await driver.stop_shaking()
    await driver.stop_shaking()
    assert sim.writes[Reg.SHAKER_ON] == 2
    await clock.sleep(5)
    readings = await driver.readings()
    assert readings.values["shaking"] is False and readings.values["shaker_rpm"] == 0
    with pytest.raises(ValueError):
        await driver.start_shaking(0)
    with pytest.raises(InstrumentReplyError) as refused:
        await driver.start_shaking(5000)  # above the shaker's 1500 rpm
    assert refused.value.code == 3


async def test_door_open_drops_the_pv_and_readings_show_it(
    driver: IncubatorDriver, sim: IncubatorSimulator, clock: VirtualClock
) -> None:
    await _warm(driver, clock)
    sim.inject_fault("door_open")
    await clock.sleep(60)
    readings = await driver.readings()
    temperature = readings.values["temperature_c"]
    assert isinstance(temperature, float) and temperature < 35.0
    assert readings.state == "busy" and readings.values["output_pct"] == 100.0
    sim.inject_fault("door_close")
    await driver.wait_until_stable(tolerance_c=0.2, hold_s=60, timeout_s=3600, poll_s=10)


async def test_sensor_break_is_a_fault_and_stops_the_wait(
    driver: IncubatorDriver, sim: IncubatorSimulator, clock: VirtualClock
) -> None:
    await driver.set_temperature(37.0)
    sim.inject_fault("sensor_break")
    readings = await driver.readings()
    assert readings.state == "fault" and readings.fault == "sensor break"
    assert readings.values["temperature_c"] is None and readings.values["sensor_break"] is True
    with pytest.raises(InstrumentFaultError) as fault:
        await driver.wait_until_stable(tolerance_c=0.2, hold_s=60, timeout_s=3600)
    assert fault.value.fault == "sensor break"
    sim.inject_fault("clear")
    assert (await driver.readings()).fault is None


async def test_over_temperature_alarm_is_a_fault(
    driver: IncubatorDriver, sim: IncubatorSimulator, clock: VirtualClock
) -> None:
    await _warm(driver, clock)
    sim.inject_fault("over_temperature")
    await clock.sleep(600)
    readings = await driver.readings()
    assert readings.state == "fault" and readings.fault == "alarm 1"
    assert readings.values["alarm_1"] is True


async def test_link_faults_give_typed_errors_and_the_next_call_recovers(
    driver: IncubatorDriver, sim: IncubatorSimulator, clock: VirtualClock
) -> None:
    link = driver._link  # the reconnect counter is not part of the driver's API
    # Idle disconnect: noticed, and the next call simply reconnects.
    sim.inject_fault("disconnect")
    await _until(lambda: not driver.connected, "the driver notices the reset")
    assert (await driver.readings()).values["temperature_c"] == 21.0
    assert link.reconnects == 1
    # Stall: a typed timeout, then recovery once the controller answers again.
    sim.inject_fault("stall")
    with pytest.raises(InstrumentTimeoutError):
        await driver.readings()
    clock.advance(sim.spec.stall_s)
    assert (await driver.readings()).state == "idle"
    assert link.reconnects == 2
    # The port closing mid-command fails that command at once, not after the timeout.
    sim.inject_fault("stall")
    seen = sim.requests
    pending = asyncio.create_task(driver.set_temperature(30.0))
    await _until(lambda: sim.requests > seen, "the request reaches the controller")
    sim.inject_fault("disconnect")
    with pytest.raises(LinkError) as lost:
        await pending
    assert not isinstance(lost.value, InstrumentTimeoutError)
    sim.inject_fault("clear")
    assert await driver.set_temperature(30.0) is True
    assert sim.writes[Reg.TARGET_SP] == 1


async def test_unreachable_then_reconnect_with_backoff(clock: VirtualClock) -> None:
    spec = IncubatorSimSpec()
    handle = await start_incubator_simulator(spec, clock, None)
    address = handle.address
    port = handle.simulator.port
    drv = IncubatorDriver(address, clock=clock, timeout_s=TIMEOUT_S)
    await drv.open()
    await handle.stop()
    await _until(lambda: not drv.connected, "the driver notices the server went away")
    for _ in range(2):
        with pytest.raises(LinkError, match="cannot connect"):
            await drv.readings()
    before = clock.monotonic()
    handle = await start_incubator_simulator(
        IncubatorSimSpec(port=port), clock, None)
    try:
        assert (await drv.readings()).state == "idle"
        assert clock.monotonic() > before  # waited out the backoff on the clock
    finally:
        await drv.close()
        await handle.stop()


async def test_exception_02_from_a_controller_without_shaker(clock: VirtualClock) -> None:
    handle = await start_incubator_simulator(IncubatorSimSpec(has_shaker=False), clock, None)
    try:
        async with IncubatorDriver(handle.address, clock=clock, timeout_s=TIMEOUT_S) as drv:
            with pytest.raises(InstrumentReplyError, match="illegal data address") as err:
                await drv.readings()
            assert err.value.code == 2
            assert await drv.set_temperature(25.0) is True  # the controller part still works
    finally:
        await handle.stop()


@pytest.mark.parametrize(("register", "word", "message"), [
    (Reg.SHAKER_ON, 7, "register 300.*holds 7"),
    (Reg.SHAKER_RPM, 60000, "register 302.*60000"),
    (Reg.TARGET_SP, NO_VALUE, "register 2 .*no-value"),
])
async def test_nonsense_in_a_register_is_a_clear_reply_error(
    driver: IncubatorDriver, sim: IncubatorSimulator, monkeypatch: pytest.MonkeyPatch,
    register: int, word: int, message: str,
) -> None:
    honest = sim._word
    monkeypatch.setattr(sim, "_word", lambda a: word if a == register else honest(a))
    with pytest.raises(InstrumentReplyError, match=message) as err:
        await driver.readings()
    assert err.value.code is None


# ---------------------------------------------------------------------- hostile transport

class _Proxy:
    """TCP relay to the simulator that can dribble replies one byte at a time or put
    garbage in front of the next reply."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.dribble = False
        self.garbage_next = b""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> _Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]

        async def upstream() -> None:
            while data := await reader.read(4096):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(4096):
                if self.garbage_next:
                    data, self.garbage_next = self.garbage_next + data, b""
                chunks = [data[i:i + 1] for i in range(len(data))] if self.dribble else [data]
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    if self.dribble:
                        await asyncio.sleep(0.001)  # let each byte go out on its own

        with contextlib.suppress(ConnectionError):
            async with asyncio.TaskGroup() as group:
                group.create_task(upstream())
                group.create_task(downstream())
        writer.transport.abort()
        up_writer.transport.abort()


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_bytes_one_at_a_time_and_garbage_before_a_reply(
    handle: IncubatorSimHandle, clock: VirtualClock, framing: str
) -> None:
    sim = handle.simulator
    upstream = sim.port if framing == "tcp" else sim.rtu_port
    assert upstream is not None
    async with _Proxy(upstream) as proxy:
        address = (f"modbus-tcp://127.0.0.1:{proxy.port}" if framing == "tcp"
                   else f"modbus-rtu://socket://127.0.0.1:{proxy.port}")
        async with IncubatorDriver(address, clock=clock, timeout_s=0.5) as drv:
            proxy.dribble = True
            assert await drv.set_temperature(37.0) is True
            assert (await drv.readings()).values["setpoint_c"] == 37.0
            proxy.dribble = False
            proxy.garbage_next = b"\xff\x00\x17garbage\x01"
            with contextlib.suppress(LinkError, InstrumentReplyError):
                await drv.readings()  # may survive (RTU could resync on the CRC) or fail typed
            readings = await drv.readings()
            assert readings.values["setpoint_c"] == 37.0
            assert sim.writes[Reg.TARGET_SP] == 1

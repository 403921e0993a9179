"""The counter driver against the simulator over real TCP through pyvisa-py (no mocks).

The simulator runs in-process on port 0 with a high time scale, so a 96-well count takes a
fraction of a second; faults are injected from the test while the driver streams.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from drivers.backoff import Backoff
from drivers.counter import CounterDriver, WellCount
from drivers.errors import (
    InstrumentFaultError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    LinkError,
)
from simulators.counter import CounterSimulator, FaultKind

TIMEOUT_S = 0.4  # driver reply timeout: the stall tests wait this long once


@pytest.fixture
async def sim() -> AsyncIterator[CounterSimulator]:
    simulator = CounterSimulator(time_scale=2000, seed=7)
    await simulator.start()
    simulator.load_demo_plate()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def driver(sim: CounterSimulator) -> AsyncIterator[CounterDriver]:
    drv = CounterDriver(sim.resource, timeout_s=TIMEOUT_S, poll_interval_s=0.005,
                        reconnect_timeout_s=3.0)
    await drv.open()
    try:
        yield drv
    finally:
        await drv.close()


def _assert_exact(got: list[WellCount], truth: list[WellCount]) -> None:
    assert [w.index for w in got] == list(range(len(got)))  # index order, no gaps, no repeats
    assert len({w.well for w in got}) == len(got)
    assert got == truth  # nothing invented: byte-for-byte the simulator's own records


async def test_identify_and_status(driver: CounterDriver) -> None:
    ident = await driver.identify()
    assert (ident.vendor, ident.model, ident.detectors) == ("PerkinSim", "MicroBeta2-SIM", 12)
    status = await driver.status()
    assert (status.state, status.door_open, status.plate_id, status.fault) == (
        "idle", False, "DEMO-0001", None)
    assert driver.connected


async def test_full_count_yields_96_wells_in_order(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    got = [w async for w in driver.count_plate(count_time_s=30, isotope="H3")]
    assert len(got) == 96
    _assert_exact(got, sim.records())
    assert (await driver.status()).state == "done"


async def test_selected_wells_only(driver: CounterDriver, sim: CounterSimulator) -> None:
    got = [w async for w in driver.count_plate(count_time_s=10, wells=["A1", "A2", "H12"])]
    assert sorted(w.well for w in got) == ["A1", "A2", "H12"]
    _assert_exact(got, sim.records())


@pytest.mark.parametrize("fault", ["disconnect", "stall", "garbage"])
async def test_link_faults_mid_count_lose_and_repeat_nothing(
    driver: CounterDriver, sim: CounterSimulator, fault: FaultKind
) -> None:
    link = driver._link  # CounterDriver does not re-export the link's counter
    got: list[WellCount] = []
    reconnects_at_fault = -1
    async for well in driver.count_plate(count_time_s=60):
        got.append(well)
        if len(got) == 24:
            reconnects_at_fault = link.reconnects
            sim.inject_fault(fault)
    assert len(got) == 96
    _assert_exact(got, sim.records())
    assert reconnects_at_fault == 0
    assert link.reconnects >= 1, f"the {fault} fault never made the driver reopen its link"


async def test_a_stalled_instrument_holds_its_own_thread_not_a_shared_one(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    loop = asyncio.get_running_loop()
    shared = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shared")
    loop.set_default_executor(shared)  # one shared worker: a stall there would block this
    prefix = f"visa-{driver.instrument_id}"
    sim.inject_fault("stall")
    status = asyncio.create_task(driver.status())
    await asyncio.sleep(TIMEOUT_S / 4)  # the query now blocks in a reading thread
    assert not status.done()
    async with asyncio.timeout(TIMEOUT_S / 2):  # well before the instrument's timeout
        assert (await asyncio.to_thread(lambda: threading.current_thread().name)).startswith(
            "shared"
        )
    workers = [t for t in threading.enumerate() if t.name.startswith(prefix)]
    assert workers, "the link runs pyvisa in its own thread"
    with pytest.raises(InstrumentTimeoutError):
        await status
    await driver.close()
    for worker in workers:
        await asyncio.to_thread(worker.join, 5.0)
        assert not worker.is_alive(), "close() shuts the link's thread down"


async def test_stall_gives_a_typed_timeout_and_no_stale_reply_later(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    sim.inject_fault("stall")
    with pytest.raises(InstrumentTimeoutError):
        await driver.status()
    # The stalled status reply is still owed; it must not be taken for the identity.
    ident = await driver.identify()
    assert ident.model == "MicroBeta2-SIM"
    assert (await driver.status()).state == "idle"


async def test_garbage_gives_a_typed_error_then_recovers(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    sim.inject_fault("garbage")
    with pytest.raises(InstrumentReplyError) as info:
        await driver.identify()
    assert info.value.code is None  # garbled, not an instrument error code
    assert (await driver.identify()).detectors == 12


async def test_door_open_mid_count_raises_after_the_counted_wells(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    got: list[WellCount] = []
    with pytest.raises(InstrumentFaultError) as info:
        async for well in driver.count_plate(count_time_s=60):
            got.append(well)
            if len(got) == 12:
                sim.inject_fault("door_open")
    assert info.value.fault == "door open"
    assert 12 <= len(got) < 96
    _assert_exact(got, sim.records())  # everything counted before the door opened, no more
    status = await driver.status()
    assert (status.state, status.door_open, status.fault) == ("aborted", True, "door open")


async def test_instrument_error_reply_carries_its_code(sim: CounterSimulator) -> None:
    async with CounterDriver(sim.resource, timeout_s=TIMEOUT_S) as drv:
        sim.inject_fault("door_open")
        with pytest.raises(InstrumentReplyError) as info:
            await drv.start_count()
        assert info.value.code == 202
        with pytest.raises(ValueError):
            await drv.configure(count_time_s=10, isotope="U235")


async def test_resume_from_continues_a_running_count(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    first: list[WellCount] = []
    stream = driver.count_plate(count_time_s=60)
    async for well in stream:
        first.append(well)
        if len(first) == 30:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    rest = [w async for w in driver.count_plate(count_time_s=60, resume_from=len(first))]
    _assert_exact(first + rest, sim.records())
    assert len(first + rest) == 96


async def test_status_is_safe_while_count_plate_runs(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    seen: list[str] = []

    async def watch() -> None:
        while len(seen) < 20:
            seen.append((await driver.status()).state)

    watcher = asyncio.create_task(watch())
    got = [w async for w in driver.count_plate(count_time_s=30)]
    await watcher
    assert len(got) == 96 and set(seen) <= {"idle", "counting", "done"}
    _assert_exact(got, sim.records())


async def test_connection_refused_at_open_is_a_link_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    drv = CounterDriver(f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=TIMEOUT_S)
    with pytest.raises(LinkError):
        await drv.open()
    assert not drv.connected
    await drv.close()
    await drv.close()  # idempotent


async def test_count_gives_up_after_reconnect_timeout_when_the_counter_is_gone() -> None:
    sim = CounterSimulator(time_scale=200, seed=2)
    await sim.start()
    sim.load_demo_plate()
    drv = CounterDriver(sim.resource, timeout_s=TIMEOUT_S, poll_interval_s=0.005,
                        reconnect_timeout_s=0.5)
    got: list[WellCount] = []
    try:
        await drv.open()
        with pytest.raises(LinkError) as info:
            async for well in drv.count_plate(count_time_s=60):
                got.append(well)
                if len(got) == 12:
                    await sim.stop()
        assert not isinstance(info.value, InstrumentTimeoutError) or info.value.retryable
        assert len(got) < 96
    finally:
        await drv.close()
        await sim.stop()


async def test_cancelling_a_count_leaves_the_driver_usable(
    driver: CounterDriver, sim: CounterSimulator
) -> None:
    twelve = asyncio.Event()

    async def consume() -> None:
        async for well in driver.count_plate(count_time_s=60):
            if well.index == 11:
                twelve.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(3):
        await twelve.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await driver.abort()
    status = await driver.status()
    assert (status.state, status.fault) == ("aborted", "aborted by host")


def test_backoff_is_jittered_exponential_and_capped() -> None:
    high = Backoff(base_s=0.1, factor=2.0, cap_s=1.0, random=lambda: 1.0)
    assert [high.delay(i) for i in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    low = Backoff(base_s=0.1, factor=2.0, cap_s=1.0, random=lambda: 0.0)
    assert low.delay(2) == pytest.approx(0.2)  # equal jitter: never below half the ceiling
    assert high.delay(100_000) == 1.0
    with pytest.raises(ValueError):
        Backoff(base_s=0.0)

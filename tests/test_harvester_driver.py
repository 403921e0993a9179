"""The harvester driver against its simulator over a real pty (no mocks).

Simulator and driver share a :class:`VirtualClock` with autojump, so a 90-second harvest
takes milliseconds; reply timeouts are real and short. Faults are injected either up front
or at an exact point of the exchange (:func:`when`), never by racing the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
from drivers.harvester import HarvesterDriver
from simulators.harvester import FaultKind, HarvesterSimSpec, HarvesterSimulator
from simulators.pty_port import PtyPort

TIMEOUT_S = 0.3


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(autojump=True)


@pytest.fixture
async def sim(tmp_path: Path, clock: VirtualClock) -> AsyncIterator[HarvesterSimulator]:
    async with HarvesterSimulator(
        HarvesterSimSpec(link_path=tmp_path / "dev" / "ttyHARV"), clock
    ) as simulator:
        yield simulator


@pytest.fixture
async def driver(sim: HarvesterSimulator, clock: VirtualClock) -> AsyncIterator[HarvesterDriver]:
    async with HarvesterDriver(sim.address, timeout_s=TIMEOUT_S, clock=clock,
                               reconnect_timeout_s=30.0) as drv:
        yield drv


def when(sim: HarvesterSimulator, trigger: Callable[[bytes, list[bytes]], bool],
         *faults: FaultKind, after: bool = False) -> None:
    """Inject ``faults`` as the simulator answers the first line for which
    ``trigger(line, lines_so_far)`` holds: before it handles the line (a transport fault
    then hits that very reply) or, with ``after``, once it has (e.g. just as a step starts)."""
    original = sim._reply_to
    seen: list[bytes] = []
    fired = False

    def spy(line: bytes):  # type: ignore[no-untyped-def]
        nonlocal fired
        seen.append(line)
        fire = not fired and trigger(line, seen)
        fired = fired or fire
        if fire and not after:
            for fault in faults:
                sim.inject_fault(fault)
        reply = original(line)
        if fire and after:
            for fault in faults:
                sim.inject_fault(fault)
        return reply

    sim._reply_to = spy  # type: ignore[method-assign]


def first_poll_after(prefix: bytes) -> Callable[[bytes, list[bytes]], bool]:
    def trigger(line: bytes, seen: list[bytes]) -> bool:
        started = [i for i, s in enumerate(seen) if s.startswith(prefix)]
        return bool(started) and line.startswith(b"ST?") and len(seen) > started[0] + 1
    return trigger


# --------------------------------------------------------------------------- normal work


async def test_identify_status_and_readings(driver: HarvesterDriver) -> None:
    assert isinstance(driver, Instrument)
    assert driver.connected
    ident = await driver.identify()
    assert (ident["vendor"], ident["model"]) == ("BrandelSim", "HARV96-SIM")
    st = await driver.status()
    assert (st.state, st.step, st.fault, st.mat_seated, st.plate_present) == (
        "idle", "none", None, True, True)
    readings = await driver.readings()
    assert readings.state == "idle" and readings.fault is None
    assert set(readings.values) >= {"step", "vacuum_bar", "buffer_pct", "waste_pct",
                                    "mat_seated", "plate_present"}


async def test_full_harvest(driver: HarvesterDriver, sim: HarvesterSimulator,
                            clock: VirtualClock) -> None:
    report = await driver.harvest(prewet_s=10, washes=3, wash_volume_ml=1.0, dry_s=30)
    assert 60.0 <= report.duration_s <= 130.0
    assert report.clogged_wells == ()
    assert report.buffer_pct < 100.0 and report.waste_pct > 0.0
    assert report.peak_vacuum_bar < -0.1
    assert len(sim.cycles) == 1 and sim.cycles[0].prewet and sim.cycles[0].washes == 3
    st = await driver.status()
    assert (st.state, st.step, st.mat_seated) == ("idle", "release", True)


async def test_clogged_wells_are_reported_not_raised(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    sim.inject_fault("clogged_wells", ["H12", "A3"])
    report = await driver.harvest(prewet_s=0, washes=1, dry_s=5)
    assert report.clogged_wells == ("A3", "H12")
    assert await driver.anomalies() == ["A3", "H12"]
    assert not sim.cycles[0].prewet
    assert await driver.aspirate() == []  # the next plate drains normally


async def test_release_is_idempotent(driver: HarvesterDriver, sim: HarvesterSimulator) -> None:
    await driver.release_mat()
    await driver.release_mat()
    assert (await driver.status()).mat_seated


async def test_bad_arguments_raise_before_anything_is_sent(driver: HarvesterDriver) -> None:
    for call in (driver.prewet(0.5), driver.wash(0, 1.0), driver.dry(1000),
                 driver.harvest(washes=3, wash_volume_ml=9.0)):
        with pytest.raises(ValueError):
            await call
    assert driver.retries == 0


# --------------------------------------------------------------------------- instrument faults


@pytest.mark.parametrize(("fault", "step", "name"), [
    ("low_vacuum", "aspirate", "low_vacuum"),
    ("mat_not_seated", "aspirate", "mat_not_seated"),
    ("waste_full", "aspirate", "waste_full"),
    ("buffer_empty", "wash", "buffer_empty"),
])
async def test_each_fault_is_typed_and_the_next_command_recovers(
    driver: HarvesterDriver, sim: HarvesterSimulator, fault: FaultKind, step: str, name: str
) -> None:
    sim.inject_fault(fault)
    with pytest.raises(InstrumentFaultError) as info:
        if step == "wash":
            await driver.wash(3, 1.0)
        else:
            await driver.aspirate()
    assert info.value.fault == name
    readings = await driver.readings()  # the link is fine: the instrument says why
    assert readings.state in ("idle", "fault")
    sim.inject_fault("clear")
    await driver.abort()
    await driver.aspirate()
    await driver.wash(1, 0.5)
    assert (await driver.status()).state == "idle"


async def test_faults_arising_mid_step(driver: HarvesterDriver, sim: HarvesterSimulator) -> None:
    when(sim, lambda line, _: line.startswith(b"DR"), "mat_not_seated", after=True)
    with pytest.raises(InstrumentFaultError) as info:
        await driver.dry(30)
    assert info.value.fault == "mat_not_seated"
    st = await driver.status()
    assert (st.state, st.fault, st.step) == ("fault", "mat_not_seated", "dry")
    with pytest.raises(InstrumentFaultError):  # latched until the host acknowledges
        await driver.prewet(5)
    sim.inject_fault("clear")
    await driver.abort()
    await driver.dry(5)


async def test_no_plate(driver: HarvesterDriver, sim: HarvesterSimulator) -> None:
    sim.load_plate(False)
    with pytest.raises(InstrumentFaultError) as info:
        await driver.aspirate()
    assert info.value.fault == "no_plate"
    sim.load_plate(True)
    assert await driver.aspirate() == []


async def test_busy_then_abort(tmp_path: Path) -> None:
    clock = VirtualClock()  # moved by hand: the dry step cannot end behind our back
    async with (
        HarvesterSimulator(HarvesterSimSpec(), clock) as sim,
        HarvesterDriver(sim.address, timeout_s=TIMEOUT_S, clock=clock) as driver,
    ):
        drying = asyncio.create_task(driver.dry(60))
        for _ in range(200):
            if sim.model.state == "BUSY":
                break
            await asyncio.sleep(0)
        assert (await driver.status()).state == "busy"
        with pytest.raises(InstrumentReplyError) as busy:
            await driver.prewet(5)
        assert busy.value.code == 20
        await driver.abort()
        clock.advance(1.0)
        with pytest.raises(InstrumentFaultError) as aborted:
            await drying
        assert aborted.value.fault == "aborted"
        st = await driver.status()
        assert (st.state, st.step, st.fault) == ("idle", "dry", None)
        assert st.progress_pct < 100


async def test_an_aspirate_cut_short_is_reported_and_finished_on_the_same_mat(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    """A fault part-way through AS leaves the plate partly on the mat: ``MT?`` says an
    aspirate began though none completed; a new cycle is refused that mat, and the resumed
    one aspirates again, washes and dries it (one harvest, not two)."""
    when(sim, lambda line, _: line.startswith(b"AS"), "mat_not_seated", after=True)
    with pytest.raises(InstrumentFaultError):
        await driver.harvest(prewet_s=5, washes=2, wash_volume_ml=1.0, dry_s=10)
    sim.inject_fault("clear")
    await driver.clear_fault()
    mat = await driver.mat()
    assert (mat.began, mat.aspirated, mat.used, mat.dried) == (True, False, True, False)
    with pytest.raises(InstrumentFaultError) as refused:
        await driver.harvest(prewet_s=5, washes=2, wash_volume_ml=1.0, dry_s=10)
    assert refused.value.fault == "mat_in_use"
    report = await driver.harvest(prewet_s=5, washes=2, wash_volume_ml=1.0, dry_s=10,
                                  resume=mat)
    assert report.mat is not None and report.mat.dried and report.mat.washes == 2
    assert report.mat.made == mat.made + 1 and len(sim.cycles) == 1


# --------------------------------------------------------------------------- transport faults


async def test_garbled_replies_are_retried_once(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    sim.inject_fault("garbage")
    assert (await driver.status()).state == "idle"
    sim.inject_fault("bad_checksum")
    assert (await driver.identity()).model == "HARV96-SIM"
    assert driver.retries == 2
    sim.inject_fault("bad_checksum")
    sim.inject_fault("bad_checksum")
    with pytest.raises(InstrumentReplyError) as info:
        await driver.status()
    assert info.value.code is None
    assert (await driver.status()).state == "idle"


async def test_noise_before_the_reply_is_skipped_within_the_same_timeout(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    """Garbage between frames: a noise line, then the real reply. The driver skips the noise
    (not a checked OK/ER frame) and reads on; nothing stale is left for the next command."""
    sim.inject_fault("noise_then_reply")
    assert (await driver.status()).state == "idle"
    assert (await driver.identity()).model == "HARV96-SIM"  # not a late status reply
    when(sim, lambda line, _: line.startswith(b"PW"), "noise_then_reply")
    await driver.prewet(5)  # the step's acknowledgement came after noise too
    sim.inject_fault("noise_then_reply")
    sim.inject_fault("noise_then_reply")
    assert await driver.anomalies() == []
    assert (await driver.status()).step == "prewet"
    assert driver.retries == 0 and driver._link.skipped_lines == 4


async def test_noise_then_a_garbled_reply_is_retried_then_recovers(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    sim.inject_fault("noise_then_reply")
    sim.inject_fault("bad_checksum")  # the reply after the noise fails its checksum
    assert (await driver.status()).state == "idle"
    assert driver.retries == 1
    sim.inject_fault("garbage")
    sim.inject_fault("garbage")
    with pytest.raises(InstrumentReplyError) as info:
        await driver.identity()
    assert info.value.code is None
    assert (await driver.identity()).serial == "H96-0001"
    assert (await driver.status()).state == "idle"


async def test_a_garbled_step_ack_does_not_run_the_step_twice(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    when(sim, lambda line, _: line.startswith(b"AS"), "bad_checksum")
    await driver.aspirate()
    await driver.dry(5)
    assert driver.retries == 1 and len(sim.cycles) == 1


async def test_reply_one_byte_at_a_time(driver: HarvesterDriver, sim: HarvesterSimulator) -> None:
    sim.inject_fault("byte_by_byte")
    assert (await driver.identity()).serial == "H96-0001"
    assert driver.retries == 0


async def test_stalled_reply_times_out_then_recovers(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    sim.inject_fault("stall")
    with pytest.raises(InstrumentTimeoutError):
        await driver.status()
    assert (await driver.identity()).model == "HARV96-SIM"


async def test_port_closing_mid_command_then_recovers(
    driver: HarvesterDriver, sim: HarvesterSimulator
) -> None:
    sim.inject_fault("close")
    with pytest.raises(LinkError) as info:
        await driver.status()
    assert not isinstance(info.value, InstrumentTimeoutError)
    assert (await driver.status()).state == "idle"  # reopened through the same symlink
    assert driver.reconnects == 1


@pytest.mark.parametrize("fault", ["stall", "close", "garbage", "noise_then_reply"])
async def test_a_harvest_rides_out_link_faults_while_polling(
    driver: HarvesterDriver, sim: HarvesterSimulator, fault: FaultKind
) -> None:
    when(sim, first_poll_after(b"WS"), fault)
    report = await driver.harvest(prewet_s=5, washes=2, wash_volume_ml=1.0, dry_s=10)
    assert report.washes == 2 and len(sim.cycles) == 1
    if fault == "close":
        assert driver.reconnects == 1


# --------------------------------------------------------------------------- opening


async def test_open_fails_typed_when_nothing_answers(tmp_path: Path) -> None:
    with pytest.raises(LinkError):
        await HarvesterDriver(str(tmp_path / "no-such-port"), timeout_s=TIMEOUT_S).open()

    async def mute(line: bytes) -> None:
        return None

    port = PtyPort()
    serving = asyncio.create_task(port.serve(mute))
    try:
        drv = HarvesterDriver(port.address, timeout_s=TIMEOUT_S)
        with pytest.raises(InstrumentTimeoutError):
            await drv.open()
        assert not drv.connected
    finally:
        await port.stop()
        await serving

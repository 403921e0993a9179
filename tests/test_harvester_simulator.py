"""The harvester simulator: its model on simulated time (timing, sensors, faults), its world
hook, and its wire behaviour over the real pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.clock import VirtualClock
from drivers.harvester.codec import (
    Abort,
    Aspirate,
    Dry,
    ErrorCode,
    ErrorReply,
    OkReply,
    Prewet,
    QueryStatus,
    Release,
    Status,
    Wash,
    encode_command,
    open_frame,
    parse_reply,
    parse_status,
)
from drivers.serial_link import SerialLink
from simulators.harvester import (
    HarvesterSimSpec,
    HarvesterSimulator,
    start_harvester_simulator,
)
from simulators.harvester_model import Cycle, HarvesterModel, HarvesterParams
from simulators.world_api import FilterMat, HarvestSettings

# --------------------------------------------------------------------------- the model


def model(**params: object) -> HarvesterModel:
    return HarvesterModel(HarvesterParams(**params), lambda: True)  # type: ignore[arg-type]


def run(m: HarvesterModel, command: object, now: float) -> float:
    """Start ``command`` at ``now`` and return when its step completed."""
    assert m.start(command, now) is None  # type: ignore[arg-type]
    t = now
    while m.state == "BUSY":
        t = m.next_event()
        m.advance(t)
    assert m.state == "IDLE", m.fault
    return t


def test_a_96_well_plate_takes_one_to_two_minutes() -> None:
    m = model()
    t = 0.0
    for command in (Prewet(10), Aspirate(), Wash(3, 1.0), Dry(30), Release()):
        t = run(m, command, t)
    assert 60.0 <= t <= 120.0


def test_vacuum_while_pulling_and_after() -> None:
    m = model()
    m.start(Aspirate(), 0.0)
    assert m.status(0.0).vacuum_bar == 0.0
    for t in (3.0, 8.0, 14.0):
        assert -0.8 <= m.status(t).vacuum_bar <= -0.5
        assert m.status(t).state == "BUSY"
    assert m.status(14.0).progress_pct == 93
    assert m.status(30.0).state == "IDLE"
    assert -0.01 <= m.status(30.0).vacuum_bar <= 0.0


def test_washes_draw_buffer_and_fill_waste() -> None:
    m = model()
    t = run(m, Aspirate(), 0.0)
    after_aspirate = m.status(t)
    assert after_aspirate.waste_pct == pytest.approx(100 * 24 / 2000, abs=0.1)
    m.start(Wash(3, 1.0), t)
    mid = m.status(t + 12.0)
    assert (mid.cycle, mid.step) == (2, "WS")
    assert mid.buffer_pct == pytest.approx(100 * (4000 - 144) / 4000, abs=0.1)
    end = m.status(t + 30.0)
    assert end.buffer_pct == pytest.approx(100 * (4000 - 288) / 4000, abs=0.1)
    assert end.waste_pct == pytest.approx(100 * (24 + 288) / 2000, abs=0.1)


def test_leak_faults_a_vacuum_step_once_settled() -> None:
    m = model()
    m.set_leak(True, 0.0)
    m.start(Dry(30), 0.0)
    assert m.status(1.0).state == "BUSY"
    st = m.status(5.0)
    assert (st.state, st.fault_code, st.progress_pct) == ("FAULT", 10, 6)
    assert st.vacuum_bar > -0.3
    refusal = m.start(Dry(30), 6.0)
    assert refusal is not None and refusal.code == ErrorCode.LOW_VACUUM  # latched
    m.set_leak(False, 6.0)
    assert m.start(Abort(), 6.0) is None
    assert run(m, Dry(5), 7.0) == pytest.approx(12.0)


def test_leak_appearing_mid_step_faults_when_the_vacuum_decays() -> None:
    m = model()
    m.start(Dry(60), 0.0)
    m.set_leak(True, 10.0)
    assert m.status(10.2).state == "BUSY"  # still below the fault level
    assert m.status(12.0).fault_code == 10


def test_buffer_running_out_mid_wash_and_waste_filling_mid_step() -> None:
    m = model(buffer_capacity_ml=200.0)
    m.start(Wash(3, 1.0), 0.0)
    assert m.status(20.0).fault_code == ErrorCode.BUFFER_EMPTY
    assert m.status(20.0).buffer_pct == 0.0
    m = model(waste_capacity_ml=100.0)
    m.start(Wash(3, 1.0), 0.0)
    st = m.status(20.0)
    assert (st.state, st.fault_code, st.waste_pct) == ("FAULT", 13, 100.0)
    assert m.start(Abort(), 21.0) is None
    refusal = m.start(Aspirate(), 21.0)
    assert refusal is not None and refusal.code == ErrorCode.WASTE_FULL


def test_refusals_busy_and_repeat_safety() -> None:
    m = model()
    assert m.start(Aspirate(), 0.0) is None
    assert m.start(Aspirate(), 1.0) is None  # a repeat does not restart the step
    busy = m.start(Prewet(5), 1.0)
    assert busy is not None and busy.code == ErrorCode.BUSY
    assert m.status(15.0).state == "IDLE"  # ended 15 s after the first AS, not the repeat
    m.unseat_mat(16.0)
    refusal = m.start(Dry(10), 16.0)
    assert refusal is not None and refusal.code == ErrorCode.MAT_NOT_SEATED
    m = HarvesterModel(HarvesterParams(), lambda: False)
    refusal = m.start(Aspirate(), 0.0)
    assert refusal is not None and refusal.code == ErrorCode.NO_PLATE


def test_mat_lifting_mid_step_faults_it() -> None:
    m = model()
    m.start(Aspirate(), 0.0)
    m.unseat_mat(5.0)
    assert m.status(5.0).fault_code == ErrorCode.MAT_NOT_SEATED


def test_release_loads_a_fresh_mat_or_leaves_it_out() -> None:
    m = model()
    t = run(m, Release(), 0.0)
    assert t == pytest.approx(3.0) and m.mat_seated
    m = model(auto_load_mat=False)
    run(m, Release(), 0.0)
    assert not m.mat_seated
    assert run(m, Release(), 5.0) == 5.0  # nothing to release: done at once
    assert m.status(5.0).progress_pct == 100


def test_dry_after_aspirate_completes_the_cycle_once() -> None:
    done: list[Cycle] = []
    m = HarvesterModel(HarvesterParams(), lambda: True, done.append)
    m.clog_next = frozenset({"H12", "A3"})
    t = run(m, Prewet(10), 0.0)
    t = run(m, Aspirate(), t)
    assert m.cycle.clogged == ("A3", "H12")
    t = run(m, Wash(2, 0.5), t)
    t = run(m, Wash(1, 0.5), t)
    t = run(m, Dry(20), t)
    run(m, Dry(5), t)  # drying again harvests nothing new
    assert done == [Cycle(prewet=True, began=True, aspirated=True, washes=3, wash_volume_ml=0.5,
                          wash_s=12.0, clogged=("A3", "H12"), harvested=True)]


# --------------------------------------------------------------------------- world hook


@dataclass
class FakeWorld:
    plates: dict[str, str] = field(default_factory=dict)
    harvests: list[tuple[str, HarvestSettings]] = field(default_factory=list)

    def register_incubator(self, instrument_id: str, chamber_temperature_c: Callable[[], float],
                           shaking: Callable[[], bool]) -> None:
        raise AssertionError("not an incubator")

    def register_counter(self, instrument_id: str,
                         load_mat: Callable[[FilterMat | None], None]) -> None:
        raise AssertionError("not a counter")

    def plate_at(self, location: str) -> str | None:
        return self.plates.get(location)

    def harvest(self, location: str, settings: HarvestSettings) -> FilterMat:
        self.harvests.append((location, settings))
        return FilterMat(f"MAT-{len(self.harvests)}", self.plates[location], {"A1": 100.0})


@pytest.fixture
async def wire(tmp_path: Path) -> AsyncIterator[tuple[HarvesterSimulator, SerialLink,
                                                      VirtualClock, FakeWorld]]:
    clock = VirtualClock()
    world = FakeWorld()
    handle = await start_harvester_simulator(
        HarvesterSimSpec(instrument_id="h1", link_path=tmp_path / "dev" / "harvester"),
        clock, world)
    link = SerialLink(handle.address, timeout_s=0.5)
    await link.open()
    try:
        yield handle.simulator, link, clock, world
    finally:
        await link.close()
        await handle.stop()
    assert not (tmp_path / "dev" / "harvester").exists()


async def ask(link: SerialLink, command: object) -> OkReply | ErrorReply:
    line = await link.request(encode_command(command))  # type: ignore[arg-type]
    return parse_reply(open_frame(line).body)


async def status(link: SerialLink) -> Status:
    reply = await ask(link, QueryStatus())
    assert isinstance(reply, OkReply)
    return parse_status(reply.data)


async def test_world_plate_and_harvest_over_the_wire(wire: tuple[
        HarvesterSimulator, SerialLink, VirtualClock, FakeWorld]) -> None:
    sim, link, clock, world = wire
    assert not (await status(link)).plate_present
    assert await ask(link, Aspirate()) == ErrorReply(15, "No plate")
    world.plates["harvester:h1"] = "P1"
    for command, seconds in ((Prewet(10), 10), (Aspirate(), 15), (Wash(3, 1.0), 24),
                             (Dry(30), 30)):
        assert await ask(link, command) == OkReply()
        clock.advance(seconds / 2)
        mid = await status(link)
        assert mid.state == "BUSY" and -0.8 <= mid.vacuum_bar <= -0.5
        clock.advance(seconds / 2)
        assert (await status(link)).state == "IDLE"
    assert len(world.harvests) == 1
    location, settings = world.harvests[0]
    assert location == "harvester:h1"
    assert settings == HarvestSettings(prewet_pei=True, washes=3, wash_volume_ml=1.0,
                                       wash_temperature_c=4.0, wash_seconds_per_cycle=8.0,
                                       clogged_wells=())
    assert [m.mat_id for m in sim.mats] == ["MAT-1"]


async def test_harvest_happens_on_time_without_polling(wire: tuple[
        HarvesterSimulator, SerialLink, VirtualClock, FakeWorld]) -> None:
    sim, link, clock, world = wire
    world.plates["harvester:h1"] = "P1"
    sim.inject_fault("clogged_wells", ["B2"])
    assert await ask(link, Aspirate()) == OkReply()
    clock.advance(30.0)
    assert await ask(link, Dry(10)) == OkReply()
    clock.advance(10.0)
    for _ in range(1000):  # let the simulator's event task run; nobody asks ST?
        if world.harvests:
            break
        await asyncio.sleep(0)
    assert len(world.harvests) == 1
    assert tuple(world.harvests[0][1].clogged_wells) == ("B2",)


async def test_wire_errors(wire: tuple[
        HarvesterSimulator, SerialLink, VirtualClock, FakeWorld]) -> None:
    _, link, _, _ = wire
    assert parse_reply(open_frame(await link.request(b"ST?*00")).body) == ErrorReply(
        30, "Bad checksum")
    assert parse_reply(open_frame(await link.request(b"ST?")).body).code == 30  # type: ignore[union-attr]
    reply = await ask(link, Release())
    assert reply == OkReply()
    bad = parse_reply(open_frame(await link.request(b"XY*01")).body)
    assert isinstance(bad, ErrorReply) and bad.code == 31
    await link.request(b"A" * 600, reply=False)  # dropped unanswered
    await link.request(b"", reply=False)  # a bare CR: no reply
    assert (await status(link)).state in ("IDLE", "BUSY")


def test_unknown_fault_and_bad_wells_are_refused() -> None:
    sim = HarvesterSimulator(HarvesterSimSpec(), VirtualClock())
    with pytest.raises(ValueError):
        sim.inject_fault("meltdown")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sim.inject_fault("clogged_wells", ["Z99"])


async def test_handle_describes_where_it_listens(tmp_path: Path) -> None:
    handle = await start_harvester_simulator(HarvesterSimSpec(), VirtualClock(), None)
    try:
        assert handle.address.startswith("/dev/pts/")
        assert handle.address in handle.describe()
        assert handle.simulator.snapshot()["state"] == "IDLE"
    finally:
        await handle.stop()

"""The perfusion simulator: the ValveLink8.2 state machine, the bath physics on a virtual
clock, and the factory the bench uses (the driver's tests cover the pty wire)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.clock import VirtualClock
from drivers.perfusion.codec import (
    AcknowledgeSpill,
    CloseAll,
    CloseValve,
    Command,
    ErrorCode,
    ErrorReply,
    ModeSpec,
    OkReply,
    OpenAll,
    OpenValve,
    QueryStatus,
    Reply,
    SetModes,
    StatusReply,
)
from simulators.perfusion import (
    BathModel,
    PerfusionSimSpec,
    PerfusionSimulator,
    ValveController,
    start_perfusion_simulator,
)


def _pattern(vc: ValveController) -> str:
    return "".join("1" if o else "0" for o in vc.open)


def _do(vc: ValveController, *commands: Command) -> list[Reply | None]:
    return [vc.handle(c) for c in commands]


def _modes(*specs: tuple[int, int | None]) -> SetModes:
    return SetModes(0, True, tuple(ModeSpec(n, v) for n, v in specs))


# ----------------------------------------------------------------------------- valves


def test_independent_valves_and_all() -> None:
    vc = ValveController()
    assert _do(vc, OpenValve(0, 1), OpenValve(0, 3)) == [OkReply(0)] * 2
    assert _pattern(vc) == "10100000"
    _do(vc, CloseValve(0, 1))
    assert _pattern(vc) == "00100000"
    _do(vc, OpenAll(0))
    assert _pattern(vc) == "11111111"
    _do(vc, CloseAll(0))
    assert _pattern(vc) == "00000000"


def test_other_addresses_get_no_reply() -> None:
    vc = ValveController(address=4)
    assert vc.handle(OpenValve(0, 1)) is None
    assert vc.handle(ErrorReply(3, ErrorCode.SYNTAX)) is None
    assert vc.handle(ErrorReply(4, ErrorCode.SYNTAX)) == ErrorReply(4, ErrorCode.SYNTAX)
    assert _pattern(vc) == "00000000"


def test_one_on_mode_closes_the_others() -> None:
    vc = ValveController()
    _do(vc, OpenValve(0, 5), OpenValve(0, 2))
    assert vc.handle(_modes((2, None))) == OkReply(0)
    assert _pattern(vc) == "01000000"  # entering one-on keeps the lowest-numbered valve
    _do(vc, OpenValve(0, 7))
    assert _pattern(vc) == "00000010"
    assert vc.handle(OpenAll(0)) == ErrorReply(0, ErrorCode.MODE_CONFLICT)
    vc.press_button(3)
    assert _pattern(vc) == "00100000"


def test_preselect_opens_the_rest_valve_when_the_last_one_closes() -> None:
    vc = ValveController()
    _do(vc, _modes((2, None), (4, 1)), OpenValve(0, 4), CloseValve(0, 4))
    assert _pattern(vc) == "10000000"
    _do(vc, CloseAll(0))
    assert _pattern(vc) == "00000000"  # close-all is explicit: the rest valve closes too


def test_master_valve_follows_the_others() -> None:
    vc = ValveController()
    _do(vc, _modes((5, 8)), OpenValve(0, 2))
    assert _pattern(vc) == "01000001"
    assert vc.solution_valves() == [2]
    assert vc.handle(CloseValve(0, 8)) == ErrorReply(0, ErrorCode.MODE_CONFLICT)
    _do(vc, CloseValve(0, 2))
    assert _pattern(vc) == "00000000"


@pytest.mark.parametrize(
    "modes", [((1, None), (2, None)), ((4, 3), (5, 3)), ((3, None),), ((6, None),)]
)
def test_incompatible_or_unknown_modes_are_refused(modes: tuple[tuple[int, int | None]]) -> None:
    vc = ValveController()
    assert vc.handle(_modes(*modes)) == ErrorReply(0, ErrorCode.MODE_CONFLICT)
    assert vc.modes == {}


def test_ttl_straight_through_and_last_input_wins() -> None:
    vc = ValveController()
    vc.set_ttl(1, True)
    assert _pattern(vc) == "00000000"  # TTL inputs act only in straight-through mode
    _do(vc, _modes((1, None)))
    vc.set_ttl(2, True)
    assert _pattern(vc) == "01000000"
    _do(vc, CloseValve(0, 2))  # serial came last: closed, although the TTL input is high
    assert _pattern(vc) == "00000000"
    vc.press_button(2)  # the button toggles, whatever the other inputs say
    assert _pattern(vc) == "01000000"
    vc.set_ttl(2, True)  # no edge, no change
    vc.set_ttl(2, False)
    assert _pattern(vc) == "00000000"


def test_spill_closes_everything_and_latches_until_acknowledged() -> None:
    vc = ValveController()
    _do(vc, OpenValve(0, 1), OpenValve(0, 2))
    vc.trip_spill()
    assert _pattern(vc) == "00000000"
    assert vc.handle(OpenValve(0, 1)) == ErrorReply(0, ErrorCode.SPILL_LATCHED)
    assert vc.handle(OpenAll(0)) == ErrorReply(0, ErrorCode.SPILL_LATCHED)
    vc.press_button(1)
    assert _pattern(vc) == "00000000"
    status = vc.handle(QueryStatus(0))
    assert isinstance(status, StatusReply) and status.spill_latched
    assert _do(vc, AcknowledgeSpill(0), OpenValve(0, 1)) == [OkReply(0)] * 2
    assert _pattern(vc) == "10000000"


def test_unplugged_and_shorted_valves() -> None:
    vc = ValveController()
    _do(vc, OpenValve(0, 5))
    vc.set_valve_fault("unplug", 3)
    vc.set_valve_fault("short", 5)
    assert _pattern(vc) == "00000000"  # a shorted valve drops closed
    assert vc.handle(OpenValve(0, 3)) == ErrorReply(0, ErrorCode.VALVE_UNPLUGGED)
    assert vc.handle(OpenValve(0, 5)) == ErrorReply(0, ErrorCode.VALVE_SHORTED)
    assert vc.valve_states()[2:5] == ("unplugged", "closed", "shorted")
    _do(vc, OpenAll(0))
    assert _pattern(vc) == "11010111"  # open-all skips what cannot open
    vc.set_valve_fault("plug", 3)
    vc.set_valve_fault("repair", 5)
    assert _do(vc, OpenValve(0, 3), OpenValve(0, 5)) == [OkReply(0)] * 2


# ----------------------------------------------------------------------------- bath


def test_switch_reaches_the_bath_after_the_dead_volume_then_exchanges() -> None:
    bath = BathModel(flow_ul_per_s=50, dead_volume_ul=250, exchange_tau_s=10)
    bath.set_inlet(0.0, [1])
    bath.composition(100.0)
    bath.set_inlet(100.0, [2])  # switch to solution 2
    assert bath.delay_s == pytest.approx(5.0)
    assert bath.composition(104.9)[1] == pytest.approx(1.0)  # still all solution 1
    for dt in (0.0, 3.0, 10.0, 30.0):
        expected = 1 - math.exp(-dt / 10)
        assert bath.composition(105.0 + dt)[2] == pytest.approx(expected, abs=1e-9)
    assert bath.composition(200.0)[2] > 0.9999


def test_no_flow_freezes_bath_and_line() -> None:
    bath = BathModel(flow_ul_per_s=50, dead_volume_ul=250, exchange_tau_s=10)
    bath.set_inlet(0.0, [2])
    bath.set_inlet(3.0, [])  # stop after 3 s: solution 2 is 150 ul down the line
    assert bath.composition(1000.0)[1] == 1.0
    bath.set_inlet(1000.0, [3])  # flow again: 100 ul of solution 1 first, then 2, then 3
    assert bath.composition(1002.0)[2] == 0.0
    assert bath.composition(1005.0)[2] > 0.2
    assert bath.composition(1005.0)[3] == 0.0


def test_zero_dead_volume_and_mixtures() -> None:
    bath = BathModel(flow_ul_per_s=10, dead_volume_ul=0, exchange_tau_s=2)
    bath.set_inlet(0.0, [3, 4])
    got = bath.composition(100.0)
    assert got[3] == pytest.approx(0.5) and got[4] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bath.composition(50.0)  # no looking back
    with pytest.raises(ValueError):
        BathModel(flow_ul_per_s=0, dead_volume_ul=1, exchange_tau_s=1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.lists(st.integers(1, 8), max_size=3)),
                max_size=40))
def test_bath_fractions_stay_a_composition(steps: list[tuple[float, list[int]]]) -> None:
    bath = BathModel(flow_ul_per_s=20, dead_volume_ul=100, exchange_tau_s=4)
    t = 0.0
    for dt, valves in steps:
        t += dt
        bath.set_inlet(t, sorted(set(valves)))
        got = bath.composition(t)
        assert all(-1e-12 <= f <= 1 + 1e-12 for f in got.values())
        assert sum(got.values()) == pytest.approx(1.0)
    assert len(bath._line) <= 256


# ----------------------------------------------------------------------------- served


async def test_simulator_tracks_the_valves_on_its_clock(tmp_path: Path) -> None:
    clock = VirtualClock()
    sim = PerfusionSimulator(PerfusionSimSpec(link_path=tmp_path / "vl8"), clock)
    sim.controller.handle(OpenValve(0, 1))
    clock.advance(60)
    sim.press_button(2)  # front panel: 1 and 2 open, an equal mix
    clock.advance(600)
    got = sim.bath_composition()
    assert got[1] == pytest.approx(0.5) and got[2] == pytest.approx(0.5)
    sim.inject_fault("spill")
    clock.advance(1000)
    assert sim.bath_composition() == got  # no flow: the bath stands still
    with pytest.raises(ValueError):
        sim.inject_fault("short")  # needs a valve
    with pytest.raises(ValueError):
        sim.inject_fault("flood")  # type: ignore[arg-type]
    await sim.stop()


async def test_factory_handle(tmp_path: Path) -> None:
    link = tmp_path / "dev" / "valvelink"
    handle = await start_perfusion_simulator(
        PerfusionSimSpec(instrument_id="perf-1", link_path=link, device_address=3),
        VirtualClock(), None,
    )
    try:
        assert handle.address == str(link) and link.is_symlink()
        assert handle.describe().startswith(f"perf-1  {link}  (pty /dev/pts/")
        assert handle.simulator.controller.address == 3
    finally:
        await handle.stop()
    assert not link.exists()


async def test_the_wire_ignores_noise_and_answers_each_command_once(tmp_path: Path) -> None:
    import serial_asyncio_fast

    handle = await start_perfusion_simulator(
        PerfusionSimSpec(link_path=tmp_path / "vl8"), VirtualClock(), None
    )
    reader, writer = await serial_asyncio_fast.open_serial_connection(url=handle.address)
    try:
        writer.write(b"\xff\xfe noise\r" + b"x" * 300 + b"\rAT1O\r")  # nobody answers these
        for byte in b"AT0V+2\r":  # one byte at a time toward the device
            writer.write(bytes([byte]))
            await asyncio.sleep(0)
        writer.write(b"AT0Z\rAT0S?\r")
        replies = [await asyncio.wait_for(reader.readuntil(b"\r"), 2) for _ in range(3)]
        assert replies == [b"R0 OK\r", b"R0 ERR 1\r", b"R0 ST V=01000000 M=- SPILL=0\r"]
        assert handle.simulator.lines_received == 5  # the 300-byte line never was one
    finally:
        writer.close()
        await handle.stop()

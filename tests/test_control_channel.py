"""The virtual operator's control channel over real TCP: world ops, incubator door ops and
the counter ops, as the daemon reaches them in simulation mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from drivers.clock import VirtualClock
from simulators.binding import BindingTruth
from simulators.control import ControlServer
from simulators.counter import CounterSimulator
from simulators.world import World


@dataclass
class FakeIncubator:
    """Stands in for the incubator simulator: a chamber the door cools."""

    temperature_c: float = 37.0
    faults: list[str] = field(default_factory=list)

    def inject_fault(self, kind: str) -> None:
        if kind not in ("door_open", "door_close"):
            raise ValueError(f"unknown fault {kind!r}")
        self.faults.append(kind)
        self.temperature_c = 30.0 if kind == "door_open" else 37.0

    def snapshot(self) -> dict[str, object]:
        return {"door_open": self.faults[-1:] == ["door_open"],
                "temperature_c": self.temperature_c}


@dataclass
class Bench:
    clock: VirtualClock
    world: World
    incubator: FakeIncubator
    counter: CounterSimulator
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def ask(self, **request: Any) -> dict[str, Any]:
        self.writer.write(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(self.reader.readline(), 5))
        return reply


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    clock = VirtualClock()
    world = World(BindingTruth(), clock, pipetting_cv=0.0, plate_time_constant_s=0.0)
    incubator = FakeIncubator()
    world.register_incubator("inc", lambda: incubator.temperature_c, lambda: True)
    counter = CounterSimulator(clock=clock, world=world, instrument_id="mb")
    control = ControlServer({"mb": counter, "inc": incubator}, world)
    await control.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    try:
        yield Bench(clock, world, incubator, counter, reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()
        await control.stop()


async def test_load_incubate_harvest_count_by_hand(bench: Bench) -> None:
    added = await bench.ask(op="add_plate", plate_id="P1", layout="competition",
                            competitors=["progesterone"], radioligand_nm=3.0)
    assert added["ok"] and added["wells"] == 96 and added["location"] == "bench"
    moved = await bench.ask(op="place_plate", plate_id="P1", location="incubator:inc")
    assert moved["ok"] and moved["location"] == "incubator:inc"

    bench.clock.advance(45 * 60)
    opened = await bench.ask(op="open_incubator_door")
    assert opened == {"ok": True, "door_open": True, "temperature_c": 30.0}
    bench.clock.advance(60)
    closed = await bench.ask(op="close_incubator_door", instrument="inc")
    assert closed["ok"] and not closed["door_open"]
    assert bench.incubator.faults == ["door_open", "door_close"]
    bench.clock.advance(45 * 60)

    world = (await bench.ask(op="world"))["world"]
    plate = world["plates"]["P1"]
    assert world["incubators"] == {"inc": {"temperature_c": 37.0, "shaking": True}}
    assert world["counters"] == {"mb": None}
    assert plate["location"] == "incubator:inc" and plate["total_binding_of_equilibrium"] > 0.99
    # 91 min inside, one of them at 30 C with the door open: the world saw the door move
    assert plate["equivalent_min_at_reference"] == pytest.approx(90 + 2.5 ** -0.7, abs=1e-3)

    assert (await bench.ask(op="place_plate", plate_id="P1", location="harvester:h"))["ok"]
    harvested = await bench.ask(op="harvest", location="harvester:h", washes=3, prewet_pei=True)
    assert harvested["ok"] and harvested["mat_id"] == "P1-MAT1"
    dpm = harvested["dpm"]
    assert dpm["A1"] > 5 * dpm["A2"] and dpm["H3"] == 0.0  # total >> NSB; buffer blank

    placed = await bench.ask(op="place_mat", mat_id="P1-MAT1", location="counter:mb")
    assert placed == {"ok": True, "mat_id": "P1-MAT1", "location": "counter:mb"}
    state = await bench.ask(op="state", instrument="mb")
    assert state["ok"] and state["plate_id"] == "P1-MAT1"
    world = (await bench.ask(op="world"))["world"]
    assert world["counters"] == {"mb": "P1-MAT1"}
    assert world["mats"]["P1-MAT1"]["location"] == "counter:mb"
    assert world["mats"]["P1-MAT1"]["total_dpm"] == pytest.approx(sum(dpm.values()), rel=1e-6)

    truth = await bench.ask(op="truth")
    assert truth["ok"] and truth["truth"]["kd_nm"] == 5.13
    assert truth["truth"]["ki_nm"]["haloperidol"] == 3.0


async def test_a_plate_map_over_the_wire(bench: Bench) -> None:
    plate_map = {
        "defaults": {"membrane_ug": 80, "radioligand_nm": 5},
        "wells": {
            "A1:C1": {"role": "total"},
            "A2:C2": {"role": "nsb", "competitor": "haloperidol", "competitor_m": 1e-5},
            "A3": {"role": "blank", "membrane_ug": 0},
        },
    }
    reply = await bench.ask(op="add_plate", plate_id="MAP-1", plate_map=plate_map,
                            location="incubator:inc")
    assert reply["ok"] and reply["wells"] == 7 and reply["location"] == "incubator:inc"


async def test_counter_ops_still_work(bench: Bench) -> None:
    loaded = await bench.ask(op="load_plate", plate_id="HAND", dpm={"A1": 1000})
    assert loaded["ok"] and loaded["plate_id"] == "HAND"  # the only counter: no id needed
    assert (await bench.ask(op="load_demo_plate"))["plate_id"] == "DEMO-0001"
    assert await bench.ask(op="records", instrument="mb") == {"ok": True, "records": []}
    fault = await bench.ask(op="fault", instrument="mb", kind="door_open")
    assert fault["ok"] and fault["door_open"] is True


@pytest.mark.parametrize(("request_", "error"), [
    ({"op": "state"}, "instrument: required, one of inc, mb"),
    ({"op": "state", "instrument": "nope"}, "unknown instrument 'nope'"),
    ({"op": "fault", "instrument": "inc", "kind": "meteor"}, "kind: unknown fault 'meteor'"),
    ({"op": "records", "instrument": "inc"}, "instrument: 'inc' is not a counter"),
    ({"op": "add_plate", "plate_id": "X"}, "plate_map: give either a plate_map or a layout"),
    ({"op": "add_plate", "plate_id": "X", "layout": "competition", "points": 11},
     "points: Input should be less than or equal to 10"),
    ({"op": "add_plate", "plate_id": "X", "layout": "competition", "competitors": ["tea"]},
     "well A3: unknown competitor 'tea'"),
    ({"op": "add_plate", "plate_id": "bad id!", "layout": "competition"}, "plate_id:"),
    ({"op": "place_plate", "plate_id": "nope", "location": "bench"}, "unknown plate 'nope'"),
    ({"op": "place_mat", "mat_id": "nope", "location": "counter:mb"}, "unknown mat 'nope'"),
    ({"op": "harvest", "location": "harvester:h"}, "no plate at harvester:h"),
    ({"op": "harvest", "location": "harvester:h", "washes": -1}, "washes:"),
    ({"op": "teleport"}, "request: Input tag 'teleport'"),
])
async def test_refusals_name_the_problem(bench: Bench, request_: dict[str, Any],
                                         error: str) -> None:
    reply = await bench.ask(**request_)
    assert reply["ok"] is False and reply["error"].startswith(error), reply["error"]


async def test_garbage_lines_get_an_error_and_the_channel_stays_up(bench: Bench) -> None:
    bench.writer.write(b"not json\n\n")
    first = json.loads(await asyncio.wait_for(bench.reader.readline(), 5))
    second = json.loads(await asyncio.wait_for(bench.reader.readline(), 5))
    assert not first["ok"] and second == {"ok": False, "error": "empty"}
    assert (await bench.ask(op="world"))["ok"]


async def test_without_a_world_the_world_ops_are_refused() -> None:
    control = ControlServer({"c": CounterSimulator(clock=VirtualClock())})
    reply = control.handle(b'{"op": "world"}')
    assert reply == {"ok": False, "error": "op: no simulated world on this bench"}
    assert control.handle(b'{"op": "state"}')["ok"]

"""The simulated world: plates incubated on a virtual clock, harvested onto mats, counted by
the real counter simulator over TCP through the real counter driver."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, replace

import pytest

from drivers.clock import ScaledClock, VirtualClock
from drivers.counter import CounterDriver, WellCount
from drivers.counter.codec import StartCount
from simulators.binding import BindingTruth, dpm_from_fmol, ic50_nm
from simulators.counter import CounterSimulator
from simulators.counting import DEFAULT_QUENCH, EFFICIENCY
from simulators.plate_map import WellContents, competition_layout
from simulators.world import World
from simulators.world_api import FilterMat, HarvestSettings

PEI3 = HarvestSettings(prewet_pei=True, washes=3, wash_volume_ml=1.0)
TRUTH = BindingTruth(ligand_depletion=False)  # so the closed-form prediction below is exact
COUNT_TIME_S = 300.0


@dataclass
class FakeIncubator:
    temperature_c: float = 37.0
    shaking: bool = False

    def register(self, world: World, instrument_id: str) -> None:
        world.register_incubator(instrument_id, lambda: self.temperature_c, lambda: self.shaking)


def predicted_dpm(truth: BindingTruth, well: WellContents, equivalent_s: float,
                  settings: HarvestSettings) -> float:
    """The textbook model, written out independently of simulators.binding (no depletion)."""
    receptor = truth.bmax_fmol_per_mg * well.membrane_ug / 1000
    ligand, kd = well.radioligand_nm, truth.kd_nm
    ratio = well.competitor_nm / truth.ki_nm[well.competitor] if well.competitor else 0.0
    beq = receptor * (ligand / kd) / (1 + ligand / kd + ratio)
    kobs = (truth.kon_per_nm_per_min * ligand / (1 + ratio) + truth.koff_per_min) / 60
    bound = beq * (1 - math.exp(-kobs * equivalent_s))
    koff_wash = truth.koff_per_min / 60 * truth.q10 ** ((settings.wash_temperature_c - 37) / 10)
    bound *= math.exp(-koff_wash * settings.washes * settings.wash_seconds_per_cycle)
    nsb_membrane = truth.membrane_nsb_ul_per_mg * well.membrane_ug / 1000 * ligand
    free = ligand * well.volume_ul - beq * (1 - math.exp(-kobs * equivalent_s)) - nsb_membrane
    nsb_filter = truth.filter_nsb_fraction_pei * free
    residual = truth.filter_residual_ul
    trapped = free / well.volume_ul * residual * (residual / (residual + 1000)) ** 3
    return dpm_from_fmol(bound + nsb_membrane + nsb_filter + trapped,
                         well.specific_activity_ci_per_mmol)


def expected_counts(sim: CounterSimulator, record: WellCount, dpm: float) -> float:
    """What the counter should register for ``dpm`` (mirrors simulators.counting._measure)."""
    physics = sim.model.physics
    efficiency = EFFICIENCY["filtermat"]["H3"] * (1 - 0.6 * DEFAULT_QUENCH["filtermat"])
    rel = sim.model.bank.relative_efficiency[record.detector - 1]
    true_cpm = dpm * efficiency * rel + physics.background_cpm
    observed = true_cpm / (1 + true_cpm * physics.dead_time_s / 60)
    return observed * record.count_time_s / 60


async def count(sim: CounterSimulator, wells: list[str] | None = None) -> dict[str, WellCount]:
    driver = CounterDriver(sim.resource, timeout_s=2.0, poll_interval_s=0.005)
    async with driver:
        records = [r async for r in driver.count_plate(count_time_s=COUNT_TIME_S, wells=wells)]
    return {r.well: r for r in records}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


async def test_incubate_harvest_count_follows_the_one_site_model() -> None:
    clock = VirtualClock()
    world = World(TRUTH, clock, plate_time_constant_s=0.0, pipetting_cv=0.0)
    FakeIncubator(37.0).register(world, "warm")
    FakeIncubator(20.0).register(world, "cool")
    sim = CounterSimulator(clock=ScaledClock(20_000), seed=3, world=world, instrument_id="mb")
    plate_map = competition_layout()

    world.add_plate("P37", plate_map)
    world.place_plate("P37", "incubator:warm")
    clock.advance(90 * 60)
    world.place_plate("P37", "harvester:h1")
    warm = world.harvest("harvester:h1", PEI3)
    world.place_plate("P37", "bench")

    world.add_plate("P20", plate_map, "incubator:cool")
    clock.advance(10 * 60)
    world.place_plate("P20", "harvester:h1")
    cool = world.harvest("harvester:h1", PEI3)

    tau_warm, tau_cool = 90 * 60.0, 10 * 60 * TRUTH.q10 ** ((20 - 37) / 10)
    assert world.equivalent_s("P37") == pytest.approx(tau_warm)
    assert world.equivalent_s("P20") == pytest.approx(tau_cool)
    for mat, tau in ((warm, tau_warm), (cool, tau_cool)):
        for well, contents in plate_map.wells.items():
            assert mat.dpm_by_well[well] == pytest.approx(
                predicted_dpm(TRUTH, contents, tau, PEI3), rel=1e-9, abs=1e-9)

    await sim.start()
    try:
        world.place_mat(warm.mat_id, "counter:mb")
        assert sim.model.plate is not None and sim.model.plate.plate_id == "P37-MAT1"
        got = await count(sim)
        world.place_mat(warm.mat_id, "bench")
        world.place_mat(cool.mat_id, "counter:mb")
        columns_1_2 = [f"{r}{c}" for r in "ABCDEFGH" for c in (1, 2)]
        got_cool = await count(sim, columns_1_2)
    finally:
        await sim.stop()

    # every well within Poisson noise of the truth
    for mat, records in ((warm, got), (cool, got_cool)):
        for well, record in records.items():
            expected = expected_counts(sim, record, mat.dpm_by_well[well])
            assert abs(record.counts - expected) < 4.5 * math.sqrt(expected), well

    def col(rows: str, c: int) -> float:  # CCPM: each column has its own detector
        return mean([got[f"{r}{c}"].ccpm for r in rows])

    total, nsb = col("ABCDEFGH", 1), col("ABCDEFGH", 2)
    # progesterone, rows A-C: 21.5 nM, 100 nM, 464 nM, 2.15 uM against IC50 197 nM
    assert total > col("ABC", 7) > col("ABC", 6) > col("ABC", 5) > col("ABC", 4) > nsb
    for rows, competitor, c in (("ABC", "progesterone", 6), ("DEF", "haloperidol", 8)):
        conc_nm = plate_map.wells[f"{rows[0]}{c}"].competitor_nm
        ic50 = ic50_nm(TRUTH.ki_nm[competitor], 5.0, TRUTH.kd_nm)
        fraction = (col(rows, c) - nsb) / (total - nsb)
        assert fraction == pytest.approx(1 / (1 + conc_nm / ic50), abs=0.03)
    # 10 min at 20 C binds measurably less than 90 min at 37 C
    cool_total = mean([got_cool[f"{r}1"].ccpm for r in "ABCDEFGH"])
    assert (cool_total - nsb) < 0.35 * (total - nsb)


async def test_a_short_cold_incubation_binds_less() -> None:
    clock = VirtualClock()
    world = World(BindingTruth(), clock)
    incubator = FakeIncubator(37.0)
    incubator.register(world, "inc")
    plate_map = competition_layout(competitors=[])
    for pid in ("LONG", "SHORT"):
        world.add_plate(pid, plate_map, "bench")
    world.place_plate("LONG", "incubator:inc")
    clock.advance(10 * 60)
    world.place_plate("SHORT", "harvester:h")
    short = world.harvest("harvester:h", PEI3)
    clock.advance(80 * 60)
    world.place_plate("SHORT", "bench")
    world.place_plate("LONG", "harvester:h")
    long = world.harvest("harvester:h", PEI3)
    totals = [mean([m.dpm_by_well[f"{r}1"] for r in "ABCDEFGH"]) for m in (short, long)]
    assert totals[0] < 0.5 * totals[1]
    summary = world.snapshot()["plates"]["LONG"]
    assert summary["total_binding_of_equilibrium"] > 0.99
    assert [s["location"] for s in summary["history"]] == ["bench", "incubator:inc",
                                                           "harvester:h"]


async def test_the_plate_warms_with_a_lag() -> None:
    clock = VirtualClock()
    world = World(BindingTruth(), clock, plate_time_constant_s=300.0)
    FakeIncubator(37.0).register(world, "inc")
    world.add_plate("P", competition_layout(), "incubator:inc")
    clock.advance(300.0)
    snap = world.snapshot()["plates"]["P"]
    assert snap["well_temperature_c"] == pytest.approx(37 - 16 / math.e, abs=0.01)
    assert 0 < world.equivalent_s("P") < 300.0  # colder than 37 C on the way up
    clock.advance(3600.0)
    assert world.snapshot()["plates"]["P"]["well_temperature_c"] == pytest.approx(37.0, abs=0.01)


async def test_the_ticker_sees_a_door_opened_between_events() -> None:
    clock = VirtualClock()
    incubator = FakeIncubator(37.0)
    ticking = World(BindingTruth(), clock, plate_time_constant_s=60.0, tick_s=10.0)
    lazy = World(BindingTruth(), clock, plate_time_constant_s=60.0)
    for world in (ticking, lazy):
        incubator.register(world, "inc")
        world.add_plate("P", competition_layout(), "incubator:inc")

    async def run_for(seconds: float) -> None:
        for _ in range(int(seconds / 10)):
            clock.advance(10.0)
            for _ in range(3):
                await asyncio.sleep(0)  # let the ticker take its sample

    async with ticking:
        await run_for(600)
        incubator.temperature_c = 25.0  # door open
        await run_for(300)
        incubator.temperature_c = 37.0
        await run_for(600)
    ticked = ticking.snapshot()["plates"]["P"]["history"][-1]
    unseen = lazy.snapshot()["plates"]["P"]["history"][-1]
    assert ticked["min_c"] < 27.0 and ticked["max_c"] == pytest.approx(37.0, abs=0.5)
    assert unseen["min_c"] == pytest.approx(21.0) and unseen["max_c"] > 36.9  # just warmed up
    assert ticking.equivalent_s("P") < lazy.equivalent_s("P")


async def test_mats_move_between_counter_and_bench() -> None:
    clock = VirtualClock()
    world = World(BindingTruth(), clock)
    loaded: list[FilterMat | None] = []
    world.register_counter("c1", loaded.append)
    world.add_plate("P", competition_layout(), "harvester:h")
    mat = world.harvest("harvester:h", PEI3)
    assert world.mat_at("harvester:h") == mat.mat_id == "P-MAT1"
    world.place_mat(mat.mat_id, "counter:c1")
    assert loaded == [mat] and world.mat_at("counter:c1") == mat.mat_id
    world.place_mat(mat.mat_id, "bench")
    assert loaded == [mat, None] and world.mat_at("counter:c1") is None

    again = world.harvest("harvester:h", PEI3)  # the plate is empty now
    assert again.mat_id == "P-MAT2" and set(again.dpm_by_well.values()) == {0.0}
    world.place_mat(again.mat_id, "counter:c1")
    with pytest.raises(ValueError, match="already holds mat"):
        world.place_mat(mat.mat_id, "counter:c1")
    assert world.snapshot()["counters"] == {"c1": "P-MAT2"}
    world.place_mat(mat.mat_id, "harvester:h")
    assert world.mat_at("harvester:h") == mat.mat_id  # the one placed last


async def test_a_counting_counter_keeps_its_mat() -> None:
    clock = VirtualClock()
    world = World(BindingTruth(), clock)
    sim = CounterSimulator(clock=clock, world=world)
    world.add_plate("P", competition_layout(), "harvester:h")
    mat = world.harvest("harvester:h", PEI3)
    world.place_mat(mat.mat_id, "counter:counter")
    assert sim.model.handle(StartCount(None)).startswith("OK")  # a count runs (time stands)
    with pytest.raises(RuntimeError, match="while counting"):
        world.place_mat(mat.mat_id, "bench")
    assert world.mat_at("counter:counter") == mat.mat_id
    assert sim.model.plate is not None and sim.model.plate.plate_id == mat.mat_id


@pytest.mark.parametrize(("location", "message"), [
    ("incubator:nope", "no incubator 'nope'"),
    ("counter:c", "location: bench, incubator"),
    ("fridge", "location: bench"),
])
async def test_bad_plate_locations(location: str, message: str) -> None:
    world = World(BindingTruth(), VirtualClock())
    world.add_plate("P", competition_layout())
    with pytest.raises(ValueError, match=message):
        world.place_plate("P", location)


async def test_world_refusals() -> None:
    world = World(BindingTruth(), VirtualClock())
    plate_map = competition_layout()
    world.add_plate("A", plate_map, "harvester:h")
    with pytest.raises(ValueError, match="already exists"):
        world.add_plate("A", plate_map)
    world.add_plate("B", plate_map)
    with pytest.raises(ValueError, match="already holds plate 'A'"):
        world.place_plate("B", "harvester:h")
    with pytest.raises(ValueError, match="no plate at harvester:x"):
        world.harvest("harvester:x", PEI3)
    with pytest.raises(ValueError, match="well A3: unknown competitor"):
        world.add_plate("C", competition_layout(competitors=["aspirin"]))
    with pytest.raises(ValueError, match="no counter 'c'"):
        world.place_mat(world.harvest("harvester:h", PEI3).mat_id, "counter:c")
    with pytest.raises(ValueError, match="unknown plate"):
        world.place_plate("Z", "bench")


async def test_clogged_wells_and_pipetting_are_seeded() -> None:
    def harvest(seed: int) -> FilterMat:
        clock = VirtualClock()
        world = World(BindingTruth(), clock, seed=seed)
        world.add_plate("P", competition_layout(), "harvester:h")
        clock.advance(5400)  # binding goes on at the bench temperature
        return world.harvest("harvester:h", replace(PEI3, clogged_wells=("A1", "B1")))

    first, same, other = harvest(1), harvest(1), harvest(2)
    assert first.dpm_by_well == same.dpm_by_well != other.dpm_by_well
    unclogged = mean([first.dpm_by_well[f"{r}1"] for r in "CDEFGH"])
    assert all(first.dpm_by_well[w] < 0.6 * unclogged for w in ("A1", "B1"))
    assert all(abs(first.dpm_by_well[f"{r}1"] / unclogged - 1) < 0.15 for r in "CDEFGH")


"""The counter simulator: physics, state machine, wire behaviour, control channel and CLI."""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.clock import VirtualClock
from drivers.counter.codec import (
    ErrorCode,
    Line,
    parse_command,
    parse_error,
    parse_ok,
    parse_records,
    parse_status,
)
from labware import wells as plate_wells
from simulators.cli import main as cli_main
from simulators.control import ControlServer
from simulators.counter import CounterSimulator
from simulators.counter_model import CounterModel
from simulators.counting import (
    EFFICIENCY,
    DetectorBank,
    PhysicsConfig,
    Plate,
    count_well,
    plan_count,
    poisson,
    positions,
    sigma2_pct,
)
from simulators.plates import demo_plate

# ----------------------------------------------------------------------------- physics


@pytest.mark.parametrize("mean", [0.5, 3.0, 25.0, 800.0, 40_000.0, 2e7])
def test_poisson_mean_and_variance(mean: float) -> None:
    rng = random.Random(11)
    n = 4000
    draws = [poisson(rng, mean) for _ in range(n)]
    m, var = statistics.fmean(draws), statistics.pvariance(draws)
    assert abs(m - mean) < 5 * math.sqrt(mean / n)  # 5 standard errors
    assert abs(var / mean - 1) < 0.15  # variance of a Poisson equals its mean
    assert min(draws) >= 0


def test_sigma2_formula() -> None:
    assert sigma2_pct(10_000) == pytest.approx(2.0)
    assert sigma2_pct(400) == pytest.approx(10.0)
    assert sigma2_pct(0) == 200.0


def test_precision_stop_hits_the_target_count_in_gamma_time() -> None:
    rng = random.Random(5)
    rate_cpm = 100_000.0
    results = [count_well(rng, rate_cpm, 60.0, 2.0) for _ in range(300)]
    assert all(counts == 10_000 and stopped for counts, _, stopped in results)
    mean_s = statistics.fmean(t for _, t, _ in results)
    assert mean_s == pytest.approx(10_000 / rate_cpm * 60, rel=0.01)  # Gamma mean N/rate
    counts, seconds, stopped = count_well(rng, 100.0, 60.0, 2.0)  # too slow: time stop
    assert not stopped and seconds == 60.0 and counts < 10_000


@pytest.mark.parametrize(("detectors", "n_positions"), [(1, 96), (2, 48), (6, 16), (12, 8)])
def test_detector_geometry(detectors: int, n_positions: int) -> None:
    layout = positions(detectors)
    assert len(layout) == n_positions
    wells = [w for pos in layout for _, w in pos]
    assert sorted(wells) == sorted(plate_wells(96))
    cols = 12 // detectors
    for pos in layout:
        assert [d for d, _ in pos] == list(range(1, detectors + 1))
        for d, w in pos:
            assert (int(w[1:]) - 1) // cols == d - 1  # each detector keeps its column block


def _flat_plate(dpm: float, lum: float = 0.0, medium: str = "liquid") -> Plate:
    wells = plate_wells(96)
    return Plate("FLAT", dict.fromkeys(wells, dpm), dict.fromkeys(wells, lum),
                 dict.fromkeys(wells, 0.0), medium, 0.0)  # type: ignore[arg-type]


def _plan(plate: Plate, *, seed: int = 3, detectors: int = 12, count_time_s: float = 60.0,
          precision_pct: float = 0.0, physics: PhysicsConfig | None = None,
          ) -> tuple[DetectorBank, list]:  # type: ignore[type-arg]
    rng = random.Random(seed)
    physics = physics or PhysicsConfig(background_cpm=20.0)
    bank = DetectorBank.create(rng, detectors, physics)
    plan = plan_count(rng, plate=plate, bank=bank, physics=physics, isotope="H3",
                      count_time_s=count_time_s, precision_pct=precision_pct, wells=None,
                      start_s=0.0)
    return bank, [w for pos in plan for w in pos.wells]


def test_counts_are_poisson_around_the_true_rate_and_ccpm_normalises_detectors() -> None:
    bank, wells = _plan(_flat_plate(10_000.0))
    eff = EFFICIENCY["liquid"]["H3"]
    for w in wells:
        expected = 10_000.0 * eff * bank.relative_efficiency[w.detector - 1] + 20.0
        assert abs(w.counts - expected) < 5 * math.sqrt(expected), w  # 60 s = 1 minute
        assert w.sigma2_pct == pytest.approx(200 / math.sqrt(w.counts), abs=0.01)
        assert w.flags == ()
    raw = [statistics.fmean(w.cpm for w in wells if w.detector == d) for d in range(1, 13)]
    corrected = [statistics.fmean(w.ccpm for w in wells if w.detector == d) for d in (1, 12)]
    assert max(raw) / min(raw) > 1.02  # detectors differ ...
    assert corrected[0] == pytest.approx(corrected[1], rel=0.03)  # ... CCPM removes it


def test_luminescence_and_dead_time_flags() -> None:
    _, lum_wells = _plan(_flat_plate(100.0, lum=5_000.0))
    assert all("L" in w.flags for w in lum_wells[:12])
    _, hot = _plan(_flat_plate(8e6))
    assert all("D" in w.flags for w in hot)
    _, precise = _plan(_flat_plate(100_000.0), precision_pct=2.0)
    assert all("P" in w.flags and w.counts == 10_000 for w in precise)


def test_plate_time_is_positions_times_count_plus_overhead() -> None:
    clock = VirtualClock()
    model = CounterModel(detectors=6, clock=clock, rng=random.Random(1),
                         physics=PhysicsConfig(overhead_s=3.0))
    model.load_plate("P1", {"A1": 1000.0})
    assert model.handle(parse_command("CONF:TIME 10")) == "OK"
    assert parse_ok(model.handle(parse_command("COUN:STAR"))).fields == ("1", "96")
    clock.advance(13.0 * 16 - 0.01)
    status = parse_status(model.handle(parse_command("COUN:STAT?")))
    assert (status.state, status.done) == ("COUNTING", 90)
    clock.advance(0.02)
    assert parse_status(model.handle(parse_command("COUN:STAT?"))).state == "DONE"
    records = parse_records(model.handle(parse_command("COUN:FETC? 90")))
    assert [r.index for r in records] == list(range(90, 96))


def test_demo_plate_is_deterministic_and_shaped_like_the_seed_assay() -> None:
    a, b = demo_plate(seed=4), demo_plate(seed=4)
    assert a == b and len(a.dpm_by_well) == 96
    assert statistics.fmean(a.dpm_by_well[f"{r}1"] for r in "ABCDEFGH") == pytest.approx(
        8000, rel=0.05)
    assert statistics.fmean(a.dpm_by_well[f"{r}2"] for r in "ABCDEFGH") == pytest.approx(
        600, rel=0.05)
    curve = [a.dpm_by_well[f"A{c}"] for c in range(3, 13)]
    assert curve[0] > 7000 and curve[-1] < 800  # full competition across the dilution


# ----------------------------------------------------------------------------- state machine


def _ask(model: CounterModel, text: str) -> str:
    return model.handle(parse_command(Line(text)))


def test_state_machine_errors_and_error_queue() -> None:
    clock = VirtualClock()
    model = CounterModel(clock=clock, rng=random.Random(2))
    assert parse_error(_ask(model, "COUN:STAR")).code == ErrorCode.NO_PLATE
    assert parse_error(_ask(model, "COUN:FETC? 0")).code == ErrorCode.NO_COUNT
    model.load_plate("P", {"A1": 10.0})
    model.open_door()
    assert parse_error(_ask(model, "COUN:STAR")).code == ErrorCode.DOOR_OPEN
    model.close_door()
    assert _ask(model, "COUN:STAR A1,B1").startswith("OK,1,2")
    assert parse_error(_ask(model, "COUN:STAR")).code == ErrorCode.BUSY
    assert parse_error(_ask(model, "CONF:TIME 5")).code == ErrorCode.BUSY
    assert _ask(model, "SYST:ERR?") == '201,"No plate loaded"'
    assert _ask(model, "COUN:ABOR") == "OK"
    assert parse_status(_ask(model, "COUN:STAT?")).fault_code == ErrorCode.ABORTED_BY_HOST
    assert _ask(model, "*RST") == "OK"
    assert _ask(model, "COUN:STAT?") == 'IDLE,0,0,0,0,""'
    assert _ask(model, "SYST:ERR?") == '0,"No error"'
    assert (_ask(model, "SYST:DET?"), _ask(model, "SYST:DOOR?"), _ask(model, "PLAT:ID?")) == (
        "12", "CLOSED", "P")


def test_door_open_mid_count_keeps_finished_positions_only() -> None:
    clock = VirtualClock()
    model = CounterModel(clock=clock, rng=random.Random(2), physics=PhysicsConfig(overhead_s=0))
    model.load_plate("P", {})
    _ask(model, "CONF:TIME 10")
    _ask(model, "COUN:STAR")
    clock.advance(25.0)  # two positions of 12 wells done, third under way
    model.open_door()
    clock.advance(1000.0)
    status = parse_status(_ask(model, "COUN:STAT?"))
    assert (status.state, status.done, status.fault_code, status.fault_text) == (
        "ABORTED", 24, ErrorCode.DOOR_OPEN, "door open")


# ----------------------------------------------------------------------------- wire


async def _exchange(port: int, payload: bytes, lines: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return [await asyncio.wait_for(reader.readline(), 2) for _ in range(lines)]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_one_reply_per_line_even_for_garbage_and_long_lines() -> None:
    async with CounterSimulator(time_scale=1000, seed=1) as sim:
        payload = b"*IDN?\nSYST:DET?\n\xff\xfe\x01\n" + b"X" * 5000 + b"\nSYST:DOOR?\n"
        replies = await _exchange(sim.port, payload, 5)
    assert replies[0] == b"PerkinSim,MicroBeta2-SIM,MB2-0001,2.1.0\n"
    assert replies[1] == b"12\n"
    assert parse_error(replies[2].decode().strip()).code == ErrorCode.SYNTAX
    assert parse_error(replies[3].decode().strip()).code == ErrorCode.TOO_MUCH_DATA
    assert replies[4] == b"CLOSED\n"


async def test_stalled_reply_arrives_late_before_the_next_one() -> None:
    async with CounterSimulator(time_scale=1000) as sim:
        sim.inject_fault("stall")
        replies = await _exchange(sim.port, b"SYST:DET?\nSYST:DOOR?\n", 2)
    assert replies == [b"12\n", b"CLOSED\n"]  # the first came only with the second


async def test_control_channel() -> None:
    sim = CounterSimulator(time_scale=1000)
    control = ControlServer({"counter": sim})
    await sim.start()
    await control.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
        requests = [
            {"op": "load_plate", "plate_id": "P7", "dpm": {"A1": 5000}},
            {"op": "fault", "kind": "door_open"},
            {"op": "state"},
            {"op": "fault", "kind": "meteor"},
            {"op": "state", "instrument": "nope"},
            {"op": "records"},
        ]
        replies = []
        for request in requests:
            writer.write(json.dumps(request).encode() + b"\n")
            replies.append(json.loads(await asyncio.wait_for(reader.readline(), 2)))
        writer.close()
        await writer.wait_closed()
    finally:
        await control.stop()
        await sim.stop()
    assert replies[0]["ok"] and replies[0]["plate_id"] == "P7"
    assert replies[2]["door_open"] is True and replies[2]["state"] == "IDLE"
    assert not replies[3]["ok"] and "kind" in replies[3]["error"]
    assert not replies[4]["ok"]
    assert replies[5] == {"ok": True, "records": []}


# ----------------------------------------------------------------------------- CLI


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lab.toml"
    path.write_text("[simulation]\ntime_scale = 0\n")
    assert cli_main(["bench", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"assay-sim: {path}: simulation.time_scale: Input should be greater than 0\n"


def test_cli_bench_starts_prints_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(
        "[simulation]\ntime_scale = 100\ncontrol_port = 0\n"
        '[[instruments]]\nid = "counter"\nkind = "counter"\n'
        'address = "TCPIP::127.0.0.1::0::SOCKET"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "bench", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("counter    counter    TCPIP::127.0.0.1::")
        assert proc.stdout.readline().startswith("control    operator   127.0.0.1:")
        assert proc.stdout.readline() == "ready\n"
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.communicate()

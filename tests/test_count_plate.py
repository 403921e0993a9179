"""count-plate, the shipped one-step protocol: made from run.start's arguments, checked in
their terms, and run by the engine (pause, resume, a subset of wells, the analysis options)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from acquisition.cli.client import DaemonClient
from acquisition.commands import RunStartArgs
from acquisition.config import load_config
from acquisition.count_plate import count_plate_protocol
from acquisition.engine.launch import setup_from_args
from acquisition.errors import CommandError
from acquisition.plate_maps import layout_from_data
from acquisition.protocols import ProtocolFileError, protocol_from_data
from devtools.mosquitto import MosquittoBroker
from tests.e2e import lab_stack, wait_connected, wait_run_state

LAYOUT = {"competitors": {"progesterone-like": "ABC", "haloperidol-like": "DEF"},
          "descending": False, "blank_rows": "GH"}  # fmt: skip
SPEC = {"competitor": "progesterone-like", "constants": {"HotNM": 5.0, "HotKdNM": 5},
        "layout": LAYOUT}  # fmt: skip


def test_the_arguments_make_a_protocol_the_loader_accepts() -> None:
    args = RunStartArgs.model_validate({
        "count_time_s": 0.1 + 0.2, "precision_pct": 2.5, "wells": ["A1", "B2"],
        "isotope": "C14", "analysis": {**SPEC, "efficiency": 0.45, "protein_mg": 0.1},
    })  # fmt: skip
    definition, plate_map = count_plate_protocol(args)
    protocol = protocol_from_data(definition)
    count, analyze = protocol.steps
    assert count.type == "count" and analyze.type == "analyze"
    assert count.count_time_s == 0.1 + 0.2, "the float comes back exactly"
    assert count.precision_pct == 2.5 and count.isotope == "C14"
    assert count.wells == ["A1", "B2"] and count.instrument == "counter"
    assert analyze.efficiency == 0.45 and analyze.protein_mg == 0.1
    assert analyze.constants == {"HotNM": 5.0, "HotKdNM": 5.0}
    assert plate_map is not None
    layout = layout_from_data(plate_map)
    assert set(layout.competitors) == {"progesterone-like", "haloperidol-like"}


def test_without_analysis_it_is_one_count_step_and_no_plate_map() -> None:
    definition, plate_map = count_plate_protocol(RunStartArgs())
    assert [s["type"] for s in definition["steps"]] == ["count"] and plate_map is None
    assert protocol_from_data(definition).steps[0].plate_wells()[-1] == "H12"


@pytest.mark.parametrize(("analysis", "expected"), [
    ({**SPEC, "competitor": "x"}, "args.analysis.competitor: one of"),
    ({**SPEC, "constants": {"HotNM": 5.0}}, "args.analysis.constants: HotKdNM needed"),
    ({**SPEC, "constants": {**SPEC["constants"], "Ki": 1.0}}, "Ki is not a constant"),
    ({**SPEC, "layout": {"competitors": {}}}, "args.analysis.layout: competitors"),
    ({**SPEC, "layout": {**LAYOUT, "points": "ten"}}, "args.analysis.layout"),
])  # fmt: skip
def test_bad_analysis_arguments_are_refused_in_the_commands_terms(
    analysis: dict[str, Any], expected: str
) -> None:
    with pytest.raises(CommandError) as err:
        count_plate_protocol(RunStartArgs.model_validate({"analysis": analysis}))
    assert err.value.code == "bad_request" and expected in err.value.message


LAB = """
[[instruments]]
id = "counter"
kind = "counter"
address = "TCPIP::127.0.0.1::5025::SOCKET"
[[instruments]]
id = "harvester"
kind = "harvester"
address = "/dev/ttyUSB0"
"""


@pytest.mark.parametrize(("start", "code", "expected"), [
    ({"instrument": "nope"}, "not_found", "no instrument 'nope' in the config"),
    ({"instrument": "harvester"}, "bad_request",
     "args.instrument: 'harvester' is a harvester, not a counter"),
    ({"analysis": {**SPEC, "constants": {"HotNM": -5.0, "HotKdNM": 5.0}}}, "bad_request",
     "args.analysis.constants: positive numbers (got HotNM = -5.0)"),
])  # fmt: skip
def test_a_start_the_lab_cannot_run_is_refused_in_the_commands_terms(
    tmp_path: Path, start: dict[str, Any], code: str, expected: str
) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(LAB)
    with pytest.raises(CommandError) as err:
        asyncio.run(setup_from_args(load_config(path), RunStartArgs.model_validate(start), "r"))
    assert (err.value.code, err.value.message) == (code, expected)


@pytest.mark.parametrize(("wells", "expected"), [
    (["A1", "a1"], "steps[0].wells: each well once (A1 is repeated)"),
    (["Z9"], "steps[0].wells: well names A1-H12"),
])  # fmt: skip
def test_the_count_steps_wells_are_checked(wells: list[str], expected: str) -> None:
    step = {"type": "count", "isotope": "H3", "count_time": "1 s", "wells": wells}
    with pytest.raises(ProtocolFileError) as err:
        protocol_from_data({"name": "x", "steps": [step]})
    assert expected in str(err.value)


async def _ended(client: DaemonClient, run: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while (res := await client.request("results", {"run": run}))["stop"] is None:
            await asyncio.sleep(0.05)
    return res


@pytest.mark.slow
async def test_a_count_plate_run_pauses_mid_count_and_resumes_counting_each_well_once(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=200.0) as stack:
        async with DaemonClient(stack.config) as client:
            await wait_connected(client)
            run = (await client.request("run.start", {"count_time_s": 30}))["run"]
            async with asyncio.timeout(30):
                while (await client.request("run.get", {"run": run}))["last_seq"] < 8:
                    await asyncio.sleep(0.05)
            await client.request("run.pause", {"run": run})
            paused = await wait_run_state(client, run, "paused")
            done = len((await client.request("results", {"run": run}))["wells"])
            assert 0 < done < 96, paused
            await client.request("run.resume", {"run": run})
            res = await _ended(client, run)
    assert res["state"] == "completed" and res["stop"]["exit_status"] == "success"
    wells = [w["well"] for w in res["wells"]]
    assert len(wells) == 96 and len(set(wells)) == 96, "every well once across the pause"


@pytest.mark.slow
async def test_a_subset_of_wells_is_counted_and_analysis_options_reach_the_result(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=2000.0) as stack:
        async with DaemonClient(stack.config) as client:
            await wait_connected(client)
            some = await client.request("run.start", {"count_time_s": 5, "wells": ["H12", "A1"],
                                                      "label": "two wells"})  # fmt: skip
            res = await _ended(client, some["run"])
            assert [w["well"] for w in res["wells"]] == ["A1", "H12"]
            start = json.loads(_first_document(stack.lab.journal_path, some["run"]))
            assert start["protocol"]["label"] == "two wells"
            assert start["protocol"]["definition"]["steps"][0]["wells"] == ["H12", "A1"]
            with pytest.raises(CommandError, match="efficiency"):  # before anything runs
                await client.request("run.start", {"analysis": {**SPEC, "efficiency": 2}})
            analysis = {**SPEC, "efficiency": 0.5, "specific_activity_ci_per_mmol": 100.0,
                        "protein_mg": 0.05}  # fmt: skip
            run = (await client.request("run.start", {"count_time_s": 20,
                                                      "analysis": analysis}))["run"]  # fmt: skip
            async with asyncio.timeout(60):
                while not (res := await client.request("results", {"run": run}))["analysis"]:
                    await asyncio.sleep(0.05)
    rows = [w for w in res["analysis"]["wells"] if w["role"] == "total"]
    assert rows and all(r["dpm"] is not None and r["specific_fmol_per_mg"] is not None
                        for r in rows), rows[0]  # fmt: skip
    assert res["analysis"]["plate_id"], "the plate the counter reported"


def _first_document(journal: Path, run: str) -> bytes:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        (payload,) = db.execute("SELECT payload FROM documents WHERE run = ? AND seq = 1",
                                (run,)).fetchone()  # fmt: skip
    return bytes(payload)


def test_the_count_eta_goes_by_rows_until_a_row_has_come_in() -> None:
    """12 detectors count a row at once: after 1 well the pace of single wells would say
    95 x the time of a row; the plan's time per row is used until a row is in."""
    from acquisition.steps.count import _eta

    step = protocol_from_data(count_plate_protocol(RunStartArgs(count_time_s=30))[0]).steps[0]
    plate = step.plate_wells()
    assert _eta(step, plate, {"A1"}, 1, 30.0) == 8 * 32.0  # row A still has 11 to go
    first_row = {f"A{c}" for c in range(1, 13)}
    assert _eta(step, plate, first_row, 12, 32.0) == 32.0 / 12 * 84  # then the pace

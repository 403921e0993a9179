"""A step checks what it needs before it starts, and a retry clears a latched fault and
reads the sensors again (bench, daemon and terminal on one virtual clock, real wires, a
real Mosquitto)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from acquisition.errors import CommandError
from acquisition.run_recorder import RunRecorder
from devtools.mosquitto import MosquittoBroker
from devtools.virtual_lab import VirtualLab, virtual_lab

PLATE = "competition-progesterone"
ENDED = {"completed", "failed", "aborted"}
HARVEST_ONLY = """\
name = "harvest-only"

[[steps]]
type = "harvest"
prewet = "10 s"
washes = 3
wash_volume = "1 mL"
dry = "30 s"
"""


def _kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _recovery_answers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in _kinds(docs, "prompt")
            if d["prompt_kind"] == "recovery" and d["phase"] == "answered"]  # fmt: skip


async def test_a_waste_trap_too_full_for_the_harvest_is_emptied_by_the_virtual_operator(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with virtual_lab(tmp_path, broker.port) as lab:
        await lab.sim("fault", instrument="harvester", kind="waste_full")  # trap full, idle
        run = await lab.start("competition-binding", plate_map=PLATE)
        final = await lab.wait_state(run, ENDED)
        assert final["state"] == "completed", final
        docs = await lab.documents(run)
        asked = [d for d in _kinds(docs, "prompt")
                 if d["prompt_kind"] == "recovery" and d["phase"] == "asked"]  # fmt: skip
        assert len(asked) == 1 and "the waste trap is 100% full" in asked[0]["text"], asked
        assert asked[0]["options"] == ["retry", "abort"]
        (answer,) = _recovery_answers(docs)
        assert (answer["answer"], answer["by"]) == ("retry", "virtual-operator")
        assert "empty waste" in answer["note"], answer
        # the harvest started only once its preconditions held: one started, one finished
        phases = [(d["step"], d["phase"]) for d in _kinds(docs, "step") if d["step"] == "harvest"]
        assert phases == [("harvest", "started"), ("harvest", "finished")]
        started = next(d for d in _kinds(docs, "step") if d["step"] == "harvest")
        assert started["detail"]["harvester"]["waste_pct"] == 0.0


async def test_a_precondition_waits_for_a_person_and_is_checked_again_on_retry(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with virtual_lab(tmp_path, broker.port, virtual_operator=False) as lab:
        plate_id = "PH1"
        await lab.sim("add_plate", plate_id=plate_id, layout="competition",
                      competitors=["progesterone"], location="harvester:harvester")  # fmt: skip
        await lab.sim("fault", instrument="harvester", kind="buffer_empty")
        run = await lab.start("harvest-only", protocol_toml=HARVEST_ONLY, plate_id=plate_id)
        waiting = await lab.wait_state(run, {"awaiting-recovery", *ENDED})
        assert waiting["state"] == "awaiting-recovery", waiting
        assert "refill it" in waiting["prompt"]["text"], waiting["prompt"]
        with pytest.raises(CommandError, match="not skip"):
            await lab.client.request("run.recover", {"run": run, "action": "skip"})
        await lab.client.request("run.recover", {"run": run, "action": "retry"})  # not fixed
        for _ in range(1000):  # the precondition is checked again and asked again
            docs = await lab.documents(run)
            asked = [d for d in _kinds(docs, "prompt")
                     if d["prompt_kind"] == "recovery" and d["phase"] == "asked"]  # fmt: skip
            if len(asked) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(asked) == 2 and "refill it" in asked[1]["text"], asked
        await lab.wait_state(run, {"awaiting-recovery"})
        await lab.sim("fault", instrument="harvester", kind="refill_buffer")
        await lab.client.request("run.recover", {"run": run, "action": "retry"})
        final = await lab.wait_state(run, ENDED)
        assert final["state"] == "completed", final
        docs = await lab.documents(run)
        assert [a["by"] for a in _recovery_answers(docs)] == ["operator", "operator"]
        world = (await lab.sim("world"))["world"]
        assert [m for m, v in world["mats"].items() if v["plate_id"] == plate_id]


async def test_a_retry_with_the_counter_door_still_open_says_so_and_waits(
    lab: VirtualLab,
) -> None:
    run = await lab.start("competition-binding", plate_map=PLATE)
    await lab.freeze_when(run, _counting(24))
    await lab.sim("fault", instrument="counter", kind="door_open")
    lab.thaw()
    first = await lab.wait_state(run, {"awaiting-recovery", *ENDED})
    assert first["state"] == "awaiting-recovery", first
    await lab.client.request("run.recover", {"run": run, "action": "retry"})
    still = await lab.wait_state(
        run, {"awaiting-recovery"},
        until=lambda s: "still reports door open" in (s["message"] or ""))  # fmt: skip
    assert "fix the cause, then retry" in still["message"]
    await lab.sim("fault", instrument="counter", kind="door_close")
    await lab.client.request("run.recover", {"run": run, "action": "retry"})
    final = await lab.wait_state(run, ENDED)
    assert final["state"] == "completed", final
    wells = [d["reading"]["well"] for d in await lab.documents(run)
             if d["kind"] == "data" and d["stream"] == "well"]  # fmt: skip
    assert len(wells) == 96 and len(set(wells)) == 96


def _counting(done: int) -> Any:
    def at(rec: RunRecorder) -> bool:
        return bool(rec.state == "running" and rec.step == "count"
                    and rec.progress is not None and rec.progress.done >= done)  # fmt: skip

    return at


@pytest.fixture
async def lab(tmp_path: Path, broker: MosquittoBroker) -> Any:
    async with virtual_lab(tmp_path, broker.port) as the_lab:
        yield the_lab

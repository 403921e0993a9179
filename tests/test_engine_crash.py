"""Crash recovery of protocol runs, with real processes: ``assay-sim bench``, ``assayd`` and a
real Mosquitto. The daemon is killed (SIGKILL) or stopped (SIGTERM) mid-step, started again on
the same config and journal, and the run is resumed (or aborted) over MQTT as the terminal
would. Each test runs on scaled time (``time_scale`` simulated seconds per real second) and
waits for points in the run by polling the daemon, never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from acquisition.cli.client import DaemonClient
from acquisition.config import load_config
from acquisition.errors import CommandError
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, LabFiles, SimBenchProcess, write_lab_config

pytestmark = pytest.mark.slow

KINDS = ("counter", "incubator", "harvester")
ALL_WELLS = {f"{row}{col}" for row in "ABCDEFGH" for col in range(1, 13)}
ENDED = {"completed", "aborted", "failed"}
POLL_S = 0.01  # between two looks at the daemon or the bench
TIMEOUT_S = 30.0  # real seconds: a safety net, never the expected wait

# 96 wells on 12 detectors: 8 positions x (30 s + 2 s overhead) = 256 s of simulated time.
COUNT_ONLY = """\
name = "crash-count"

[[steps]]
type = "count"
isotope = "H3"
count_time = "30 s"
"""

HARVEST_THEN_COUNT = """\
name = "crash-harvest"

[[steps]]
type = "prompt"
text = "put the assay plate in the incubator"
action = "plate_to_incubator"

[[steps]]
type = "prompt"
text = "move the plate to the harvester"
action = "plate_to_harvester"

[[steps]]
type = "harvest"
prewet = "10 s"
washes = 3
wash_volume = "1 mL"
dry = "120 s"   # long enough (2.4 s real at x50) to be killed in, even on a loaded machine

[[steps]]
type = "prompt"
text = "move the filter mat to the counter"
action = "mat_to_counter"

[[steps]]
type = "count"
isotope = "H3"
count_time = "10 s"
"""
HARVEST_INDEX = 3


# --------------------------------------------------------------------------- the stack


@dataclass
class Lab:
    files: LabFiles
    bench: SimBenchProcess
    daemon: DaemonProcess
    client: DaemonClient

    async def get(self, run: str) -> dict[str, Any]:
        state: dict[str, Any] = await self.client.request("run.get", {"run": run})
        return state

    async def wait(
        self, run: str, until: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Poll ``run.get`` until ``until(state)``; AssertionError after TIMEOUT_S."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            state = await self.get(run)
            if until(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run}: {what} not reached in {TIMEOUT_S} s: {state}")
            await asyncio.sleep(POLL_S)

    async def wait_ended(self, run: str) -> dict[str, Any]:
        return await self.wait(run, lambda s: s["state"] in ENDED, "the end of the run")

    async def sim(self, op: str, **args: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self.client.request("sim", {"op": op, "args": args})
        return reply

    async def harvester(self) -> dict[str, Any]:
        return await self.sim("state", instrument="harvester")

    async def mats_of(self, plate_id: str) -> list[str]:
        world = (await self.sim("world"))["world"]
        return sorted(m for m, v in world["mats"].items() if v["plate_id"] == plate_id)

    async def start(self, protocol_toml: str, **args: Any) -> str:
        name = protocol_toml.split('"')[1]
        reply = await self.client.request(
            "run.start", {"protocol": name, "protocol_toml": protocol_toml, **args}
        )
        assert reply["state"] == "queued", reply
        return str(reply["run"])

    async def restart(self, sig: signal.Signals) -> int | None:
        """Stop the daemon with ``sig`` (SIGKILL: no chance to write anything), start it
        again on the same config and journal, and wait for its instruments."""
        if sig == signal.SIGKILL:
            await asyncio.to_thread(self.daemon.kill)
            code = self.daemon.proc.returncode if self.daemon.proc else None
        else:
            code = await asyncio.to_thread(self.daemon.stop, sig)
        await asyncio.to_thread(self.daemon.start)
        await self.wait_connected()
        return code

    async def wait_connected(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            with contextlib.suppress(CommandError):  # not subscribed yet: no reply
                insts = await self.client.request("instruments")
                if len(insts) == len(KINDS) and all(i["connected"] for i in insts):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"instruments not connected:\n{self.daemon.tail()}")
            await asyncio.sleep(POLL_S)

    def documents(self, run: str) -> list[dict[str, Any]]:
        """The run's documents as the journal holds them, in seq order."""
        with contextlib.closing(sqlite3.connect(self.files.journal_path)) as conn:
            rows = conn.execute(
                "SELECT payload FROM documents WHERE run = ? ORDER BY seq", (run,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]


@contextlib.asynccontextmanager
async def lab_stack(
    tmp_path: Path, broker: MosquittoBroker, time_scale: float
) -> AsyncIterator[Lab]:
    files = write_lab_config(
        tmp_path, broker_port=broker.port, node=f"crash-{uuid.uuid4().hex[:8]}", kinds=KINDS,
        time_scale=time_scale, counter_poll_s=0.5,
    )  # fmt: skip
    bench, daemon = SimBenchProcess(files), DaemonProcess(files)
    with bench, daemon:
        async with DaemonClient(load_config(files.config_path), timeout_s=10.0) as client:
            lab = Lab(files, bench, daemon, client)
            await lab.wait_connected()
            yield lab


# ----------------------------------------------------------------------- the documents


def _kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _wells(docs: list[dict[str, Any]]) -> list[str]:
    return [d["reading"]["well"] for d in docs
            if d["kind"] == "data" and d.get("stream", "well") == "well"]  # fmt: skip


def _phases(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["step"], d["phase"]) for d in _kinds(docs, "step")]


def _check_complete(docs: list[dict[str, Any]]) -> None:
    """Every well exactly once, no gap in seq, one stop document, a success."""
    assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1)), "gap in seq"
    assert len({d["id"] for d in docs}) == len(docs)
    wells = _wells(docs)
    assert len(wells) == 96 and set(wells) == ALL_WELLS, Counter(wells).most_common(3)
    stops = _kinds(docs, "stop")
    assert len(stops) == 1 and stops[0]["exit_status"] == "success", stops
    assert docs[-1]["kind"] == "stop"


def _counting(min_done: int) -> Callable[[dict[str, Any]], bool]:
    """The count step running with at least ``min_done`` wells counted and on disk
    (``last_seq`` is the newest document written: start, step started, then one per well)."""

    def at(s: dict[str, Any]) -> bool:
        done = int((s.get("progress") or {}).get("done", 0))
        return bool(
            s["state"] == "running" and s["step"] == "count" and done >= min_done
            and s["last_seq"] >= 2 + min_done
        )  # fmt: skip

    return at


async def _resume_and_complete(lab: Lab, run: str) -> list[dict[str, Any]]:
    reply = await lab.client.request("run.resume", {"run": run})
    assert reply["run"] == run, reply
    final = await lab.wait_ended(run)
    assert final["state"] == "completed", final
    docs = lab.documents(run)
    _check_complete(docs)
    results = await lab.client.request("results", {"run": run})
    assert sorted(w["well"] for w in results["wells"]) == sorted(ALL_WELLS)
    assert results["stop"]["exit_status"] == "success"
    return docs


# --------------------------------------------------------------- 1. SIGKILL mid-count


async def test_sigkill_mid_count_then_resume_counts_each_well_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=100.0) as lab:
        run = await lab.start(COUNT_ONLY)
        await lab.wait(run, _counting(24), "24 wells counted")
        await lab.restart(signal.SIGKILL)

        state = await lab.get(run)
        assert state["state"] == "interrupted", state
        assert f"assay run resume {run}" in state["message"]
        docs = lab.documents(run)
        assert not _kinds(docs, "stop")
        (interruption,) = _kinds(docs, "interruption")
        assert interruption["reason"] == "daemon restarted"
        detail = interruption["detail"]
        counted = _wells(docs)
        assert detail["wells_done"] == len(counted) and 24 <= len(counted) < 96, detail
        assert detail["step"] == "count" and detail["step_index"] == 1
        assert detail["last_completed_step"] is None

        docs = await _resume_and_complete(lab, run)
        assert _wells(docs)[: len(counted)] == counted  # the wells before are kept, not redone
        assert Counter(_phases(docs)) == {
            ("count", "started"): 1, ("count", "resumed"): 1, ("count", "finished"): 1,
        }  # fmt: skip


# ------------------------------------------------------------------ 2. SIGKILL mid-harvest


async def _put_plate_in_incubator(lab: Lab, run: str, plate_id: str) -> None:
    """The first prompt (plate_to_incubator). The virtual operator cannot do it when the
    protocol has no incubate step (it looks up the run's incubator, which only steps that
    drive an instrument provide): it logs "virtual operator could not act" and the prompt
    waits for a person. Then the test is that person. Harmless if the operator did it."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        state = await lab.get(run)
        if (state["step_index"] or 0) > 1 or state["state"] in ENDED:
            return  # the virtual operator did it
        if state["state"] == "awaiting-operator" and "virtual operator could not act" in (
            lab.daemon.output()
        ):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run}: stuck at the first prompt: {state}")
        await asyncio.sleep(POLL_S)
    world = (await lab.sim("world"))["world"]
    if plate_id in world["plates"]:
        await lab.sim("place_plate", plate_id=plate_id, location="incubator:incubator")
    else:
        await lab.sim("add_plate", plate_id=plate_id, layout="competition",
                      competitors=["progesterone"], location="incubator:incubator")  # fmt: skip
    await lab.client.request("run.answer", {"run": run, "prompt": "1"})


async def _kill_mid_harvest(lab: Lab, run: str, harvester_steps: set[str]) -> None:
    """SIGKILL once the run is running its harvest step and the harvester is busy with one
    of ``harvester_steps`` (PW prewet, AS aspirate, WS wash, DR dry)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        state = await lab.get(run)
        if state["state"] == "running" and state["step"] == "harvest":
            har = await lab.harvester()
            if har["state"] == "BUSY" and har["step"] in harvester_steps:
                break
        if time.monotonic() > deadline or state["state"] in ENDED:
            raise AssertionError(f"run {run}: harvester never in {harvester_steps}: {state}")
        await asyncio.sleep(POLL_S)
    await lab.restart(signal.SIGKILL)


async def _harvester_idle(lab: Lab) -> dict[str, Any]:
    """The step the dead daemon had started runs to its end on the harvester."""
    deadline = time.monotonic() + TIMEOUT_S
    while (har := await lab.harvester())["state"] == "BUSY":
        if time.monotonic() > deadline:
            raise AssertionError(f"harvester still busy: {har}")
        await asyncio.sleep(POLL_S)
    return har


@pytest.mark.parametrize(
    ("killed_during", "action", "new_mats"),
    [
        # killed while drying: the harvester finishes the dry by itself and the mat is made;
        # the operator keeps it (skip)
        ({"DR"}, "skip", 0),
        # killed before the dry (prewet, aspirate or wash): no mat; the operator harvests
        # again (retry)
        ({"PW", "AS", "WS"}, "retry", 1),
    ],
    ids=["killed-drying-then-skip", "killed-before-the-dry-then-retry"],
)
async def test_sigkill_mid_harvest_waits_for_the_operator_never_reharvests_by_itself(
    tmp_path: Path, broker: MosquittoBroker, killed_during: set[str], action: str, new_mats: int
) -> None:
    plate_id = f"PC-{uuid.uuid4().hex[:6]}"
    # the harvest: 10 s prewet, 15 s aspirate, 3 x 8 s washes, 120 s dry, 3 s release
    async with lab_stack(tmp_path, broker, time_scale=50.0) as lab:
        run = await lab.start(HARVEST_THEN_COUNT, plate_id=plate_id)
        await _put_plate_in_incubator(lab, run, plate_id)
        await _kill_mid_harvest(lab, run, killed_during)

        state = await lab.get(run)
        assert state["state"] == "interrupted", state
        assert (state["step"], state["step_index"]) == ("harvest", HARVEST_INDEX), state
        docs = lab.documents(run)
        assert not _kinds(docs, "stop")
        (interruption,) = _kinds(docs, "interruption")
        assert interruption["reason"] == "daemon restarted"
        assert interruption["detail"]["step"] == "harvest"
        assert interruption["detail"]["step_index"] == HARVEST_INDEX
        assert interruption["detail"]["last_completed_step"] == HARVEST_INDEX - 1
        restarted_at = interruption["seq"]

        await _harvester_idle(lab)
        mats = await lab.mats_of(plate_id)
        assert len(mats) == (1 if "DR" in killed_during else 0), mats

        reply = await lab.client.request("run.resume", {"run": run})
        assert reply["run"] == run
        waiting = await lab.wait(run, lambda s: s["state"] != "interrupted", "the resume")
        assert waiting["state"] == "awaiting-recovery", waiting
        prompt = waiting["prompt"]
        assert prompt["kind"] == "recovery"
        assert prompt["options"] == ["retry", "skip", "abort"]
        assert "harvest" in prompt["text"] and "was interrupted" in prompt["text"]
        assert waiting["message"] == prompt["text"]
        # nothing was started again on the harvester
        har = await lab.harvester()
        assert har["state"] != "BUSY", har
        assert await lab.mats_of(plate_id) == mats
        after = _phases(lab.documents(run)[restarted_at:])
        assert not [p for p in after if p[0] == "harvest"], after

        await lab.client.request("run.recover", {"run": run, "action": action})
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", final
        docs = lab.documents(run)
        _check_complete(docs)
        now_mats = await lab.mats_of(plate_id)
        assert len(now_mats) == len(mats) + new_mats, (mats, now_mats)
        assert now_mats[: len(mats)] == mats
        harvest_after = [p for p in _phases(docs[restarted_at:]) if p[0] == "harvest"]
        if action == "skip":
            assert harvest_after == [("harvest", "skipped")]
        else:
            assert harvest_after == [("harvest", "resumed"), ("harvest", "finished")]
        answers = [(d["prompt_id"], d["answer"]) for d in _kinds(docs, "prompt")
                   if d["phase"] == "answered" and d["prompt_kind"] == "recovery"]  # fmt: skip
        assert answers == [(f"recover-{HARVEST_INDEX}", action)]
        # the counter counted the newest mat of this plate (its barcode is the mat's id)
        world = (await lab.sim("world"))["world"]
        assert world["mats"][now_mats[-1]]["location"] == "counter:counter"
        counted = {d["reading"]["plate_id"] for d in _kinds(docs, "data")}
        assert counted == {now_mats[-1]}, counted


# ---------------------------------------------------------------- 3. SIGTERM mid-count


async def test_sigterm_mid_count_interrupts_then_resume_completes(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=100.0) as lab:
        run = await lab.start(COUNT_ONLY)
        await lab.wait(run, _counting(24), "24 wells counted")
        code = await lab.restart(signal.SIGTERM)
        assert code == 0, lab.daemon.tail()

        state = await lab.get(run)
        assert state["state"] == "interrupted", state
        assert f"assay run resume {run}" in state["message"]
        docs = lab.documents(run)
        assert not _kinds(docs, "stop")
        (interruption,) = _kinds(docs, "interruption")  # none more after the restart
        assert interruption["reason"] == "daemon shutting down"
        assert interruption["detail"]["step_index"] == 1
        assert interruption["detail"]["previous"] == "running"
        counted = _wells(docs)
        assert 24 <= len(counted) < 96

        docs = await _resume_and_complete(lab, run)
        assert _wells(docs)[: len(counted)] == counted


# ------------------------------------------------------------- 4. abort an interrupted run


async def test_abort_of_an_interrupted_run_writes_one_stop_document(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=100.0) as lab:
        run = await lab.start(COUNT_ONLY)
        await lab.wait(run, _counting(12), "12 wells counted")
        await lab.restart(signal.SIGKILL)
        assert (await lab.get(run))["state"] == "interrupted"
        counted = _wells(lab.documents(run))

        reply = await lab.client.request("run.abort", {"run": run})
        assert reply["run"] == run and reply["state"] == "aborted", reply
        assert (await lab.get(run))["state"] == "aborted"
        again = await lab.client.request("run.abort", {"run": run})  # harmless
        assert again["state"] == "aborted"
        with pytest.raises(CommandError, match="is aborted") as refused:
            await lab.client.request("run.resume", {"run": run})
        assert refused.value.code == "conflict"

        docs = lab.documents(run)
        assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
        stops = _kinds(docs, "stop")
        assert len(stops) == 1 and stops[0]["exit_status"] == "abort", stops
        assert docs[-1]["kind"] == "stop"
        assert _wells(docs) == counted  # nothing counted after the crash
        results = await lab.client.request("results", {"run": run})
        assert results["state"] == "aborted" and results["stop"]["exit_status"] == "abort"

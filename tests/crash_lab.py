"""Helpers of the crash and recovery tests with real processes: ``assay-sim bench``,
``assayd`` and a real Mosquitto, driven over MQTT as the terminal would. Points in a run
are waited for by polling the daemon and the bench, never by sleeping a fixed time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acquisition.cli.client import DaemonClient
from acquisition.config import load_config
from acquisition.errors import CommandError
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, LabFiles, SimBenchProcess, write_lab_config

KINDS = ("counter", "incubator", "harvester")
REPO = Path(__file__).resolve().parents[1]
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
    kinds: tuple[str, ...] = KINDS

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
                if len(insts) == len(self.kinds) and all(i["connected"] for i in insts):
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
    tmp_path: Path, broker: MosquittoBroker, time_scale: float, top_extra: str = "",
    kinds: tuple[str, ...] = KINDS, simulation_extra: str = "",
) -> AsyncIterator[Lab]:
    files = write_lab_config(
        tmp_path, broker_port=broker.port, node=f"crash-{uuid.uuid4().hex[:8]}", kinds=kinds,
        time_scale=time_scale, counter_poll_s=0.5, top_extra=top_extra,
        simulation_extra=simulation_extra,
    )  # fmt: skip
    repo = str(REPO)  # tests.* importable by the daemon (plug-in modules of a test)
    files.env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH"))
                                              if p)  # fmt: skip
    bench, daemon = SimBenchProcess(files), DaemonProcess(files)
    with bench, daemon:
        async with DaemonClient(load_config(files.config_path), timeout_s=10.0) as client:
            lab = Lab(files, bench, daemon, client, kinds)
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



"""A whole lab in one event loop on one virtual clock: the simulated bench, the daemon, and
a bench terminal, meeting only over their real wires (Modbus TCP, ptys, a VISA socket, a
real Mosquitto). Time is a :class:`~drivers.clock.VirtualClock` with autojump, so a
90-minute incubation passes as soon as everyone is waiting on the clock.

Used by the orchestrator's tests and by bench/orchestrator.py::

    async with virtual_lab(tmp_path, broker.port) as lab:
        run = await lab.start("competition-binding", plate_map="competition-progesterone")
        final = await lab.wait_state(run, {"completed"})
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acquisition.cli.client import DaemonClient
from acquisition.config import LabConfig, load_config
from acquisition.daemon import Daemon
from acquisition.run_recorder import RunRecorder
from devtools.stack import LabFiles, write_lab_config
from drivers.clock import Clock, VirtualClock
from simulators.bench import SimBench, start_bench
from simulators.config import ConfigProblem, load_bench_config

__all__ = ["VirtualLab", "virtual_lab"]

KINDS = ("counter", "incubator", "harvester")
IDLE_S = 0.003  # no jump while a loopback request may still be answered (p99 < 1 ms)


@dataclass
class VirtualLab:
    files: LabFiles
    config: LabConfig
    clock: Clock
    bench: SimBench
    daemon: Daemon
    client: DaemonClient

    async def start(self, protocol: str = "competition-binding", **args: Any) -> str:
        reply = await self.client.request("run.start", {"protocol": protocol, **args})
        return str(reply["run"])

    async def state(self, run: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.request("run.get", {"run": run})
        return result

    async def wait_state(
        self, run: str, states: Collection[str], *, timeout_s: float = 60.0,
        step: str | None = None, prompt: str | None = None,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Poll the daemon (over MQTT) until the run is in one of ``states`` (and at
        ``step``, and ``until(state)``); real-time ``timeout_s`` as a safety net,
        AssertionError then."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = await self.state(run)
            if (
                last["state"] in states
                and (step is None or last.get("step") == step)
                and (prompt is None or (last.get("prompt") or {}).get("id") == prompt)
                and (until is None or until(last))
            ):
                return last
            await asyncio.sleep(0.01)
        raise AssertionError(f"run {run} not in {sorted(states)} after {timeout_s} s: {last}")

    async def documents(self, run: str) -> list[dict[str, Any]]:
        import json

        return [json.loads(p) for p in await self.daemon.journal.documents(run)]

    async def freeze_when(
        self, run: str, predicate: Callable[[RunRecorder], bool], *, timeout_s: float = 60.0
    ) -> None:
        """Stop the virtual clock the moment ``predicate(recorder)`` holds for the running
        ``run`` (checked every loop iteration, in process), so that the test can act on the
        run at that point; :meth:`thaw` lets time go on."""
        assert isinstance(self.clock, VirtualClock)
        deadline = time.monotonic() + timeout_s
        while True:
            active = self.daemon.active.get(run)
            if active is not None and predicate(active.recorder):
                self.clock.hold()
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run}: the awaited point never came")
            await asyncio.sleep(0)

    def freeze(self) -> None:
        """Stop the virtual clock now (see :meth:`freeze_when`)."""
        assert isinstance(self.clock, VirtualClock)
        self.clock.hold()

    def thaw(self) -> None:
        assert isinstance(self.clock, VirtualClock)
        self.clock.release()

    async def sim(self, op: str, **args: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self.client.request("sim", {"op": op, "args": args})
        return reply


@contextlib.asynccontextmanager
async def virtual_lab(
    workdir: Path,
    broker_port: int,
    *,
    kinds: tuple[str, ...] = KINDS,
    clock: Clock | None = None,
    virtual_operator: bool = True,
    node: str = "lab1",
    journal_path: Path | None = None,
) -> AsyncIterator[VirtualLab]:
    """Bench + daemon + terminal on ``clock`` (default: a new autojumping VirtualClock)."""
    # Each wake-up of a sleeper is a clock jump and each jump waits IDLE_S of real time:
    # the counter is polled every 10 s and the world samples every 30 s of simulated time.
    files = write_lab_config(
        workdir, broker_port=broker_port, node=node, kinds=kinds, counter_poll_s=10.0,
        simulation_extra="[simulation.world]\ntick_s = 30.0",
        virtual_operator=virtual_operator, journal_path=journal_path,
    )  # fmt: skip
    config = load_config(files.config_path)
    bench_config = load_bench_config(files.config_path)
    assert not isinstance(bench_config, ConfigProblem), str(bench_config)
    clock = clock or VirtualClock(autojump=True, idle_s=IDLE_S)
    bench = await start_bench(bench_config, clock)
    daemon = Daemon(config, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="virtual-lab-daemon")
    try:
        async with DaemonClient(config, timeout_s=10.0) as client:
            lab = VirtualLab(files, config, clock, bench, daemon, client)
            await _wait_connected(client, len(kinds))
            yield lab
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await bench.stop()


async def _wait_connected(client: DaemonClient, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    status_topic = client.config.topic("status")
    while True:
        status = await client.retained(status_topic, wait_s=0.2)
        instruments: list[dict[str, Any]] = []
        if status is not None and status.get("state") == "online":
            instruments = await client.request("instruments")
        if len(instruments) == n and all(i["connected"] for i in instruments):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"instruments not connected: {instruments}")
        await asyncio.sleep(0.05)

"""Helpers for end-to-end tests: a lab stack of real processes, and a durable consumer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from acquisition.cli.client import DaemonClient
from acquisition.config import LabConfig, load_config
from acquisition.follow import RunFollower
from devtools.stack import DaemonProcess, LabFiles, SimBenchProcess, write_lab_config


@dataclass
class Stack:
    lab: LabFiles
    sim: SimBenchProcess
    daemon: DaemonProcess

    @property
    def config(self) -> LabConfig:
        return load_config(self.lab.config_path)


@contextlib.contextmanager
def lab_stack(workdir: Path, broker_port: int, **config: Any) -> Iterator[Stack]:
    """A simulated bench and a daemon; the node id is unique unless given (shared broker)."""
    config.setdefault("node", f"e2e-{uuid.uuid4().hex[:8]}")
    lab = write_lab_config(workdir, broker_port=broker_port, **config)
    with SimBenchProcess(lab) as sim, DaemonProcess(lab) as daemon:
        yield Stack(lab, sim, daemon)


async def wait_connected(client: DaemonClient, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            insts = await client.request("instruments")
            if insts and all(i["connected"] for i in insts):
                return
            await asyncio.sleep(0.05)


@dataclass
class Collected:
    documents: list[dict[str, Any]] = field(default_factory=list)  # in delivery order
    received: list[dict[str, Any]] = field(default_factory=list)  # raw, duplicates included
    replays: int = 0


async def collect_run(
    config: LabConfig,
    run_holder: asyncio.Future[str],
    *,
    client_id: str | None = None,
    timeout_s: float = 60.0,
    on_document: Any = None,
) -> Collected:
    """A durable consumer: persistent session, RunFollower, replay on gaps; until stop.

    Reconnects when the broker goes away (with the same client id, clean_start=False).
    """
    client_id = client_id or f"consumer-{uuid.uuid4().hex[:8]}"
    out = Collected()
    follower = RunFollower(grace_s=0.3, retry_s=1.0)
    run: str | None = None
    events = config.topic("runs", "+", "events")
    states = config.topic("runs", "+", "state")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    first = True
    async with asyncio.timeout(timeout_s):
        while not follower.stopped:
            try:
                async with (
                    aiomqtt.Client(
                        "127.0.0.1",
                        config.mqtt.port,
                        identifier=client_id,
                        protocol=aiomqtt.ProtocolVersion.V5,
                        clean_start=first,
                        properties=props,
                    ) as client,
                    DaemonClient(config, timeout_s=10) as requester,
                ):
                    first = False
                    await client.subscribe(events, qos=1)
                    await client.subscribe(states, qos=1)
                    if not run_holder.done():
                        run_holder.set_result("")  # tell the caller we are subscribed
                    async for msg in _with_ticks(client):
                        now = time.monotonic()
                        if msg is not None:
                            assert isinstance(msg.payload, bytes | bytearray)
                            data = json.loads(msg.payload)
                            run = run or _run_of(data)
                            if data.get("run") != run:
                                continue
                            if msg.topic.matches(states):
                                follower.saw_last_seq(int(data["last_seq"]), now)
                            else:
                                out.received.append(data)
                                for doc in follower.offer(data, now):
                                    out.documents.append(doc)
                                    if on_document is not None:
                                        await on_document(doc)
                        gap = follower.replay_due(now)
                        if gap is not None and run is not None:
                            out.replays += 1
                            await requester.request(
                                "replay", {"run": run, "from_seq": gap[0], "to_seq": gap[1]}
                            )
                        if follower.stopped:
                            break
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # the broker is restarting: reconnect
    return out


def _run_of(data: dict[str, Any]) -> str | None:
    return data.get("run")


async def _with_ticks(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message | None]:
    """Messages, and a None every 100 ms so the caller can check for due replays."""
    it = client.messages.__aiter__()
    nxt: asyncio.Task[aiomqtt.Message] | None = None
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(anext(it))
            done, _ = await asyncio.wait({nxt}, timeout=0.1)
            if done:
                msg = nxt.result()
                nxt = None
                yield msg
            else:
                yield None
    finally:
        if nxt is not None:
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await nxt


def terminal_env() -> dict[str, str]:
    """The environment of the terminal run as a subprocess: wide, none of the user's
    settings, and this checkout's code (PYTHONPATH, when the venv's editable install is
    another checkout's)."""
    env = {"COLUMNS": "160", "PATH": "/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


async def wait_run_state(
    client: DaemonClient, run: str, *states: str, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Poll ``run.get`` until the run is in one of ``states``; its state then."""
    async with asyncio.timeout(timeout_s):
        while (got := await client.request("run.get", {"run": run}))["state"] not in states:
            await asyncio.sleep(0.05)
    result: dict[str, Any] = got
    return result

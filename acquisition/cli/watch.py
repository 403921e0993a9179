"""``assay run watch RUN``: live progress of a run, healed of any gap by replay."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiomqtt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from acquisition.cli.client import DaemonClient
from acquisition.config import LabConfig
from acquisition.errors import BrokerError
from acquisition.follow import RunFollower
from acquisition.payloads import TERMINAL_STATES

__all__ = ["watch_run"]


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --:--"
    m, s = divmod(round(seconds), 60)
    return f"ETA {m:d}:{s:02d}"


class _Display:
    def __init__(self, console: Console, run: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[latest]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID = self.progress.add_task(
            f"{run} counting", total=None, eta="ETA --:--", latest=""
        )

    def state(self, state: dict[str, Any]) -> None:
        prog = state.get("progress") or {}
        latest = state.get("latest") or {}
        fields: dict[str, Any] = {"eta": _eta(prog.get("eta_s"))}
        if latest:
            fields["latest"] = f"latest {latest.get('well')} {latest.get('cpm', 0):,.0f} CPM"
        self.progress.update(
            self.task,
            total=prog.get("total"),
            completed=prog.get("done", 0),
            description=f"{state['run']} {state['state']}",
            **fields,
        )


async def watch_run(
    client: DaemonClient, console: Console, run: str, *, reconnect_s: float = 2.0
) -> int:
    """Follow ``run`` until it stops; return a shell exit code (0 = completed).

    If the broker goes away, keep the follower (what was seen) and reconnect; once back,
    the retained run state shows what was missed and a replay fills it in.
    """
    session = _WatchSession(console, run)
    with session.display.progress:
        while True:
            try:
                if await session.follow(client):
                    break
            except BrokerError as exc:
                console.print(f"[yellow]{exc}; reconnecting[/yellow]")
            while True:
                await asyncio.sleep(reconnect_s)
                try:
                    client = await _connect(client.config, client.timeout_s)
                    break
                except BrokerError:
                    continue
            session.owned.append(client)
    await session.close()
    final = session.state["state"]
    style = "green" if final == "completed" else "red"
    console.print(f"run {run}: [{style}]{final}[/{style}] {session.state.get('message') or ''}")
    return 0 if final == "completed" else 1


async def _connect(config: LabConfig, timeout_s: float) -> DaemonClient:
    client = DaemonClient(config, timeout_s=timeout_s)
    await client.__aenter__()
    return client


class _WatchSession:
    """What a watch has seen, kept across reconnections."""

    def __init__(self, console: Console, run: str) -> None:
        self.console = console
        self.run = run
        self.display = _Display(console, run)
        self.follower: RunFollower | None = None
        self.state: dict[str, Any] = {}
        self.owned: list[DaemonClient] = []

    async def close(self) -> None:
        for client in self.owned:
            await client.__aexit__(None, None, None)

    async def follow(self, client: DaemonClient) -> bool:
        """Follow on one connection; True once the run has stopped and all is seen."""
        cfg = client.config
        events = cfg.topic("runs", self.run, "events")
        state_topic = cfg.topic("runs", self.run, "state")
        async with client.subscription(events, state_topic) as queue:
            self.state = await client.request("run.get", {"run": self.run})
            if self.follower is None:  # the first connection: only what comes from now on
                self.follower = RunFollower(next_seq=int(self.state["last_seq"]) + 1)
            follower = self.follower
            now = time.monotonic()
            follower.saw_last_seq(int(self.state["last_seq"]), now)
            self.display.state(self.state)
            while self.state["state"] not in TERMINAL_STATES or not _stop_seen(
                follower, self.state
            ):
                try:
                    msg = await asyncio.wait_for(queue.get(), 0.25)
                except TimeoutError:
                    msg = None
                if client.lost is not None:
                    raise client.lost
                now = time.monotonic()
                if msg is not None:
                    self._take(msg, state_topic, now)
                gap = follower.replay_due(now)
                if gap is not None:
                    self.console.print(
                        f"[yellow]gap in documents {gap[0]}-{gap[1]}; asking for a replay"
                    )
                    await client.request(
                        "replay", {"run": self.run, "from_seq": gap[0], "to_seq": gap[1]}
                    )
        return True

    def _take(self, msg: aiomqtt.Message, state_topic: str, now: float) -> None:
        assert self.follower is not None
        assert isinstance(msg.payload, bytes | bytearray)
        data = json.loads(msg.payload)
        if msg.topic.matches(state_topic):
            self.state = data
            self.display.state(data)
            self.follower.saw_last_seq(int(data["last_seq"]), now)
            return
        for doc in self.follower.offer(data, now):
            if doc["kind"] == "interruption":
                self.console.print(f"[red]interruption:[/red] {doc['reason']}")


def _stop_seen(follower: RunFollower, state: dict[str, Any]) -> bool:
    # Terminal state is retained; the stop document may already be behind us.
    return follower.stopped or follower.delivered_up_to >= int(state["last_seq"])

"""``assay run watch RUN``: live progress of a run, healed of any gap by replay."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from acquisition.cli.client import DaemonClient
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


async def watch_run(client: DaemonClient, console: Console, run: str) -> int:
    """Follow ``run`` until it stops; return a shell exit code (0 = completed)."""
    cfg = client.config
    events = cfg.topic("runs", run, "events")
    state_topic = cfg.topic("runs", run, "state")
    async with client.subscription(events, state_topic) as queue:
        state: dict[str, Any] = await client.request("run.get", {"run": run})
        follower = RunFollower(next_seq=int(state["last_seq"]) + 1)
        display = _Display(console, run)
        with display.progress:
            display.state(state)
            while state["state"] not in TERMINAL_STATES or not _stop_seen(follower, state):
                try:
                    msg = await asyncio.wait_for(queue.get(), 0.25)
                except TimeoutError:
                    msg = None
                now = time.monotonic()
                if msg is not None:
                    assert isinstance(msg.payload, bytes | bytearray)
                    data = json.loads(msg.payload)
                    if msg.topic.matches(state_topic):
                        state = data
                        display.state(state)
                        follower.saw_last_seq(int(state["last_seq"]), now)
                    else:
                        for doc in follower.offer(data, now):
                            if doc["kind"] == "interruption":
                                console.print(f"[red]interruption:[/red] {doc['reason']}")
                gap = follower.replay_due(now)
                if gap is not None:
                    console.print(
                        f"[yellow]gap in documents {gap[0]}-{gap[1]}; asking for a replay"
                    )
                    await client.request(
                        "replay", {"run": run, "from_seq": gap[0], "to_seq": gap[1]}
                    )
    final = state["state"]
    style = "green" if final == "completed" else "red"
    console.print(f"run {run}: [{style}]{final}[/{style}] {state.get('message') or ''}")
    return 0 if final == "completed" else 1


def _stop_seen(follower: RunFollower, state: dict[str, Any]) -> bool:
    # Terminal state is retained; the stop document may already be behind us.
    return follower.stopped or follower.delivered_up_to >= int(state["last_seq"])

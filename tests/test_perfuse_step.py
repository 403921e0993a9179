"""The perfuse step through the daemon, on the simulated valve controller: the solution is
selected, the step waits the rig's exchange time, and an abort returns the bath to the
control solution."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from acquisition.cli.client import DaemonClient
from acquisition.protocols import parse_protocol, plan
from acquisition.steps.perfuse import exchange_time_s
from devtools.mosquitto import MosquittoBroker
from tests.e2e import lab_stack, wait_connected, wait_run_state

PROTOCOL = """
name = "switch-to-drug"
[[steps]]
type = "perfuse"
valve = 3
solution = "aCSF + DHEA-S 10 uM"
exchange = "95 %"
[[steps]]
type = "wait"
duration = "10 min"
"""


def test_the_exchange_time_and_the_plan() -> None:
    assert exchange_time_s(50.0, 250.0, 10.0, 95.0) == pytest.approx(5 + 10 * math.log(20))
    protocol, _ = parse_protocol(PROTOCOL)
    first = plan(protocol).steps[0]
    assert "valve 3: aCSF + DHEA-S 10 uM, to 95 % exchanged" in first.settings
    assert first.duration_s == pytest.approx(5 + 10 * math.log(20))


async def _valve(client: DaemonClient) -> Any:
    (perfusion,) = [i for i in await client.request("instruments") if i["kind"] == "perfusion"]
    return perfusion["readings"]["open_valve"]


@pytest.mark.slow
async def test_perfuse_selects_the_solution_waits_and_an_abort_restores_the_control(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    with lab_stack(tmp_path, broker.port, kinds=("perfusion",), time_scale=100.0) as stack:
        async with DaemonClient(stack.config) as client:
            await wait_connected(client)
            run = (await client.request("run.start", {"protocol": "switch-to-drug",
                                                      "protocol_toml": PROTOCOL}))["run"]
            await wait_run_state(client, run, "running")
            async with asyncio.timeout(30):  # the wait step: the exchange is over
                while (running := await client.request("run.get", {"run": run}))[
                        "step"] != "wait":  # fmt: skip
                    await asyncio.sleep(0.05)
            assert running["step_index"] == 2
            async with asyncio.timeout(10):
                while await _valve(client) != 3:
                    await asyncio.sleep(0.05)
            finished = [d for d in _documents(stack.lab.journal_path, run)
                        if d["kind"] == "step" and d["phase"] == "finished"]  # fmt: skip
            (perfused,) = finished
            assert perfused["step"] == "perfuse"
            assert perfused["detail"]["solution"] == "aCSF + DHEA-S 10 uM"
            assert perfused["detail"]["open_valves"] == [3]
            assert perfused["detail"]["waited_s"] == round(exchange_time_s(50, 250, 10, 95), 1)
            await client.request("run.abort", {"run": run})
            await wait_run_state(client, run, "aborted")
            async with asyncio.timeout(10):
                while await _valve(client) != 1:  # the control solution
                    await asyncio.sleep(0.05)


def _documents(journal: Path, run: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows = db.execute("SELECT payload FROM documents WHERE run = ? ORDER BY seq", (run,))
        return [json.loads(r[0]) for r in rows.fetchall()]

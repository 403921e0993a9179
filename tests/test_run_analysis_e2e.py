"""A count run that asks for analysis gets its result: stored, retained on MQTT, shown."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from acquisition.cli.client import DaemonClient
from devtools.mosquitto import MosquittoBroker
from tests.e2e import lab_stack, terminal_env, wait_connected

pytestmark = pytest.mark.slow

# The counter simulator's demo plate: progesterone-like (Ki 100 nM) in rows A-C, radioligand
# at its Kd, ascending concentrations from column 3 (simulators/plates.py).
SPEC = {
    "competitor": "progesterone-like",
    "constants": {"HotNM": 5.0, "HotKdNM": 5.0},
    "layout": {
        "competitors": {"progesterone-like": "ABC", "haloperidol-like": "DEF"},
        "descending": False,
        "blank_rows": "GH",
    },
}


async def test_a_finished_count_gets_its_analysis(broker: MosquittoBroker, tmp_path: Path) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=2000.0) as stack:
        config = stack.config
        async with DaemonClient(config) as client:
            await wait_connected(client)
            with pytest.raises(Exception, match="competitor"):
                await client.request("run.start", {"analysis": {**SPEC, "competitor": "x"}})
            run = (await client.request("run.start", {"count_time_s": 60, "analysis": SPEC}))[
                "run"
            ]
            async with asyncio.timeout(30):
                while not (res := await client.request("results", {"run": run}))["analysis"]:
                    await asyncio.sleep(0.05)
        analysis = res["analysis"]
        assert analysis["schema"] == "assay.result/1" and analysis["run"] == run
        ki = next(p for p in analysis["derived"] if p["name"] == "Ki")
        assert ki["profile_low"] < 100e-9 < ki["profile_high"], ki  # the simulator's truth
        assert {v["code"] for v in analysis["qc"]} >= {"z-prime", "spans-50", "hill-slope"}
        # ... and it is retained on the run's result topic.
        topic = config.topic("runs", run, "result")
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as sub:
            await sub.subscribe(topic, qos=1)
            async with asyncio.timeout(5):
                msg = await anext(aiter(sub.messages))
        assert isinstance(msg.payload, bytes)
        assert json.loads(msg.payload)["run"] == run
        # The bench terminal: table with the fit and QC, CSV with derived values, the plot.
        cfg, png = str(stack.lab.config_path), tmp_path / "fit.png"
        table = _assay(cfg, "results", run, "--plot", str(png))
        assert table.returncode == 0, table.stderr
        assert "one-site-fit-ki: progesterone-like" in table.stdout and "z-prime" in table.stdout
        assert png.read_bytes()[:4] == b"\x89PNG"
        csv_text = _assay(cfg, "results", run, "--format", "csv").stdout
        header = csv_text.splitlines()[0].split(",")
        assert {"well", "role", "specific_cpm", "percent_specific"} <= set(header), header


def _assay(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "assay"), "--config", config, *args],
        capture_output=True, text=True, timeout=60, check=False,
        env=terminal_env(),
    )  # fmt: skip

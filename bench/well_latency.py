"""Latency from a counted well to its receipt by an MQTT subscriber (p50/p99).

Real processes: Mosquitto, ``assay-sim bench``, ``assayd``; a subscriber in this process.
Latency is measured from the moment the daemon had the well from the counter (the reading's
``counted_at``, wall clock) to the subscriber's receipt (same machine, same clock): journal
append -> outbox -> broker -> subscriber. The counter poll interval (``poll_interval_s``,
50 ms here) comes on top for the time from the detector stopping to the daemon asking.

    .venv/bin/python bench/well_latency.py [--plates 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from acquisition.cli.client import DaemonClient
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, SimBenchProcess, write_lab_config


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(config_path: Path, plates: int) -> list[float]:
    from acquisition.config import load_config

    config = load_config(config_path)
    latencies: list[float] = []
    async with (
        aiomqtt.Client("127.0.0.1", config.mqtt.port, protocol=aiomqtt.ProtocolVersion.V5) as sub,
        DaemonClient(config) as client,
    ):
        await sub.subscribe(config.topic("runs", "+", "events"), qos=1)
        async with asyncio.timeout(30):
            while not all(i["connected"] for i in await client.request("instruments")):
                await asyncio.sleep(0.1)
        for _ in range(plates):
            await client.request("run.start", {"count_time_s": 20})
            async for msg in sub.messages:
                now = datetime.now().astimezone()
                assert isinstance(msg.payload, bytes)
                doc = json.loads(msg.payload)
                if doc["kind"] == "data":
                    counted = datetime.fromisoformat(doc["reading"]["counted_at"])
                    latencies.append((now - counted).total_seconds())
                if doc["kind"] == "stop":
                    break
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        lab = write_lab_config(Path(tmp), broker_port=broker.port, time_scale=200.0)
        with SimBenchProcess(lab), DaemonProcess(lab):
            lat = asyncio.run(_measure(lab.config_path, args.plates))
    ms = [x * 1000 for x in lat]
    print(f"well -> subscriber latency over {len(ms)} wells ({args.plates} plates):")
    print(
        f"  p50 {statistics.median(ms):.2f} ms   p99 {_pct(ms, 0.99):.2f} ms   max {max(ms):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the durable MQTT pipeline against a bare aiomqtt QoS1 publish loop.

    .venv/bin/python bench/pipeline.py [--docs N] [--window W]

Starts its own Mosquitto, then measures on it, one after the other:

(a) bare: one aiomqtt client awaiting each QoS1 publish (PUBACK) in a loop; rate = messages
    received by a subscriber per second (first publish -> last receipt);
(b) durable: Journal.append (document + outbox row, one SQLite transaction in WAL) ->
    MqttLink's outbox drainer (QoS1, ``publish_window`` in flight, row deleted after PUBACK)
    -> broker -> subscriber; rate = documents received per second, plus p50/p99 latency from
    the append() call to the subscriber's receipt.

Target (docs/product spec): durable >= 0.5 x bare. Prints a table; exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acquisition.config import JournalConfig, LabConfig, MqttConfig
from acquisition.journal import Journal, OutboxMessage
from acquisition.mqtt_link import MqttLink
from devtools.mosquitto import MosquittoBroker


def _payload(seq: int) -> bytes:
    """About the size of a counted-well document."""
    return json.dumps(
        {
            "schema": "assay.event/1", "id": f"bench-{seq:08d}", "run": "bench", "node": "bench",
            "seq": seq, "ts": "2026-05-04T09:30:00+00:00", "kind": "data", "stream": "well",
            "reading": {
                "index": seq, "well": "A1", "plate_id": "P1", "detector": 1, "counts": 12345,
                "count_time_s": 60.0, "cpm": 12345.0, "ccpm": 12001.5, "sigma2_pct": 1.8,
                "sqp": 712.3, "flags": [], "counted_at": "2026-05-04T09:30:00+00:00",
            },
        }
    ).encode()


class _Receiver:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.times: dict[int, float] = {}
        self.done = asyncio.Event()

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            seq = json.loads(message.payload)["seq"]
            self.times.setdefault(seq, time.perf_counter())
            if len(self.times) >= self.expected:
                self.done.set()


async def _subscriber(broker: MosquittoBroker, topic: str) -> aiomqtt.Client:
    client = aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, identifier=f"sub-{topic}"
    )
    await client.__aenter__()
    await client.subscribe(topic, qos=1)
    return client


async def bare(broker: MosquittoBroker, n: int) -> float:
    topic = "bench/bare"
    sub = await _subscriber(broker, topic)
    rx = _Receiver(n)
    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(rx.run(sub))
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, identifier="bare-pub"
        ) as pub:
            t0 = time.perf_counter()
            for seq in range(1, n + 1):
                await pub.publish(topic, _payload(seq), qos=1)
            await asyncio.wait_for(rx.done.wait(), 300)
        reader.cancel()
    await sub.__aexit__(None, None, None)
    return n / (max(rx.times.values()) - t0)


async def durable(broker: MosquittoBroker, n: int, window: int, workdir: Path) -> dict[str, float]:
    cfg = LabConfig(
        node="bench",
        mqtt=MqttConfig(host=broker.host, port=broker.port, publish_window=window),
        journal=JournalConfig(path=workdir / "journal.sqlite3"),
    )
    journal = await Journal.open(cfg.journal.path, synchronous=cfg.journal.synchronous)

    async def ignore(_: aiomqtt.Message) -> None:
        return None

    link = MqttLink(
        cfg, journal, on_command=ignore,
        status_online=lambda: b'{"state": "online"}',
        status_offline=lambda why: b'{"state": "offline"}',
    )  # fmt: skip
    topic = cfg.topic("runs", "bench", "events")
    sub = await _subscriber(broker, topic)
    rx = _Receiver(n)
    sent: dict[int, float] = {}
    await journal.create_run("bench", "bench", {}, datetime.now(UTC))
    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(rx.run(sub))
        runner = tg.create_task(link.run())
        await link.wait_connected(30)
        t0 = time.perf_counter()
        for seq in range(1, n + 1):
            payload = _payload(seq)
            sent[seq] = time.perf_counter()
            await journal.append(
                "bench", seq, f"bench-{seq:08d}", "data", payload,
                outbox=[OutboxMessage(topic, payload)],
            )  # fmt: skip
            link.notify()
        await asyncio.wait_for(rx.done.wait(), 300)
        elapsed = max(rx.times.values()) - t0
        await link.shutdown(timeout_s=30)
        reader.cancel()
        runner.cancel()
    await sub.__aexit__(None, None, None)
    left = await journal.outbox_size()
    await journal.close()
    latencies = sorted((rx.times[s] - sent[s]) * 1000 for s in sent)
    return {
        "rate": n / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "outbox_left": float(left),
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=3000, help="messages per measurement")
    parser.add_argument("--window", type=int, default=32, help="MqttConfig.publish_window")
    args = parser.parse_args(argv)
    with (
        MosquittoBroker(max_queued_messages=0) as broker,
        tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp,
    ):
        await bare(broker, 200)  # warm-up
        bare_rate = await bare(broker, args.docs)
        d = await durable(broker, args.docs, args.window, Path(tmp))
    ratio = d["rate"] / bare_rate
    verdict = "ok" if ratio >= 0.5 else "MISSED"
    rows = [
        ("bare aiomqtt QoS1 loop (await each publish)", f"{bare_rate:,.0f} msg/s", ""),
        (
            f"durable journal->outbox->broker (window {args.window})",
            f"{d['rate']:,.0f} docs/s",
            f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms (append -> receipt)",
        ),
        ("ratio durable / bare", f"{ratio:.2f}x", f"target >= 0.5x: {verdict}"),
    ]
    print(
        f"pipeline benchmark: {args.docs} messages, {os.cpu_count()} CPUs,"
        f" mosquitto on {broker.url}"
    )
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>14}  {note}")
    if d["outbox_left"]:
        print(f"  WARNING: {d['outbox_left']:.0f} outbox rows left after shutdown")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

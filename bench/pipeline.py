"""Benchmark: the durable MQTT pipeline against a bare aiomqtt QoS1 publish loop.

    .venv/bin/python bench/pipeline.py [--docs N] [--rounds R] [--window W]

Starts its own Mosquitto and, in alternating rounds on that broker, measures:

(a) windowed: one aiomqtt client keeping ``--window`` QoS1 publishes in flight, in order
    (the strongest honest baseline: the same window the durable path keeps, nothing
    written to disk);
(a') sequential: one aiomqtt client awaiting each QoS1 publish (PUBACK) in a loop;
(b) durable: exactly what the daemon does per counted well: ``RunRecorder.data`` builds the
    run document, appends it to the journal with its outbox rows (the event; the retained
    run state too, at most every ``STATE_INTERVAL_S`` during a fast count like this one) in
    one SQLite transaction (WAL; appends queued together share a commit) -> ``MqttLink``'s
    outbox drainer (QoS1, ``publish_window`` in flight, row deleted after PUBACK) -> broker.

In both, the subscriber is a separate process (``mosquitto_sub -q 1``), so it does not
compete with the publisher for this process's event loop, and the rate is messages received
per second (first publish -> last receipt). Latency (durable only) is from the ``append()``
call to the subscriber's receipt: journal -> outbox -> broker -> subscriber. Rounds alternate
(bare, durable, bare, ...) so drift on a busy machine hits both; the ratio is of medians.

Target: durable >= 0.9 x windowed (issue 10), with nothing given up: every document journaled
before it is published, deleted from the outbox only after its PUBACK, order kept per run.
Prints a table; exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from acquisition.journal import Journal
from acquisition.mqtt_link import MqttLink
from acquisition.payloads import Progress, WellReading
from acquisition.run_recorder import RunRecorder
from devtools.mosquitto import MosquittoBroker


def _reading(i: int) -> WellReading:
    return WellReading(
        index=i, well="A1", plate_id="P1", detector=1, counts=12345, count_time_s=60.0,
        cpm=12345.0, ccpm=12001.5, sigma2_pct=1.8, sqp=712.3, flags=[],
        counted_at=datetime.now(UTC),
    )  # fmt: skip


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
    ).encode()  # fmt: skip


class Subscriber:
    """``mosquitto_sub`` in its own process; records the wall time each seq arrived."""

    def __init__(self, broker: MosquittoBroker, topic: str, expected: int) -> None:
        self.broker = broker
        self.topic = topic
        self.expected = expected
        self.times: dict[int, float] = {}
        self.done = asyncio.Event()
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Subscriber:
        self.proc = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", self.broker.host, "-p", str(self.broker.port),
            "-t", self.topic, "-q", "1", "-V", "5", "-F", "%U %p",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        async with aiomqtt.Client(self.broker.host, self.broker.port) as probe:
            while not self._ready.is_set():  # publish probes until the subscriber sees one
                await probe.publish(self.topic, b'{"seq": 0}', qos=1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), 0.05)
        return self

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            stamp, _, payload = line.partition(b" ")
            seq = json.loads(payload)["seq"]
            if seq == 0:
                self._ready.set()
                continue
            self.times.setdefault(seq, float(stamp))
            if len(self.times) >= self.expected:
                self.done.set()

    async def __aexit__(self, *exc: object) -> None:
        self.proc.terminate()
        await self.proc.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def bare(broker: MosquittoBroker, n: int, round_no: int) -> float:
    topic = f"bench/bare/{round_no}"
    async with (
        Subscriber(broker, topic, n) as rx,
        aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, identifier="bare-pub"
        ) as pub,
    ):
        t0 = time.time()
        for seq in range(1, n + 1):
            await pub.publish(topic, _payload(seq), qos=1)
        await asyncio.wait_for(rx.done.wait(), 300)
        return n / (max(rx.times.values()) - t0)


async def windowed(broker: MosquittoBroker, n: int, window: int, round_no: int) -> float:
    """Up to ``window`` publishes awaiting their PUBACK at once, started in seq order."""
    topic = f"bench/windowed/{round_no}"
    slots = asyncio.Semaphore(window)

    async def one(pub: aiomqtt.Client, seq: int) -> None:
        try:
            await pub.publish(topic, _payload(seq), qos=1)
        finally:
            slots.release()

    async with (
        Subscriber(broker, topic, n) as rx,
        aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5,
            identifier="windowed-pub", max_inflight_messages=window,
        ) as pub,
        asyncio.TaskGroup() as tg,
    ):  # fmt: skip
        t0 = time.time()
        for seq in range(1, n + 1):
            await slots.acquire()
            tg.create_task(one(pub, seq))  # its publish is sent before the next starts
            await asyncio.sleep(0)
        await asyncio.wait_for(rx.done.wait(), 300)
        return n / (max(rx.times.values()) - t0)


async def durable(
    broker: MosquittoBroker, journal: Journal, n: int, window: int, round_no: int
) -> dict[str, float]:
    cfg = LabConfig(
        node="bench",
        mqtt=MqttConfig(host=broker.host, port=broker.port, publish_window=window),
        journal=JournalConfig(path=journal.path),
    )

    async def ignore(_: aiomqtt.Message) -> None:
        return None

    link = MqttLink(
        cfg, journal, on_command=ignore,
        status_online=lambda: b'{"state": "online"}',
        status_offline=lambda why: b'{"state": "offline"}',
    )  # fmt: skip
    recorder = await RunRecorder.create(cfg, journal, link.notify, "bench", {})
    topic = cfg.topic("runs", recorder.run, "events")
    sent: dict[int, float] = {}
    async with Subscriber(broker, topic, n) as rx, asyncio.TaskGroup() as tg:
        runner = tg.create_task(link.run())
        await link.wait_connected(30)
        t0 = time.time()
        for i in range(n):
            sent[recorder.last_seq + 1] = time.time()
            await recorder.data(_reading(i), Progress(done=i + 1, total=n))
        await asyncio.wait_for(rx.done.wait(), 300)
        elapsed = max(rx.times.values()) - t0
        await link.shutdown(timeout_s=30)
        runner.cancel()
    latencies = sorted((rx.times[s] - sent[s]) * 1000 for s in sent)
    return {
        "rate": n / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "outbox_left": float(await journal.outbox_size()),
        "state_left": float(
            sum(r.topic.endswith("/state") for r in await journal.outbox_after(0, 100))
        ),
        "payload_bytes": float(len((await journal.documents(recorder.run, 2, 2))[0])),
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=3000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/durable rounds")
    parser.add_argument("--window", type=int, default=32, help="MqttConfig.publish_window")
    args = parser.parse_args(argv)
    bare_rates: list[float] = []
    window_rates: list[float] = []
    runs: list[dict[str, float]] = []
    with (
        MosquittoBroker(max_queued_messages=0) as broker,
        tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp,
    ):
        journal = await Journal.open(Path(tmp) / "journal.sqlite3")
        try:
            await bare(broker, 300, 0)  # warm-up
            await windowed(broker, 300, args.window, 0)
            for r in range(1, args.rounds + 1):
                window_rates.append(await windowed(broker, args.docs, args.window, r))
                bare_rates.append(await bare(broker, args.docs, r))
                runs.append(await durable(broker, journal, args.docs, args.window, r))
        finally:
            await journal.close()
    durable_rates = [d["rate"] for d in runs]
    win_med, bare_med = statistics.median(window_rates), statistics.median(bare_rates)
    durable_med = statistics.median(durable_rates)
    ratio = durable_med / win_med
    spread = [d["rate"] / w for w, d in zip(window_rates, runs, strict=True)]
    verdict = "ok" if ratio >= 0.9 else "MISSED"
    print(
        f"pipeline benchmark: {args.docs} messages x {args.rounds} rounds, window {args.window},"
        f" {os.cpu_count()} CPUs, subscriber = mosquitto_sub in its own process"
    )
    for r, (w, b, d) in enumerate(zip(window_rates, bare_rates, runs, strict=True), 1):
        print(
            f"  round {r}: windowed {w:7,.0f} msg/s   sequential {b:7,.0f} msg/s   durable"
            f" {d['rate']:7,.0f} docs/s   p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms"
        )
    print(f"  median bare aiomqtt, {args.window} QoS1 publishes in flight: {win_med:,.0f} msg/s")
    print(f"  median bare aiomqtt, awaiting each publish:      {bare_med:,.0f} msg/s")
    print(f"  median durable journal->outbox->broker->subscriber: {durable_med:,.0f} docs/s")
    print(f"  ratio durable / windowed (medians): {ratio:.2f}x   target >= 0.9x: {verdict}")
    print(f"  ratio durable / sequential (medians): {durable_med / bare_med:.2f}x")
    p50 = statistics.median(d["p50_ms"] for d in runs)
    p99 = statistics.median(d["p99_ms"] for d in runs)
    print(f"  per-round ratios: {min(spread):.2f} .. {max(spread):.2f}")
    print(f"  latency at saturation (producer up to 64 documents ahead): p50 {p50:.2f} ms,", end="")
    print(f" p99 {p99:.2f} ms; paced latency: bench/well_latency.py")
    left = sum(d["outbox_left"] for d in runs)
    if left:
        states = sum(d["state_left"] for d in runs)
        print(
            f"  WARNING: {left:.0f} outbox rows left after shutdown ({states:.0f} of them"
            " retained run states: the recorder's deferred refresh can come after the drain)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

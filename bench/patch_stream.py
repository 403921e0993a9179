"""The patch rig's data path under load: sustained streaming, CPU, sweep-to-summary latency,
bytes on disk.

1. **Ceiling.** The digitizer simulator in its own process streams N channels x 100 kHz in
   real time (time scale 1) for ``--seconds``; this process consumes it the way the record
   step does (the driver's reader task and completeness checks, one-second sweeps appended
   to a spool and fsynced on a worker thread). Zero dropped samples or not, and the
   consumer's CPU against the strongest honest baseline measured in the same run: a
   consumer that reads the same socket and discards the bytes (no frames, no checks, no
   disk).
2. **Through the daemon** at 2 x 20 kHz (current and command): Mosquitto, ``assay-sim
   bench`` and ``assayd`` as processes, a ``record`` step of one-second sweeps back to back
   for ``--seconds``. The daemon's CPU share (of one core, from /proc), the time from a
   sweep's last sample to its summary on an MQTT subscriber (the sweep's ``started_at`` +
   its length, same machine and clock; the started_at is taken just before the sweep is
   asked for, so this errs long), and the bytes on disk per recorded second (spool, NWB)
   against the raw 16-bit size.

    .venv/bin/python bench/patch_stream.py [--seconds 60] [--channels 8,4,2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import aiomqtt
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from acquisition.cli.client import DaemonClient
from acquisition.config import load_config
from acquisition.spool import SpooledSweep, SweepSpool
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, SimBenchProcess, write_lab_config
from drivers.digitizer import DigitizerDriver
from drivers.digitizer.codec import Configure, StartStream, Stop, Upload, encode
from drivers.errors import DataLossError

RATE = 100_000
_SIM = """
import asyncio, sys
from drivers.clock import MonotonicClock
from simulators.digitizer import DigitizerSimulator
from simulators.patch_rig import PatchRig, RigSpec

async def main():
    clock = MonotonicClock()
    rig = PatchRig(RigSpec(cell="model_cell"), clock)
    sim = DigitizerSimulator(rig, clock)
    await sim.start()
    print(sim.address, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of ``pid`` (None: this process), from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Sim:
    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-c", _SIM], stdout=subprocess.PIPE,
                                     env=env, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def _ours(address: str, channels: int, seconds: float, spool_dir: Path) -> dict[str, float]:
    """The record step's way: driver checks, one-second sweeps spooled with fsync."""
    received = lost = 0
    spool = SweepSpool.open(spool_dir / f"bench-{channels}.spool")
    block: list[np.ndarray] = []
    in_block = index = 0
    fsync_s: list[float] = []
    cpu0, t0 = _cpu_s(), time.monotonic()
    async with DigitizerDriver(address, queue_size=512) as dig:
        await dig.configure(RATE, list(range(channels)))
        await dig.upload(np.zeros(RATE))
        try:
            async with contextlib.aclosing(dig.stream()) as stream:
                async for data in stream:
                    received += len(data.samples)
                    block.append(data.samples)
                    in_block += len(data.samples)
                    if in_block >= RATE:
                        index += 1
                        codes = np.concatenate(block)
                        sweep = SpooledSweep(index, {"index": index},
                                             {f"ai{c}": np.ascontiguousarray(codes[:, c])
                                              for c in range(channels)})  # fmt: skip
                        start = time.monotonic()
                        await asyncio.to_thread(spool.append, sweep)
                        fsync_s.append(time.monotonic() - start)
                        block, in_block = [], 0
                    if time.monotonic() - t0 >= seconds:
                        break
        except DataLossError as exc:
            lost = sum(b - a for a, b in exc.lost) or 1
    elapsed = time.monotonic() - t0
    spool.close()
    return {"samples": received, "lost": lost, "elapsed": elapsed,
            "cpu": (_cpu_s() - cpu0) / elapsed,
            "fsync_ms": 1000 * statistics.median(fsync_s) if fsync_s else 0.0}  # fmt: skip


async def _drain(address: str, channels: int, seconds: float,
                 rate: int = RATE) -> dict[str, float]:  # fmt: skip
    """The baseline: the same stream read and thrown away."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(encode(Configure(1, rate, tuple(range(channels)), 0)))
    writer.write(encode(Upload(2, np.zeros(rate, dtype=np.int16))))
    writer.write(encode(StartStream(3, 1)))
    await writer.drain()
    got, cpu0, t0 = 0, _cpu_s(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        got += len(await reader.read(1 << 18))
    elapsed = time.monotonic() - t0
    writer.write(encode(Stop(4)))
    await writer.drain()
    writer.close()
    return {"bytes": got, "elapsed": elapsed, "cpu": (_cpu_s() - cpu0) / elapsed}


def ceiling(seconds: float, channel_counts: list[int], workdir: Path) -> None:
    print(f"1. sustained streaming, {seconds:g} s each, 100 kHz per channel, real time:")
    for channels in channel_counts:
        with _Sim() as address:
            base = asyncio.run(_drain(address, channels, min(seconds, 10.0)))
        with _Sim() as address:
            ours = asyncio.run(_ours(address, channels, seconds, workdir))
        expected = int(ours["elapsed"] * RATE)
        verdict = "zero samples dropped" if ours["lost"] == 0 else f"{ours['lost']} LOST"
        print(f"   {channels} x 100 kHz: {ours['samples'] / ours['elapsed'] / 1e3:.1f} "
              f"kS/s per channel received ({ours['samples']} of ~{expected}), {verdict}; "
              f"consumer CPU {100 * ours['cpu']:.1f} % of a core vs {100 * base['cpu']:.1f} % "
              f"for a socket drain (x{ours['cpu'] / max(base['cpu'], 1e-3):.1f}); spool "
              f"append+fsync of a 1 s sweep p50 {ours['fsync_ms']:.1f} ms")  # fmt: skip
        if ours["lost"] == 0:
            print(f"   ceiling reached: {channels} x 100 kHz sustained "
                  f"({channels * RATE * 2 / 1e6:.1f} MB/s of samples)")
            return
    print("   no configuration sustained without loss")


PROTOCOL = """
name = "bench-record"
[[steps]]
type = "record"
stimulus = "bench"
sweeps = {sweeps}
rate = "20 kHz"
subject = {{ subject_id = "bench-cell", species = "Rattus norvegicus", sex = "U", age = "P21D" }}
[steps.waveform]
shape = "step"
step = "-10 mV"
at = "100 ms"
width = "500 ms"
length = "1 s"
"""


async def _daemon_run(config_path: Path, sweeps: int, daemon_pid: int) -> dict[str, object]:
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
        cpu0, t0 = _cpu_s(daemon_pid), time.monotonic()
        reply = await client.request("run.start", {"protocol": "bench-record",
                                                   "protocol_toml": PROTOCOL.format(
                                                       sweeps=sweeps)})  # fmt: skip
        artifact: dict[str, object] = {}
        async for msg in sub.messages:
            now = datetime.now().astimezone()
            assert isinstance(msg.payload, bytes)
            doc = json.loads(msg.payload)
            if doc.get("run") != reply["run"]:
                continue
            if doc["kind"] == "data" and doc.get("stream") == "sweep":
                r = doc["reading"]
                last = datetime.fromisoformat(r["started_at"]) + timedelta(
                    seconds=r["samples"] / r["sample_rate_hz"])  # fmt: skip
                latencies.append((now - last).total_seconds())
            if doc["kind"] == "artifact":
                artifact = doc
            if doc["kind"] == "stop":
                break
        elapsed = time.monotonic() - t0
        cpu = (_cpu_s(daemon_pid) - cpu0) / elapsed
    return {"latencies": latencies, "cpu": cpu, "artifact": artifact, "run": reply["run"]}


def through_the_daemon(seconds: float, workdir: Path) -> None:
    sweeps = max(5, int(seconds))
    print(f"2. through the daemon: {sweeps} one-second sweeps at 2 x 20 kHz, back to back:")
    with MosquittoBroker() as broker:
        rig = '[simulation.rig]\ncell = "model_cell"\n'
        lab = write_lab_config(workdir / "lab", broker_port=broker.port, time_scale=1.0,
                               kinds=("amplifier", "digitizer"), simulation_extra=rig)
        with SimBenchProcess(lab), DaemonProcess(lab) as daemon:
            assert daemon.proc is not None
            out = asyncio.run(_daemon_run(lab.config_path, sweeps, daemon.proc.pid))
        with _Sim() as address:
            base_cpu = asyncio.run(_drain(address, 2, 10.0, rate=20_000))["cpu"]
    latencies: list[float] = out["latencies"]  # type: ignore[assignment]
    ms = sorted(1000 * x for x in latencies)
    data = workdir / "lab" / "data" / "runs" / str(out["run"])
    spool = (data / "sweeps.spool").stat().st_size
    nwb = sum(p.stat().st_size for p in data.glob("*.nwb"))
    raw = 2 * 20_000 * 2 * sweeps
    cpu: float = out["cpu"]  # type: ignore[assignment]
    print(f"   daemon CPU {100 * cpu:.1f} % of one core (target < 15 %); a "
          f"socket drain of the same stream {100 * base_cpu:.1f} %")
    print(f"   last sample -> summary on a subscriber over {len(ms)} sweeps: p50 "
          f"{statistics.median(ms):.1f} ms, p99 {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.1f}"
          f" ms, max {ms[-1]:.1f} ms")
    print(f"   on disk per recorded second: spool {spool / sweeps / 1e3:.1f} kB, NWB "
          f"{nwb / sweeps / 1e3:.1f} kB, against {raw / sweeps / 1e3:.1f} kB raw 16-bit "
          f"(x{spool / raw:.3f} and x{nwb / raw:.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--channels", default="8,4,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ceiling(args.seconds, [int(c) for c in args.channels.split(",")], Path(tmp))
        through_the_daemon(args.seconds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

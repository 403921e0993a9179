"""Round-trip latency of one harvester command through the serial link and the driver.

Starts the harvester simulator in-process on a real pty and times N exchanges of ``ST?``
and ``ID?`` through :class:`drivers.harvester.HarvesterDriver` (pyserial-asyncio-fast on the
pty slave, checksum checked, reply parsed), plus the raw :class:`drivers.serial_link.SerialLink`
request for comparison. A pty has no baud rate: a real 9600-baud line adds about 1 ms per
10 characters each way (``ST?*38\\r`` out, ~45 characters back: ~50 ms).

    .venv/bin/python bench/serial_latency.py [-n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from drivers.clock import ScaledClock
from drivers.harvester import HarvesterDriver
from drivers.harvester.codec import QueryStatus, encode_command
from simulators.harvester import HarvesterSimSpec, start_harvester_simulator


async def _time(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def _report(name: str, samples: list[float]) -> None:
    q = statistics.quantiles(samples, n=100)
    print(f"{name:<28} n={len(samples):<5} p50={q[49]:.3f} ms  p99={q[98]:.3f} ms")


async def main(n: int) -> None:
    clock = ScaledClock(1.0)
    handle = await start_harvester_simulator(HarvesterSimSpec(), clock, None)
    print(handle.describe())
    try:
        async with HarvesterDriver(handle.address, timeout_s=2.0, clock=clock) as drv:
            link = drv._link  # the raw single-command path, for comparison
            st = encode_command(QueryStatus())
            await _time(min(n, 100), drv.status)  # warm-up
            _report("ST? (link, raw bytes)", await _time(n, lambda: link.request(st)))
            _report("status() (ST?, parsed)", await _time(n, drv.status))
            _report("identify() (ID?, parsed)", await _time(n, drv.identify))
    finally:
        await handle.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="exchanges per measurement")
    asyncio.run(main(parser.parse_args().n))

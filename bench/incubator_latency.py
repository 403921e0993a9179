"""Round-trip latency of one Modbus read through the incubator driver, against its simulator.

Starts the simulator in-process (Modbus TCP and RTU-over-TCP listeners on free ports, a
ScaledClock at x60) and times N single-register reads of the PV (function 3, one request
and one reply) through the driver's link, then the driver's ``readings()`` (three reads:
registers 1-5, 75, 300-302), over both framings; prints p50/p99. Client and server share one
event loop and one process, so this is the software cost of a round trip, not a network's.

    .venv/bin/python bench/incubator_latency.py [-n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections.abc import Awaitable, Callable

from drivers.clock import ScaledClock
from drivers.incubator import IncubatorDriver
from drivers.incubator.registers import Reg
from simulators.incubator import IncubatorSimSpec, start_incubator_simulator


async def _time(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def _report(name: str, samples: list[float]) -> None:
    q = statistics.quantiles(samples, n=100)
    print(f"{name:<36} n={len(samples):<5} p50={q[49]:.3f} ms  p99={q[98]:.3f} ms")


async def main(n: int) -> None:
    clock = ScaledClock(60.0)
    handle = await start_incubator_simulator(IncubatorSimSpec(rtu_port=0), clock, None)
    try:
        for name, address in (("tcp", handle.address), ("rtu/tcp", handle.rtu_address)):
            assert address is not None
            async with IncubatorDriver(address, clock=clock, timeout_s=2.0) as drv:
                await drv.set_temperature(37.0)
                read_pv = functools.partial(drv._link.read, Reg.PV)  # 1 request, 1 reply
                await _time(50, read_pv)  # warm up
                _report(f"read PV, 1 register ({name})", await _time(n, read_pv))
                _report(f"readings(), 3 reads ({name})", await _time(n // 4, drv.readings))
    finally:
        await handle.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="reads per measurement")
    asyncio.run(main(parser.parse_args().n))

"""Round-trip latency of ``*IDN?`` and ``COUN:STAT?`` through the counter driver.

Starts the simulator in-process on a free port and times N queries of each through
:class:`drivers.counter.CounterDriver` (pyvisa-py in a worker thread per call), then prints
p50/p99. ``identify()`` sends ``*IDN?`` + ``SYST:DET?`` and ``status()`` sends ``COUN:STAT?`` +
``SYST:DOOR?`` + ``PLAT:ID?`` in one exchange, so the raw single-command link latency is
reported too.

    .venv/bin/python bench/driver_latency.py [-n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from drivers.counter import CounterDriver
from drivers.counter.codec import Identify, QueryStatus, encode_command
from simulators.counter import CounterSimulator


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
    async with CounterSimulator(time_scale=100, seed=1) as sim:
        sim.load_demo_plate()
        async with CounterDriver(sim.resource, timeout_s=2.0) as drv:
            link = drv._link  # the raw single-command path, for comparison
            idn, stat = encode_command(Identify()), encode_command(QueryStatus())
            await drv.start_count()  # so COUN:STAT? reports a running count
            _report("*IDN? (link)", await _time(n, lambda: link.query(idn)))
            _report("COUN:STAT? (link)", await _time(n, lambda: link.query(stat)))
            _report("identify() (2 commands)", await _time(n, drv.identify))
            _report("status() (3 commands)", await _time(n, drv.status))
            await drv.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="queries per measurement")
    asyncio.run(main(parser.parse_args().n))

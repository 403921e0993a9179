"""Round-trip latency of each instrument driver against its simulator, over the real wire.

``assay-sim bench`` runs in its own process with all four simulators (counter: VISA socket;
incubator: Modbus TCP; harvester and perfusion: ptys), exactly as in the lab config; this
process drives them with the product's drivers and times, for each:

- one command: the smallest exchange the driver offers (counter ``fetch`` = one
  ``COUN:FETC?``; incubator ``identify`` = one Modbus read (PV); harvester ``status`` = one
  ``ST?``; perfusion ``valve_states`` = one ``S?``);
- ``readings()``: what the daemon polls for the instrument's retained state.

    .venv/bin/python bench/instrument_latency.py [--n 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acquisition.config import load_config
from acquisition.instruments import make_driver
from devtools.stack import SimBenchProcess, free_port, write_lab_config
from drivers.clock import MonotonicClock

ONE_COMMAND: dict[str, tuple[str, Callable[[Any], Awaitable[Any]]]] = {
    "counter": ("fetch(0): COUN:FETC?", lambda d: d.fetch(0)),
    "incubator": ("identify(): one Modbus read", lambda d: d.identify()),
    "harvester": ("status(): ST?", lambda d: d.status()),
    "perfusion": ("valve_states(): S?", lambda d: d.valve_states()),
}


async def _time(n: int, call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    for _ in range(20):  # warm up
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(n - 1, int(0.99 * n))]


async def _measure(config_path: Path, n: int) -> list[tuple[str, str, float, float]]:
    config = load_config(config_path)
    rows = []
    for inst in config.instruments:
        driver: Any = make_driver(inst, MonotonicClock())
        await driver.open()
        try:
            if inst.kind == "counter":  # COUN:FETC? needs a count: start a long one
                await driver.configure(count_time_s=3600)
                await driver.start_count()
            what, call = ONE_COMMAND[inst.kind]
            p50, p99 = await _time(n, lambda call=call, driver=driver: call(driver))
            rows.append((inst.kind, what, p50, p99))
            p50, p99 = await _time(n, driver.readings)
            rows.append((inst.kind, "readings()", p50, p99))
        finally:
            if inst.kind == "counter":
                await driver.abort()
            await driver.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000, help="round trips per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = write_lab_config(
            Path(tmp), broker_port=free_port(), time_scale=1.0,
            kinds=("counter", "incubator", "harvester", "perfusion"),
        )  # fmt: skip
        with SimBenchProcess(lab):
            rows = asyncio.run(_measure(lab.config_path, args.n))
    print(f"driver -> simulator round trips ({args.n} each; simulators in their own process)")
    for kind, what, p50, p99 in rows:
        print(f"  {kind:<10} {what:<30} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

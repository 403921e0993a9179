"""``assay-sim``: run instrument simulators at the bench or in end-to-end tests.

::

    assay-sim counter --port 5025 --control-port 5026 --time-scale 60 [--detectors 12] [--seed N]
    assay-sim bench --config lab.toml

Prints one line per simulator saying where it listens, then ``ready``; stops cleanly (exit 0)
on SIGINT or SIGTERM. A bad config prints ``assay-sim: <file>: <field>: <expected>`` and exits
2. Heavy imports happen after argument parsing so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["main"]

PROG = "assay-sim"


@dataclass(frozen=True)
class _CounterSpec:
    instrument_id: str
    host: str
    port: int
    detectors: int
    seed: int
    overhead_s: float
    background_cpm: float


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run instrument simulators.")
    sub = parser.add_subparsers(dest="command", required=True)
    counter = sub.add_parser(
        "counter", help="one microplate scintillation counter, set up by flags (no config file)"
    )
    counter.add_argument("--host", default="127.0.0.1")
    counter.add_argument("--port", type=int, default=5025)
    counter.add_argument("--control-port", type=int, default=5026)
    counter.add_argument("--time-scale", type=float, default=60.0,
                         help="simulated seconds per real second (default 60)")
    counter.add_argument("--detectors", type=int, choices=(1, 2, 6, 12), default=12)
    counter.add_argument("--seed", type=int, default=1)
    counter.add_argument("--overhead-s", type=float, default=2.0)
    counter.add_argument("--background-cpm", type=float, default=25.0)
    bench = sub.add_parser("bench", help="every simulated instrument of a lab config file")
    bench.add_argument(
        "--config", type=Path, default=None,
        help="lab TOML config (default: $ASSAY_CONFIG or config/lab.toml)",
    )  # fmt: skip
    return parser


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "counter":
        if args.time_scale <= 0:
            return _fail("--time-scale: a positive number", 2)
        specs = [_CounterSpec("counter", args.host, args.port, args.detectors, args.seed,
                              args.overhead_s, args.background_cpm)]
        return _run(specs, args.time_scale, args.host, args.control_port)
    from simulators.config import ConfigProblem, load_bench_config

    path = args.config or Path(os.environ.get("ASSAY_CONFIG", "config/lab.toml"))
    config = load_bench_config(path)
    if isinstance(config, ConfigProblem):
        return _fail(str(config), 2)
    _quiet_logs()
    try:
        return asyncio.run(_serve_bench(config, path))
    except BenchProblem as exc:
        return _fail(f"{path}: {exc}", 2)
    except OSError as exc:
        return _fail(f"cannot listen: {exc}", 1)


class BenchProblem(ValueError):
    pass


def _quiet_logs() -> None:
    import structlog

    # The CLI owns stdout (the listening lines and "ready"); logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


async def _serve_bench(config: object, path: Path) -> int:
    from drivers.clock import ScaledClock
    from simulators.bench import BenchError, start_bench
    from simulators.config import BenchConfig

    assert isinstance(config, BenchConfig)
    clock = ScaledClock(config.simulation.time_scale)  # one time base for every simulator
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            bench = await start_bench(config, clock)
        except BenchError as exc:
            raise BenchProblem(str(exc)) from exc
        try:
            for line in bench.describe():
                print(line)
            print("ready", flush=True)
            await stop.wait()
        finally:
            await bench.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _run(specs: list[_CounterSpec], time_scale: float, control_host: str,
         control_port: int) -> int:
    import structlog

    # The CLI owns stdout (the listening lines and "ready"); logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        return asyncio.run(_serve(specs, time_scale, control_host, control_port))
    except OSError as exc:
        return _fail(f"cannot listen: {exc}", 1)


async def _serve(specs: list[_CounterSpec], time_scale: float, control_host: str,
                 control_port: int) -> int:
    from drivers.clock import ScaledClock
    from simulators.control import ControlServer
    from simulators.counter import CounterSimulator
    from simulators.counting import PhysicsConfig

    clock = ScaledClock(time_scale)  # one time base for every simulated instrument
    sims: dict[str, CounterSimulator] = {}
    control = ControlServer(sims)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for spec in specs:
            physics = PhysicsConfig(background_cpm=spec.background_cpm,
                                    overhead_s=spec.overhead_s)
            sim = CounterSimulator(detectors=spec.detectors, clock=clock, seed=spec.seed,
                                   physics=physics)
            sims[spec.instrument_id] = sim
            await sim.start(spec.host, spec.port)
            sim.load_demo_plate(seed=spec.seed)
        control = ControlServer(sims)
        await control.start(control_host, control_port)
        for spec in specs:
            print(f"{spec.instrument_id}  {sims[spec.instrument_id].resource}  "
                  f"(control {control.host}:{control.port})")
        print("ready", flush=True)
        await stop.wait()
    finally:
        await control.stop()
        for sim in sims.values():
            await sim.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


if __name__ == "__main__":
    sys.exit(main())

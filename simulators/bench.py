"""One simulated bench: every simulator of a lab config on its real interface, one world.

All simulators share one clock (simulated time runs ``time_scale`` times faster than real
time) and one :class:`~simulators.world.World`, so what was incubated is what gets harvested
is what gets counted. The control channel (the virtual operator's hands) serves them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drivers.clock import Clock
from simulators.binding import BindingTruth
from simulators.config import (
    BenchConfig,
    InstrumentEntry,
    parse_modbus_tcp_address,
    parse_socket_address,
)
from simulators.control import ControlServer
from simulators.counter import CounterSimulator
from simulators.counting import PhysicsConfig
from simulators.world import World

__all__ = ["BenchError", "SimBench", "start_bench"]


class BenchError(ValueError):
    """A setting the bench cannot use; ``str()`` is ``<field>: <what was expected>``."""


class _Handle(Protocol):
    @property
    def address(self) -> str: ...

    def describe(self) -> str: ...

    async def stop(self) -> None: ...


@dataclass
class _CounterHandle:
    simulator: CounterSimulator
    instrument_id: str

    @property
    def address(self) -> str:
        return self.simulator.resource

    def describe(self) -> str:
        return f"{self.instrument_id}  {self.address}"

    async def stop(self) -> None:
        await self.simulator.stop()


@dataclass
class SimBench:
    world: World
    control: ControlServer
    handles: dict[str, _Handle] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """One line per instrument: id, kind, the address a daemon config names; details."""
        lines = [
            f"{iid:<10} {self.kinds[iid]:<10} {handle.address}"
            for iid, handle in self.handles.items()
        ]
        lines.append(f"{'control':<10} {'operator':<10} {self.control.host}:{self.control.port}")
        return lines

    async def stop(self) -> None:
        await self.control.stop()
        for handle in self.handles.values():
            await handle.stop()
        await self.world.stop()


def _spec(spec_type: type[Any], section: str, settings: Mapping[str, Any], **fixed: Any) -> Any:
    """Build a simulator spec from ``[simulation.<section>]``; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(spec_type)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise BenchError(f"simulation.{section}.{unknown[0]}: no such setting")
    return spec_type(**{**settings, **fixed})


async def start_bench(config: BenchConfig, clock: Clock) -> SimBench:
    """Start every simulator of ``config``; on failure, stop what was started."""
    sim = config.simulation
    world = World(
        BindingTruth(), clock, seed=int(sim.world.get("seed", 1)),
        tick_s=float(sim.world.get("tick_s", 10.0)),
    )  # fmt: skip
    started: dict[str, _Handle] = {}
    simulators: dict[str, object] = {}
    await world.start()
    try:
        for inst in config.instruments:
            handle, simulator = await _start_one(inst, config, clock, world)
            started[inst.id] = handle
            simulators[inst.id] = simulator
        control = ControlServer(simulators, world)
        await control.start(sim.control_host, sim.control_port)
    except BaseException:
        for handle in started.values():
            await handle.stop()
        await world.stop()
        raise
    return SimBench(world, control, started, {i.id: i.kind for i in config.instruments})


async def _start_one(
    inst: InstrumentEntry, config: BenchConfig, clock: Clock, world: World
) -> tuple[_Handle, object]:
    kind, instrument_id, address = inst.kind, inst.id, inst.address
    sim = config.simulation
    if kind == "counter":
        host, port = parse_socket_address(address) or ("127.0.0.1", 0)
        c = sim.counter
        counter = CounterSimulator(
            detectors=c.detectors,
            clock=clock,
            seed=c.seed,
            physics=PhysicsConfig(background_cpm=c.background_cpm, overhead_s=c.overhead_s),
            world=world,
            instrument_id=instrument_id,
        )
        await counter.start(host, port)
        counter.load_demo_plate(seed=c.seed)  # until a filter mat is placed in it
        return _CounterHandle(counter, instrument_id), counter
    if kind == "incubator":
        from simulators.incubator import IncubatorSimSpec, start_incubator_simulator

        host, port = parse_modbus_tcp_address(address) or ("127.0.0.1", 0)
        spec = _spec(IncubatorSimSpec, "incubator", sim.incubator,
                     instrument_id=instrument_id, host=host, port=port)  # fmt: skip
        inc = await start_incubator_simulator(spec, clock, world)
        return inc, inc.simulator
    if kind == "harvester":
        from simulators.harvester import HarvesterSimSpec, start_harvester_simulator

        spec = _spec(HarvesterSimSpec, "harvester", sim.harvester,
                     instrument_id=instrument_id, link_path=Path(address))  # fmt: skip
        har = await start_harvester_simulator(spec, clock, world)
        return har, har.simulator
    if kind == "perfusion":
        from simulators.perfusion import PerfusionSimSpec, start_perfusion_simulator

        spec = _spec(PerfusionSimSpec, "perfusion", sim.perfusion,
                     instrument_id=instrument_id, link_path=Path(address))  # fmt: skip
        per = await start_perfusion_simulator(spec, clock, world)
        return per, per.simulator
    raise BenchError(f"instruments: no simulator for kind '{kind}'")

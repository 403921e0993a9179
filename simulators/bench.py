"""One simulated bench: every simulator of a lab config on its real interface, one world.

All simulators share one clock (simulated time runs ``time_scale`` times faster than real
time) and one :class:`~simulators.world.World`, so what was incubated is what gets harvested
is what gets counted. The control channel (the virtual operator's hands) serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.clock import Clock
from simulators.binding import BindingTruth
from simulators.config import BenchConfig, InstrumentEntry
from simulators.control import ControlServer
from simulators.kinds import BenchError, SimHandle, sim_kind
from simulators.world import World

__all__ = ["BenchError", "SimBench", "start_bench"]


@dataclass
class SimBench:
    world: World
    control: ControlServer
    handles: dict[str, SimHandle] = field(default_factory=dict)
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


async def start_bench(config: BenchConfig, clock: Clock) -> SimBench:
    """Start every simulator of ``config``; on failure, stop what was started."""
    sim = config.simulation
    world = World(
        BindingTruth(), clock, seed=int(sim.world.get("seed", 1)),
        tick_s=float(sim.world.get("tick_s", 10.0)),
    )  # fmt: skip
    started: dict[str, SimHandle] = {}
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
) -> tuple[SimHandle, object]:
    entry = sim_kind(inst.kind)
    if entry is None:
        raise BenchError(f"instruments: no simulator for kind '{inst.kind}'")
    return await entry.start(inst, config, clock, world)

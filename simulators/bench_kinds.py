"""The shipped simulators as bench kinds: counter (VISA socket), incubator (Modbus TCP),
harvester and perfusion (a pty each), the patch rig's amplifier and digitizer (TCP each,
one shared :class:`~simulators.patch_rig.PatchRig` from ``[simulation.rig]``). Importing
this module registers them (:mod:`simulators.kinds`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.addresses import (
    AddressError,
    parse_modbus_address,
    parse_tcp_address,
    parse_visa_socket,
)  # fmt: skip
from drivers.clock import Clock
from simulators.config import (
    BenchConfig,
    InstrumentEntry,
    link_path_problem,
    parse_modbus_tcp_address,
    parse_socket_address,
)
from simulators.counter import CounterSimulator
from simulators.counting import PhysicsConfig
from simulators.kinds import BenchError, SimHandle, SimKind, register_sim_kind, spec_from
from simulators.patch_rig import PatchRig, RigSpec
from simulators.world import World

__all__: list[str] = []


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


def _visa_problem(address: str) -> str | None:
    try:
        parse_visa_socket(address, allow_zero=True)
    except AddressError as exc:
        return str(exc)
    return None


def _modbus_problem(address: str) -> str | None:
    if not address.startswith("modbus-tcp://"):
        return "modbus-tcp://host:port (the simulator serves Modbus TCP)"
    try:
        parse_modbus_address(address, allow_zero=True)
    except AddressError as exc:
        return str(exc)
    return None


def _pty_problem(address: str) -> str | None:
    return link_path_problem(Path(address))


async def _counter(inst: InstrumentEntry, config: BenchConfig, clock: Clock,
                   world: World) -> tuple[SimHandle, object]:  # fmt: skip
    host, port = parse_socket_address(inst.address) or ("127.0.0.1", 0)
    c = config.simulation.counter
    counter = CounterSimulator(
        detectors=c.detectors, clock=clock, seed=c.seed,
        physics=PhysicsConfig(background_cpm=c.background_cpm, overhead_s=c.overhead_s),
        world=world, instrument_id=inst.id,
    )  # fmt: skip
    await counter.start(host, port)
    counter.load_demo_plate(seed=c.seed)  # until a filter mat is placed in it
    return _CounterHandle(counter, inst.id), counter


async def _incubator(inst: InstrumentEntry, config: BenchConfig, clock: Clock,
                     world: World) -> tuple[SimHandle, object]:  # fmt: skip
    from simulators.incubator import IncubatorSimSpec, start_incubator_simulator

    host, port = parse_modbus_tcp_address(inst.address) or ("127.0.0.1", 0)
    spec = spec_from(IncubatorSimSpec, "incubator", config.simulation.incubator,
                     instrument_id=inst.id, host=host, port=port)  # fmt: skip
    inc: Any = await start_incubator_simulator(spec, clock, world)
    return inc, inc.simulator


async def _on_pty(
    spec_type: type[Any], start: Any, section: str, inst: InstrumentEntry, *,
    config: BenchConfig, clock: Clock, world: World,
) -> tuple[SimHandle, object]:  # fmt: skip
    """A simulator on a pty (the harvester, the perfusion) from ``[simulation.<section>]``."""
    spec = spec_from(spec_type, section, getattr(config.simulation, section),
                     instrument_id=inst.id, link_path=Path(inst.address))  # fmt: skip
    started: Any = await start(spec, clock, world)
    return started, started.simulator


async def _harvester(inst: InstrumentEntry, config: BenchConfig, clock: Clock,
                     world: World) -> tuple[SimHandle, object]:  # fmt: skip
    from simulators.harvester import HarvesterSimSpec, start_harvester_simulator

    return await _on_pty(HarvesterSimSpec, start_harvester_simulator, "harvester", inst,
                         config=config, clock=clock, world=world)  # fmt: skip


async def _perfusion(inst: InstrumentEntry, config: BenchConfig, clock: Clock,
                     world: World) -> tuple[SimHandle, object]:  # fmt: skip
    from simulators.perfusion import PerfusionSimSpec, start_perfusion_simulator

    return await _on_pty(PerfusionSimSpec, start_perfusion_simulator, "perfusion", inst,
                         config=config, clock=clock, world=world)  # fmt: skip


def _tcp_problem(address: str) -> str | None:
    try:
        parse_tcp_address(address, allow_zero=True)
    except AddressError as exc:
        return str(exc)
    return None


@dataclass
class _TcpHandle:
    simulator: Any
    instrument_id: str
    what: str

    @property
    def address(self) -> str:
        return str(self.simulator.address)

    def describe(self) -> str:
        return f"{self.instrument_id}  {self.address}  ({self.what})"

    async def stop(self) -> None:
        await self.simulator.stop()


def _rig(config: BenchConfig, clock: Clock, world: World) -> PatchRig:
    """The bench's one patch rig, made by whichever of its instruments starts first."""

    def make() -> PatchRig:
        try:
            spec = spec_from(RigSpec, "rig", config.simulation.rig)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, BenchError):
                raise
            raise BenchError(f"simulation.rig.{exc}") from None
        return PatchRig(spec, clock, bath=lambda: world.bath_composition(spec.perfusion))

    rig: PatchRig = world.shared("patch_rig", make)
    return rig


async def _amplifier(inst: InstrumentEntry, config: BenchConfig, clock: Clock,
                     world: World) -> tuple[SimHandle, object]:  # fmt: skip
    from simulators.amplifier import AmplifierSimulator

    host, port = parse_tcp_address(inst.address, allow_zero=True)
    sim = AmplifierSimulator(_rig(config, clock, world), clock, instrument_id=inst.id)
    await sim.start(host, port)
    return _TcpHandle(sim, inst.id, "MultiClamp 700B commands, tagged lines"), sim


async def _digitizer(inst: InstrumentEntry, config: BenchConfig, clock: Clock,
                     world: World) -> tuple[SimHandle, object]:  # fmt: skip
    from simulators.digitizer import DigitizerSimulator

    host, port = parse_tcp_address(inst.address, allow_zero=True)
    sim = DigitizerSimulator(_rig(config, clock, world), clock, instrument_id=inst.id)
    await sim.start(host, port)
    return _TcpHandle(sim, inst.id, "16-bit digitizer, binary frames"), sim


register_sim_kind(SimKind("counter", _visa_problem, _counter))
register_sim_kind(SimKind("incubator", _modbus_problem, _incubator))
register_sim_kind(SimKind("harvester", _pty_problem, _harvester))
register_sim_kind(SimKind("perfusion", _pty_problem, _perfusion))
register_sim_kind(SimKind("amplifier", _tcp_problem, _amplifier))
register_sim_kind(SimKind("digitizer", _tcp_problem, _digitizer))

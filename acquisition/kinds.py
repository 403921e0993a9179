"""The instrument-kind registry: what the daemon knows of a kind, declared once.

One entry per kind: its config model (a ``[[instruments]]`` table with ``kind = "<name>"``),
its driver factory and the role its drivers play (:mod:`drivers.roles`, what steps depend
on). The config accepts exactly the registered kinds; the daemon makes each configured
instrument's driver through its entry; steps ask for a role. A kind of one's own is one
driver package, one simulator (registered on the simulators' side,
:mod:`simulators.kinds`) and one :func:`register_kind` call in a module the lab config's
``plugins`` loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from acquisition.config import (
    AmplifierConfig,
    CounterConfig,
    DigitizerConfig,
    HarvesterConfig,
    IncubatorConfig,
    InstrumentSettings,
    PerfusionConfig,
    accept_kind,
    forget_kind,
)
from drivers.roles import Amplifier, Counter, Digitizer, Harvester, Incubator, Perfusion

if TYPE_CHECKING:
    from drivers.base import Instrument
    from drivers.clock import Clock

__all__ = [
    "InstrumentKind", "instrument_kind", "instrument_kinds", "register_kind", "restore_kinds",
    "role_of",
]


@dataclass(frozen=True)
class InstrumentKind:
    name: str
    config: type[InstrumentSettings]
    """Its ``[[instruments]]`` table; ``kind`` must be ``Literal["<name>"]``."""
    make_driver: Callable[[Any, Clock], Instrument]
    """The driver for one configured instrument (its config, the daemon's clock)."""
    role: type
    """The role protocol its drivers satisfy (drivers.roles), what steps ask for."""
    description: str = ""
    plays: str = ""
    """The role's name, as step types name it in their ``roles`` ("counter"); empty: the
    kind's own name. A second vendor's counter, kind ``topcount``, plays ``counter``."""

    @property
    def role_name(self) -> str:
        return self.plays or self.name


_KINDS: dict[str, InstrumentKind] = {}


def register_kind(entry: InstrumentKind) -> InstrumentKind:
    """Add (or replace) a kind; the config accepts it from the next load on."""
    if entry.config.model_fields["kind"].annotation is str:
        raise TypeError(f"kind {entry.name}: its config's kind must be Literal[{entry.name!r}]")
    _KINDS[entry.name] = entry
    accept_kind(entry.name, entry.config)
    return entry


def instrument_kinds() -> Mapping[str, InstrumentKind]:
    return _KINDS


def restore_kinds(saved: Mapping[str, InstrumentKind]) -> None:
    """Put the registry (and what the config accepts) back as ``saved``
    (``dict(instrument_kinds())`` taken before): for tests that register kinds."""
    for name in set(_KINDS) - set(saved):
        del _KINDS[name]
        forget_kind(name)
    for entry in saved.values():
        register_kind(entry)


def instrument_kind(name: str) -> InstrumentKind:
    """KeyError for a kind nobody registered (the config refuses it before this)."""
    return _KINDS[name]


def _counter(cfg: CounterConfig, clock: Clock) -> Instrument:
    from drivers.counter import CounterDriver

    return CounterDriver(cfg.address, instrument_id=cfg.id, timeout_s=cfg.timeout_s,
                         clock=clock, poll_interval_s=cfg.poll_interval_s)  # fmt: skip


def _incubator(cfg: IncubatorConfig, clock: Clock) -> Instrument:
    from drivers.incubator import IncubatorDriver

    return IncubatorDriver(cfg.address, instrument_id=cfg.id, device_id=cfg.device_id,
                           decimals=cfg.decimals, timeout_s=cfg.timeout_s, clock=clock)  # fmt: skip


def _harvester(cfg: HarvesterConfig, clock: Clock) -> Instrument:
    from drivers.harvester import HarvesterDriver

    return HarvesterDriver(cfg.address, instrument_id=cfg.id, timeout_s=cfg.timeout_s,
                           clock=clock)  # fmt: skip


def _perfusion(cfg: PerfusionConfig, clock: Clock) -> Instrument:
    from drivers.perfusion import PerfusionDriver

    return PerfusionDriver(cfg.address, instrument_id=cfg.id,
                           device_address=cfg.device_address, timeout_s=cfg.timeout_s,
                           clock=clock)  # fmt: skip


def _amplifier(cfg: AmplifierConfig, clock: Clock) -> Instrument:
    from drivers.amplifier import AmplifierDriver

    return AmplifierDriver(cfg.address, instrument_id=cfg.id, channel=cfg.channel,
                           timeout_s=cfg.timeout_s, clock=clock)  # fmt: skip


def _digitizer(cfg: DigitizerConfig, clock: Clock) -> Instrument:
    from drivers.digitizer import DigitizerDriver

    del clock  # its waits are the wire's (real time)
    return DigitizerDriver(cfg.address, instrument_id=cfg.id, timeout_s=cfg.timeout_s,
                           queue_size=cfg.queue_frames)  # fmt: skip


register_kind(InstrumentKind("counter", CounterConfig, _counter, Counter,
                             "microplate scintillation counter (VISA socket)"))  # fmt: skip
register_kind(InstrumentKind("incubator", IncubatorConfig, _incubator, Incubator,
                             "incubator with shaker (Eurotherm 3200 map, Modbus)"))  # fmt: skip
register_kind(InstrumentKind("harvester", HarvesterConfig, _harvester, Harvester,
                             "cell harvester (RS-232)"))  # fmt: skip
register_kind(InstrumentKind("perfusion", PerfusionConfig, _perfusion, Perfusion,
                             "perfusion valve controller (ValveLink8, RS-232)"))  # fmt: skip
register_kind(InstrumentKind("amplifier", AmplifierConfig, _amplifier, Amplifier,
                             "patch-clamp amplifier (MultiClamp 700B commands, TCP)"))  # fmt: skip
register_kind(InstrumentKind("digitizer", DigitizerConfig, _digitizer, Digitizer,
                             "16-bit streaming digitizer (binary frames, TCP)"))  # fmt: skip


def role_of(kind: str) -> str:
    """The role an instrument of ``kind`` plays for the steps (its own name if unknown)."""
    entry = _KINDS.get(kind)
    return entry.role_name if entry is not None else kind

"""The part of the lab TOML config the bench simulator needs, read with our own small models
(simulators may not import acquisition). Unknown fields are ignored.

A problem is returned, not raised, as a :class:`ConfigProblem` (file, field, what was
expected) so the CLI can print one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.addresses import AddressError, check_host, parse_modbus_address, parse_visa_socket
from drivers.toml_file import TomlFileError, read_toml

__all__ = [
    "BenchConfig",
    "ConfigProblem",
    "CounterSimSettings",
    "InstrumentEntry",
    "SimulationSettings",
    "load_bench_config",
    "parse_modbus_tcp_address",
    "parse_socket_address",
]



class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CounterSimSettings(_Model):
    detectors: Literal[1, 2, 6, 12] = 12
    overhead_s: float = Field(2.0, ge=0)
    background_cpm: float = Field(25.0, ge=0)
    seed: int = 1


class SimulationSettings(_Model):
    time_scale: float = Field(60.0, gt=0)
    control_host: str = "127.0.0.1"
    control_port: int = Field(5026, ge=0, le=65535)
    counter: CounterSimSettings = CounterSimSettings()
    # Knobs of the other simulators, passed to their spec dataclasses by name.
    incubator: dict[str, Any] = Field(default_factory=dict)
    harvester: dict[str, Any] = Field(default_factory=dict)
    perfusion: dict[str, Any] = Field(default_factory=dict)
    rig: dict[str, Any] = Field(default_factory=dict)  # the patch rig (simulators.patch_rig)
    world: dict[str, Any] = Field(default_factory=dict)


class InstrumentEntry(_Model):
    id: str
    kind: str
    address: str


class BenchConfig(_Model):
    simulation: SimulationSettings = SimulationSettings()
    instruments: tuple[InstrumentEntry, ...] = ()


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    field: str
    expected: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.expected}"


def parse_socket_address(address: str) -> tuple[str, int] | None:
    """``TCPIP::host::port::SOCKET`` -> ``(host, port)``; None if not that form.
    Port 0 (any free port, reported at startup) is accepted for tests."""
    try:
        return parse_visa_socket(address, allow_zero=True)
    except AddressError:
        return None


def parse_modbus_tcp_address(address: str) -> tuple[str, int] | None:
    """``modbus-tcp://host:port`` -> ``(host, port)``; None if not that form."""
    if not address.startswith("modbus-tcp://"):
        return None
    try:
        return parse_modbus_address(address, allow_zero=True)
    except AddressError:
        return None


def load_bench_config(path: Path) -> BenchConfig | ConfigProblem:
    """The bench part of the lab config at ``path``, or the first problem with it."""
    source = str(path)
    try:
        data = read_toml(path)
    except TomlFileError as exc:
        return ConfigProblem(source, exc.field, exc.expected)
    try:
        config = BenchConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        return ConfigProblem(source, _where(first["loc"]), first["msg"])
    try:
        check_host(config.simulation.control_host)
    except AddressError as exc:
        return ConfigProblem(source, "simulation.control_host", str(exc))
    for i, inst in enumerate(config.instruments):
        expected = _address_problem(inst)
        if expected is not None:
            return ConfigProblem(source, f"instruments[{i}].address", expected)
    return config


def _where(loc: tuple[int | str, ...]) -> str:
    """``('instruments', 0, 'id')`` -> ``instruments[0].id``, as the daemon names fields."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _address_problem(inst: InstrumentEntry) -> str | None:
    """What the address of ``inst`` should have been, or None if the bench can serve it."""
    from simulators.kinds import sim_kind

    entry = sim_kind(inst.kind)
    if entry is None:
        return f"an instrument the bench simulates (no simulator for kind {inst.kind!r})"
    return entry.address_problem(inst.address)


def link_path_problem(link: Path) -> str | None:
    """The simulator makes ``link`` a symlink to its pty, creating missing directories; it
    must not replace a real file, and what exists of its parents must be directories."""
    form = "a path where the simulator links its pty, e.g. /tmp/assay-sim/harvester"
    if not link.is_absolute():
        return form
    if link.exists() and not link.is_symlink():
        return f"{form} ({link} exists and is not a symbolic link)"
    parent = link.parent
    while not parent.exists():
        if parent.is_symlink():
            return f"{form} ({parent} is a broken symbolic link)"
        parent = parent.parent
    if not parent.is_dir():
        return f"{form} ({parent} is not a directory)"
    return None

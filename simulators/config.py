"""The part of the lab TOML config the bench simulator needs, read with our own small models
(simulators may not import acquisition). Unknown fields are ignored.

A problem is returned, not raised, as a :class:`ConfigProblem` (file, field, what was
expected) so the CLI can print one line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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

_SOCKET = re.compile(r"TCPIP\d*::([A-Za-z0-9.\-]+)::(\d{1,5})::SOCKET", re.IGNORECASE)
_MODBUS_TCP = re.compile(r"modbus-tcp://([A-Za-z0-9.\-]+):(\d{1,5})")


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
    match = _SOCKET.fullmatch(address.strip())
    if match is None or int(match[2]) > 65535:
        return None
    return match[1], int(match[2])


def parse_modbus_tcp_address(address: str) -> tuple[str, int] | None:
    """``modbus-tcp://host:port`` -> ``(host, port)``; None if not that form."""
    match = _MODBUS_TCP.fullmatch(address.strip())
    if match is None or int(match[2]) > 65535:
        return None
    return match[1], int(match[2])


def load_bench_config(path: Path) -> BenchConfig | ConfigProblem:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return ConfigProblem(str(path), "file", f"a readable TOML file ({exc.strerror})")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return ConfigProblem(str(path), "syntax", f"valid TOML ({exc})")
    try:
        config = BenchConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        return ConfigProblem(str(path), where, first["msg"])
    for i, inst in enumerate(config.instruments):
        if inst.kind == "counter" and parse_socket_address(inst.address) is None:
            return ConfigProblem(
                str(path), f"instruments.{i}.address", "a VISA socket address like "
                "TCPIP::127.0.0.1::5025::SOCKET",
            )
        if inst.kind == "incubator" and parse_modbus_tcp_address(inst.address) is None:
            return ConfigProblem(
                str(path), f"instruments.{i}.address",
                "modbus-tcp://host:port (the simulator serves Modbus TCP)",
            )
        if inst.kind in ("harvester", "perfusion") and not inst.address.startswith("/"):
            return ConfigProblem(
                str(path), f"instruments.{i}.address",
                "a path where the simulator links its pty, e.g. /tmp/assay-sim/harvester",
            )
    return config

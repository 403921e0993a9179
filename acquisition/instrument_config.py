"""The ``[[instruments]]`` tables: what every instrument has, and each shipped kind's model.

The config accepts exactly the kinds registered here or by :func:`accept_kind` (what
:func:`acquisition.kinds.register_kind` calls for a plug-in's kind); :func:`accepted_kinds`
is what the loader builds its discriminated union from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.addresses import (
    AddressError,
    parse_modbus_address,
    parse_socket_url,
    parse_tcp_address,
    parse_visa_socket,
)

__all__ = [
    "AmplifierConfig", "CounterConfig", "DigitizerConfig", "HarvesterConfig",
    "IncubatorConfig", "InstrumentConfig", "InstrumentSettings", "PerfusionConfig",
    "accept_kind", "accepted_kinds", "checked_address", "forget_kind",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def checked_address(check: Callable[[str], object], value: str) -> str:
    """Run an address check; its AddressError becomes the ValueError pydantic reports."""
    try:
        check(value)
    except AddressError as exc:
        raise ValueError(str(exc)) from None
    return value


class InstrumentSettings(_Strict):
    """What every ``[[instruments]]`` table has; a kind's config model extends it."""

    kind: str  # each kind's model narrows it to Literal["<its name>"]

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    address: str
    timeout_s: float = Field(3.0, gt=0, le=120)
    status_interval_s: float = Field(2.0, gt=0, le=3600)


class CounterConfig(InstrumentSettings):
    """A microplate scintillation counter reached through VISA."""

    kind: Literal["counter"]
    address: str = Field(description="VISA resource, e.g. TCPIP::127.0.0.1::5025::SOCKET")
    poll_interval_s: float = Field(0.25, gt=0, le=60)

    @field_validator("address")
    @classmethod
    def _visa_socket(cls, v: str) -> str:
        checked_address(parse_visa_socket, v)
        return v


class IncubatorConfig(InstrumentSettings):
    """An incubator / temperature controller with shaker (Eurotherm 3200 map) over Modbus."""

    kind: Literal["incubator"]
    address: str = Field(
        description="modbus-tcp://host:port, or modbus-rtu://<serial device or socket:// URL>"
    )
    device_id: int = Field(1, ge=1, le=247, description="Modbus unit id")
    decimals: int = Field(1, ge=0, le=3, description="decimal places of scaled registers")
    idle_setpoint_c: float = Field(
        25.0, ge=4, le=60, description="where a run leaves the setpoint when it ends or aborts"
    )

    @field_validator("address")
    @classmethod
    def _modbus(cls, v: str) -> str:
        checked_address(parse_modbus_address, v)
        return v


class _SerialInstrument(InstrumentSettings):
    address: str = Field(
        description="serial device (/dev/ttyUSB0, a pty path or a link to it) or socket://host:port"
    )

    @field_validator("address")
    @classmethod
    def _serial(cls, v: str) -> str:
        if v.startswith("socket://"):
            checked_address(parse_socket_url, v)
        elif not v.startswith("/"):
            raise ValueError("a serial device path like /dev/ttyUSB0, or socket://host:port")
        return v


class HarvesterConfig(_SerialInstrument):
    """A cell harvester (Brandel / FilterMate-style) over RS-232."""

    kind: Literal["harvester"]
    buffer_capacity_ml: float = Field(
        4000.0, gt=0, le=100_000, description="wash-buffer reservoir volume (mL)"
    )
    waste_capacity_ml: float = Field(
        2000.0, gt=0, le=100_000, description="waste-trap volume (mL)"
    )


class PerfusionConfig(_SerialInstrument):
    """A perfusion valve controller (AutoMate ValveLink8 ASCII) over RS-232."""

    kind: Literal["perfusion"]
    device_address: int = Field(0, ge=0, le=9, description="ValveLink8 address switch")
    # The rig's bath, as measured on it (a dye switch): what a perfuse step waits for.
    flow_ul_per_s: float = Field(50.0, gt=0, le=10_000, description="perfusion flow rate")
    dead_volume_ul: float = Field(
        250.0, ge=0, le=100_000, description="line volume from the valves to the bath"
    )
    exchange_tau_s: float = Field(
        10.0, gt=0, le=3600, description="the bath's exchange time constant"
    )
    control_valve: int = Field(
        1, ge=1, le=8, description="the control solution: where an abort leaves it"
    )


class _TcpInstrument(InstrumentSettings):
    address: str = Field(description="tcp://host:port")

    @field_validator("address")
    @classmethod
    def _tcp(cls, v: str) -> str:
        return checked_address(parse_tcp_address, v)


class AmplifierConfig(_TcpInstrument):
    """A MultiClamp 700B-style amplifier behind its Commander's TCP bridge."""

    kind: Literal["amplifier"]
    address: str = Field(description="the Commander bridge, tcp://host:port")
    channel: int = Field(1, ge=1, le=2, description="the headstage this rig records from")
    safe_holding_mv: float = Field(
        -70.0, ge=-200, le=200, description="where an abort leaves the cell (voltage clamp)"
    )


class DigitizerConfig(_TcpInstrument):
    """A 16-bit +-10 V digitizer streaming over TCP."""

    kind: Literal["digitizer"]
    address: str = Field(description="tcp://host:port")
    current_input: int = Field(0, ge=0, le=15, description="the amplifier's primary output")
    command_input: int | None = Field(
        1, ge=0, le=15, description="the amplifier's secondary (command potential); none: omit"
    )
    command_output: int = Field(0, ge=0, le=15, description="drives the amplifier's command")
    queue_frames: int = Field(512, ge=8, le=65536, description="the host's data buffer")


InstrumentConfig = Annotated[
    CounterConfig | IncubatorConfig | HarvesterConfig | PerfusionConfig | AmplifierConfig
    | DigitizerConfig,
    Field(discriminator="kind"),
]
# Every kind the config accepts, by name: the shipped ones, and those a plug-in registers
# (acquisition.kinds.register_kind calls accept_kind).
_ACCEPTED: dict[str, type[InstrumentSettings]] = {
    "counter": CounterConfig, "incubator": IncubatorConfig, "harvester": HarvesterConfig,
    "perfusion": PerfusionConfig, "amplifier": AmplifierConfig, "digitizer": DigitizerConfig,
}  # fmt: skip


def accept_kind(name: str, model: type[InstrumentSettings]) -> None:
    """Let ``[[instruments]]`` tables of ``kind = name`` in: validated by ``model``."""
    _ACCEPTED[name] = model


def forget_kind(name: str) -> None:
    _ACCEPTED.pop(name, None)



def accepted_kinds() -> Mapping[str, type[InstrumentSettings]]:
    return _ACCEPTED


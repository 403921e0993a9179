"""The incubator's Modbus register map as data, and pure encoding of register values.

The temperature controller follows the Eurotherm 3200 map (HA028651, "Parameter Modbus
Addresses"); the plate shaker sits on the same Modbus device at registers of our own
(300-302). Every register is a 16-bit holding register; analogue values are scaled integers
(``word = round(value * 10**decimals)``, two's complement, ``decimals`` configured in the
controller). The controller also mirrors each scaled parameter as an IEEE-754 float in two
registers at ``0x8000 + 2 * address`` (high word first), at full resolution.

No I/O here: decoders turn words into values and raise only
:class:`~drivers.errors.ProtocolError` for a word that cannot mean anything (a shaker switch
holding 7, a setpoint word that is the "no value" marker), so they can be fuzzed. The full
table with byte-level examples is ``docs/protocols/incubator.md``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Final

from drivers.errors import ProtocolError

__all__ = [
    "FLOAT_BASE",
    "MAX_DECIMALS",
    "NO_VALUE",
    "REGISTERS",
    "Access",
    "Reg",
    "Register",
    "Scaling",
    "StatusBits",
    "decode_float",
    "decode_scaled",
    "decode_status",
    "decode_switch",
    "decode_unsigned",
    "encode_float",
    "encode_scaled",
    "encode_status",
    "float_address",
    "resolution",
]

FLOAT_BASE: Final = 0x8000
"""Start of the float mirror: parameter ``a`` as a float is at ``FLOAT_BASE + 2 * a``."""
NO_VALUE: Final = 0x8000
"""The word a scaled register holds when it has no valid value (e.g. PV on sensor break)."""
MAX_DECIMALS: Final = 3
_SCALE: Final = (1, 10, 100, 1000)


class Reg:
    """Register addresses as they go on the wire (Eurotherm lists PDU addresses, no offset)."""

    PV: Final = 1  # process value (chamber temperature)
    TARGET_SP: Final = 2  # target setpoint (the active one of SP1/SP2); EEPROM
    MANUAL_OP: Final = 3  # manual output value, %
    WORKING_OP: Final = 4  # working output, % (read-only)
    WORKING_SP: Final = 5  # working setpoint (ramping towards the target; read-only)
    SP1: Final = 24  # setpoint 1; EEPROM
    SP2: Final = 25  # setpoint 2; EEPROM
    REMOTE_SP: Final = 26  # remote (comms) setpoint; RAM, meant for frequent writes
    OUTPUT_HIGH: Final = 30  # output high limit, %
    OUTPUT_LOW: Final = 31  # output low limit, %
    SP_RATE: Final = 35  # setpoint rate limit, degC per minute; 0 = off
    STATUS: Final = 75  # instrument status bitmap (read-only)
    LOOP_BREAK_TIME: Final = 83  # loop-break time, s; 0 = off
    SHAKER_ON: Final = 300  # ours: shaker 0 = off, 1 = on
    SHAKER_RPM_SP: Final = 301  # ours: shaker speed setpoint, rpm
    SHAKER_RPM: Final = 302  # ours: shaker actual speed, rpm (read-only)


class Scaling(Enum):
    SCALED = "scaled"  # signed, divided by 10**decimals
    UNSIGNED = "unsigned"  # plain 0..65535
    BITMAP = "bitmap"  # 16 flags
    SWITCH = "switch"  # 0 or 1


class Access(Enum):
    READ = "r"
    READ_WRITE = "rw"


@dataclass(frozen=True)
class Register:
    address: int
    name: str
    unit: str
    scaling: Scaling
    access: Access
    eeprom: bool = False
    """Stored in non-volatile memory rated for ~100,000 writes: never rewrite unchanged."""

    @property
    def writable(self) -> bool:
        return self.access is Access.READ_WRITE

    @property
    def float_mirrored(self) -> bool:
        return self.scaling is Scaling.SCALED and self.address < FLOAT_BASE // 2


_R, _RW = Access.READ, Access.READ_WRITE
_S, _U, _B, _SW = Scaling.SCALED, Scaling.UNSIGNED, Scaling.BITMAP, Scaling.SWITCH

REGISTERS: Final[Mapping[int, Register]] = MappingProxyType({
    r.address: r
    for r in (
        Register(Reg.PV, "process value", "degC", _S, _R),
        Register(Reg.TARGET_SP, "target setpoint", "degC", _S, _RW, eeprom=True),
        Register(Reg.MANUAL_OP, "manual output", "%", _S, _RW),
        Register(Reg.WORKING_OP, "working output", "%", _S, _R),
        Register(Reg.WORKING_SP, "working setpoint", "degC", _S, _R),
        Register(Reg.SP1, "setpoint 1", "degC", _S, _RW, eeprom=True),
        Register(Reg.SP2, "setpoint 2", "degC", _S, _RW, eeprom=True),
        Register(Reg.REMOTE_SP, "remote setpoint", "degC", _S, _RW),
        Register(Reg.OUTPUT_HIGH, "output high limit", "%", _S, _RW, eeprom=True),
        Register(Reg.OUTPUT_LOW, "output low limit", "%", _S, _RW, eeprom=True),
        Register(Reg.SP_RATE, "setpoint rate limit", "degC/min", _S, _RW, eeprom=True),
        Register(Reg.STATUS, "status", "", _B, _R),
        Register(Reg.LOOP_BREAK_TIME, "loop-break time", "s", _U, _RW, eeprom=True),
        Register(Reg.SHAKER_ON, "shaker on", "", _SW, _RW),
        Register(Reg.SHAKER_RPM_SP, "shaker speed setpoint", "rpm", _U, _RW),
        Register(Reg.SHAKER_RPM, "shaker speed", "rpm", _U, _R),
    )
})


# ---------------------------------------------------------------------- scaled integers

def _check_decimals(decimals: int) -> None:
    if not 0 <= decimals <= MAX_DECIMALS:
        raise ValueError(f"decimals must be 0..{MAX_DECIMALS}, got {decimals}")


def _check_word(word: int) -> None:
    if not 0 <= word <= 0xFFFF:
        raise ProtocolError(f"register word {word} is not 16-bit")


def resolution(decimals: int) -> float:
    """The smallest step a scaled register can express."""
    _check_decimals(decimals)
    return 1.0 / _SCALE[decimals]


def encode_scaled(value: float, decimals: int) -> int:
    """``value`` as a register word (two's complement). Raises :class:`ValueError` for a
    non-finite value or one outside -3276.7..3276.7 (at 1 decimal); -32768 is reserved."""
    _check_decimals(decimals)
    if not math.isfinite(value):
        raise ValueError(f"{value} cannot be written to a register")
    scaled = round(value * _SCALE[decimals])
    if not -0x7FFF <= scaled <= 0x7FFF:
        limit = 0x7FFF / _SCALE[decimals]
        raise ValueError(f"{value} is outside +/-{limit:g} at {decimals} decimal(s)")
    return scaled & 0xFFFF


def decode_scaled(word: int, decimals: int) -> float | None:
    """A register word as a value; None for the :data:`NO_VALUE` marker."""
    _check_decimals(decimals)
    _check_word(word)
    if word == NO_VALUE:
        return None
    signed = word - 0x10000 if word & 0x8000 else word
    return round(signed / _SCALE[decimals], decimals)


def decode_unsigned(word: int, *, maximum: int = 0xFFFF, name: str = "register") -> int:
    _check_word(word)
    if word > maximum:
        raise ProtocolError(f"{name} holds {word}, more than the possible {maximum}")
    return word


def decode_switch(word: int, *, name: str = "switch") -> bool:
    _check_word(word)
    if word not in (0, 1):
        raise ProtocolError(f"{name} holds {word}: expected 0 (off) or 1 (on)")
    return word == 1


# ---------------------------------------------------------------------- status bitmap

@dataclass(frozen=True)
class StatusBits:
    """Register 75. ``raw`` keeps every bit, including those we do not model (manual mode,
    CT alarms, ...): a real controller sets them, and they are not an error."""

    alarms: tuple[bool, bool, bool, bool] = (False, False, False, False)
    sensor_break: bool = False
    loop_break: bool = False
    pv_over_range: bool = False
    autotune: bool = False
    raw: int = 0

    @property
    def faults(self) -> tuple[str, ...]:
        """Names of the conditions that need an operator, in bit order."""
        names = [f"alarm {i + 1}" for i, on in enumerate(self.alarms) if on]
        if self.sensor_break:
            names.append("sensor break")
        if self.loop_break:
            names.append("loop break")
        if self.pv_over_range:
            names.append("PV over range")
        return tuple(names)


_BIT_SENSOR_BREAK, _BIT_LOOP_BREAK, _BIT_OVER_RANGE, _BIT_AUTOTUNE = 5, 6, 10, 15


def decode_status(word: int) -> StatusBits:
    _check_word(word)

    def bit(n: int) -> bool:
        return bool(word >> n & 1)

    return StatusBits(
        alarms=(bit(0), bit(1), bit(2), bit(3)),
        sensor_break=bit(_BIT_SENSOR_BREAK),
        loop_break=bit(_BIT_LOOP_BREAK),
        pv_over_range=bit(_BIT_OVER_RANGE),
        autotune=bit(_BIT_AUTOTUNE),
        raw=word,
    )


def encode_status(status: StatusBits) -> int:
    """The word for ``status``'s named flags (``raw`` is ignored)."""
    word = sum(1 << i for i, on in enumerate(status.alarms) if on)
    for on, n in (
        (status.sensor_break, _BIT_SENSOR_BREAK),
        (status.loop_break, _BIT_LOOP_BREAK),
        (status.pv_over_range, _BIT_OVER_RANGE),
        (status.autotune, _BIT_AUTOTUNE),
    ):
        word |= on << n
    return word


# ---------------------------------------------------------------------- float mirror

def float_address(address: int) -> int:
    """Where parameter ``address`` is mirrored as a 32-bit float."""
    if not 0 <= address < FLOAT_BASE // 2:
        raise ValueError(f"parameter {address} has no float mirror")
    return FLOAT_BASE + 2 * address


def encode_float(value: float) -> tuple[int, int]:
    """``value`` as (high word, low word) of an IEEE-754 single."""
    try:
        high, low = struct.unpack(">HH", struct.pack(">f", value))
    except OverflowError as exc:
        raise ValueError(f"{value} does not fit a 32-bit float") from exc
    return high, low


def decode_float(high: int, low: int) -> float:
    """Two words (high first) as a float; NaN and infinities are refused."""
    _check_word(high)
    _check_word(low)
    (value,) = struct.unpack(">f", struct.pack(">HH", high, low))
    if not math.isfinite(value):
        raise ProtocolError(f"float register pair {high:#06x} {low:#06x} is not finite")
    return float(value)

"""Quantities with units, as written in protocol files: ``"90 min"``, ``"37 C"``, ``"250 uL"``.

Parsing is strict: a bare number is refused (the unit is part of the value), only the listed
units are accepted, and the error says what was expected (``a duration like '90 min'``) so a
validation message can be shown as is. Values are returned in base units: seconds, degrees
Celsius, millilitres, percent, rpm, volts, hertz.

``quantity(kind, lo=..., hi=...)`` is a pydantic ``BeforeValidator`` for a ``float`` field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BeforeValidator

__all__ = [
    "DURATION",
    "FREQUENCY",
    "PERCENT",
    "POTENTIAL",
    "RESISTANCE",
    "SPEED",
    "TEMPERATURE",
    "TEMPERATURE_TOLERANCE",
    "VOLUME",
    "Kind",
    "format_duration",
    "parse_quantity",
    "quantity",
]

_QTY = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class Kind:
    """A kind of quantity: what to call it, an example, and its units (factor to base)."""

    noun: str
    example: str
    units: Mapping[str, float]
    base: str

    def fmt(self, value: float) -> str:
        return format_duration(value) if self is DURATION else f"{value:g} {self.base}"


DURATION = Kind("a duration", "90 min", {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}, "s")
TEMPERATURE = Kind("a temperature", "37 C", {"C": 1.0, "°C": 1.0}, "C")
TEMPERATURE_TOLERANCE = Kind("a temperature tolerance", "0.5 C", {"C": 1.0, "°C": 1.0}, "C")
VOLUME = Kind("a volume", "1 mL", {"mL": 1.0, "uL": 1e-3, "µL": 1e-3}, "mL")
PERCENT = Kind("a percentage", "2 %", {"%": 1.0}, "%")
SPEED = Kind("a shaking speed", "300 rpm", {"rpm": 1.0}, "rpm")
POTENTIAL = Kind("a potential", "-70 mV", {"mV": 1e-3, "V": 1.0}, "V")
FREQUENCY = Kind("a frequency", "20 kHz", {"Hz": 1.0, "kHz": 1e3}, "Hz")
RESISTANCE = Kind("a resistance", "1 GOhm", {"Ohm": 1.0, "kOhm": 1e3, "MOhm": 1e6, "GOhm": 1e9},
                  "Ohm")


def parse_quantity(
    kind: Kind,
    value: object,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float:
    """``value`` (a string with a unit) in base units; ValueError saying what was expected."""
    units = ", ".join(kind.units)
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004 - pydantic turns only ValueError into a message
            f"{kind.noun} with its unit, like '{kind.example}' (units: {units})"
        )
    m = _QTY.match(value)
    if m is None:
        raise ValueError(f"{kind.noun} like '{kind.example}' (units: {units})")
    number, unit = m.groups()
    if unit not in kind.units:
        raise ValueError(f"{kind.noun} like '{kind.example}' (units: {units}; not {unit!r})")
    v = float(number) * kind.units[unit]
    if not math.isfinite(v):
        raise ValueError(f"{kind.noun} like '{kind.example}' (a finite number)")
    too_low = lo is not None and (v <= lo if lo_open else v < lo)
    too_high = hi is not None and v > hi
    if too_low or too_high:
        raise ValueError(f"{kind.noun} {_bounds(kind, lo, hi, lo_open)}, like '{kind.example}'")
    return v


def _bounds(kind: Kind, lo: float | None, hi: float | None, lo_open: bool) -> str:
    parts = []
    if lo is not None:
        if lo == 0 and lo_open:
            parts.append("greater than 0")
        else:
            parts.append(f"{'greater than' if lo_open else 'at least'} {kind.fmt(lo)}")
    if hi is not None:
        parts.append(f"at most {kind.fmt(hi)}")
    return " and ".join(parts)


def quantity(
    kind: Kind, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> BeforeValidator:
    """A pydantic validator parsing ``kind`` from its string form into base units."""

    def _parse(value: object) -> float:
        return parse_quantity(kind, value, lo=lo, hi=hi, lo_open=lo_open)

    return BeforeValidator(_parse)


def format_duration(seconds: float) -> str:
    """``6766`` -> ``'1 h 52 min 46 s'``; ``90`` -> ``'1 min 30 s'``; ``0.25`` -> ``'250 ms'``."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g} ms"
    if seconds < 60:
        return f"{round(seconds, 1):g} s"
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h} h"] if h else []
    if m:
        parts.append(f"{m} min")
    if s:
        parts.append(f"{s} s")
    return " ".join(parts)

"""Host commands of the harvester protocol: dataclasses, the host-side encoder and the
instrument-side parser (see :mod:`.codec`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from drivers.errors import ProtocolError
from drivers.harvester._frames import seal

PREWET_S: Final = (1, 300)
DRY_S: Final = (1, 600)
WASH_CYCLES: Final = (1, 10)
WASH_VOLUME_ML: Final = (0.1, 5.0)

_INT = re.compile(r"\d{1,4}", re.ASCII)
_VOLUME = re.compile(r"\d{1,2}(?:\.\d)?", re.ASCII)


class CommandError(ProtocolError):
    """A command frame the instrument cannot accept; ``code`` is the error it answers
    (31 unknown command, 32 bad argument)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} must be {bounds[0]:g}-{bounds[1]:g}, got {value!r}")


@dataclass(frozen=True)
class Identify:
    """``ID?``"""


@dataclass(frozen=True)
class QueryStatus:
    """``ST?``"""


@dataclass(frozen=True)
class QueryAnomalies:
    """``AN?``: the clogged wells of the last aspirate."""


@dataclass(frozen=True)
class QueryMat:
    """``MT?``: what has been done to the filter mat now seated."""


@dataclass(frozen=True)
class Prewet:
    """``PW <s>``: pull PEI through the filter mat for ``seconds``."""

    seconds: int

    def __post_init__(self) -> None:
        _check_range("prewet seconds", self.seconds, PREWET_S)


@dataclass(frozen=True)
class Aspirate:
    """``AS``: filter the plate through the mat."""


@dataclass(frozen=True)
class Wash:
    """``WS <cycles>,<mL per well>``"""

    cycles: int
    volume_ml: float

    def __post_init__(self) -> None:
        _check_range("wash cycles", self.cycles, WASH_CYCLES)
        _check_range("wash volume (mL per well)", self.volume_ml, WASH_VOLUME_ML)
        if round(self.volume_ml, 1) != self.volume_ml:
            raise ValueError("wash volume has a resolution of 0.1 mL")


@dataclass(frozen=True)
class Dry:
    """``DR <s>``: pull air through the mat for ``seconds``."""

    seconds: int

    def __post_init__(self) -> None:
        _check_range("dry seconds", self.seconds, DRY_S)


@dataclass(frozen=True)
class Release:
    """``RL``: release the filter mat."""


@dataclass(frozen=True)
class Abort:
    """``AB``: stop the running step and clear a latched fault."""


Command = (
    Identify | QueryStatus | QueryAnomalies | QueryMat | Prewet | Aspirate | Wash | Dry
    | Release | Abort
)
STEP_COMMANDS: Final = (Prewet, Aspirate, Wash, Dry, Release)


def command_text(command: Command) -> str:
    """The body of ``command``'s frame."""
    match command:
        case Identify():
            return "ID?"
        case QueryStatus():
            return "ST?"
        case QueryAnomalies():
            return "AN?"
        case QueryMat():
            return "MT?"
        case Prewet(seconds):
            return f"PW {seconds}"
        case Aspirate():
            return "AS"
        case Wash(cycles, volume_ml):
            return f"WS {cycles},{volume_ml:.1f}"
        case Dry(seconds):
            return f"DR {seconds}"
        case Release():
            return "RL"
        case Abort():
            return "AB"


def encode_command(command: Command) -> bytes:
    """The frame of ``command`` without the CR (:class:`~drivers.serial_link.SerialLink`
    adds it)."""
    return seal(command_text(command))


_NO_ARGS: Final[dict[str, Command]] = {
    "ID?": Identify(), "ST?": QueryStatus(), "AN?": QueryAnomalies(), "MT?": QueryMat(),
    "AS": Aspirate(), "RL": Release(), "AB": Abort(),
}


def parse_command(body: str) -> Command:
    """Instrument side: the command in a checked frame body. Raises :class:`CommandError`."""
    mnemonic, _, args = body.partition(" ")
    if mnemonic in _NO_ARGS:
        if args:
            raise CommandError(32, f"{mnemonic} takes no argument")
        return _NO_ARGS[mnemonic]
    try:
        if mnemonic == "PW":
            return Prewet(_parse_int(args))
        if mnemonic == "DR":
            return Dry(_parse_int(args))
        if mnemonic == "WS":
            cycles, comma, volume = args.partition(",")
            if not comma or not _VOLUME.fullmatch(volume):
                raise CommandError(32, f"WS wants <cycles>,<mL>: {args[:20]!r}")
            return Wash(_parse_int(cycles), float(volume))
    except ValueError as exc:
        raise CommandError(32, str(exc)) from None
    raise CommandError(31, f"unknown command {mnemonic[:12]!r}")


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise CommandError(32, f"not a whole number: {text[:20]!r}")
    return int(text)

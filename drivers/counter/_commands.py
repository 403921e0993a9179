"""Command dataclasses, the host-side encoder and the instrument-side parser of the counter
codec (see :mod:`.codec`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from drivers.counter._lines import (
    Line,
    encode_line,
    format_float,
    line_text,
    parse_float,
    parse_int,
)
from drivers.counter._replies import WELL_RE, ErrorCode, ErrorReply
from drivers.errors import ProtocolError

ISOTOPES: Final = ("H3", "C14", "P32", "I125")
Isotope = Literal["H3", "C14", "P32", "I125"]
MIN_COUNT_TIME_S: Final = 0.1
MAX_COUNT_TIME_S: Final = 36000.0


@dataclass(frozen=True)
class Identify:
    """``*IDN?``"""


@dataclass(frozen=True)
class Reset:
    """``*RST``: abort any count, restore the default configuration, clear the error queue."""


@dataclass(frozen=True)
class QueryError:
    """``SYST:ERR?``: pop the oldest entry of the error queue."""


@dataclass(frozen=True)
class QueryDetectors:
    """``SYST:DET?``"""


@dataclass(frozen=True)
class QueryDoor:
    """``SYST:DOOR?``"""


@dataclass(frozen=True)
class QueryPlate:
    """``PLAT:ID?``"""


@dataclass(frozen=True)
class SetCountTime:
    """``CONF:TIME <seconds>``"""

    seconds: float

    def __post_init__(self) -> None:
        if not MIN_COUNT_TIME_S <= self.seconds <= MAX_COUNT_TIME_S:
            raise ValueError(f"count time must be {MIN_COUNT_TIME_S}-{MAX_COUNT_TIME_S} s")


@dataclass(frozen=True)
class QueryCountTime:
    """``CONF:TIME?``"""


@dataclass(frozen=True)
class SetPrecision:
    """``CONF:PREC <percent>``: %2-sigma stop target; 0 switches the precision stop off."""

    percent: float

    def __post_init__(self) -> None:
        if not (self.percent == 0 or 0.1 <= self.percent <= 100):
            raise ValueError("precision must be 0 (off) or 0.1-100 %2-sigma")


@dataclass(frozen=True)
class QueryPrecision:
    """``CONF:PREC?``"""


@dataclass(frozen=True)
class SetIsotope:
    """``CONF:ISOT <isotope>``"""

    isotope: str

    def __post_init__(self) -> None:
        if self.isotope not in ISOTOPES:
            raise ValueError(f"isotope must be one of {', '.join(ISOTOPES)}")


@dataclass(frozen=True)
class QueryIsotope:
    """``CONF:ISOT?``"""


@dataclass(frozen=True)
class StartCount:
    """``COUN:STAR [wells]``: ``None`` counts all 96 wells."""

    wells: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.wells is None:
            return
        if not self.wells or len(set(self.wells)) != len(self.wells):
            raise ValueError("wells must be a non-empty list without duplicates")
        for well in self.wells:
            if not WELL_RE.fullmatch(well):
                raise ValueError(f"not a well name: {well!r}")


@dataclass(frozen=True)
class QueryStatus:
    """``COUN:STAT?``"""


@dataclass(frozen=True)
class Fetch:
    """``COUN:FETC? <index>``: records from completion index ``start_index`` on."""

    start_index: int

    def __post_init__(self) -> None:
        if not 0 <= self.start_index < 10**9:
            raise ValueError("fetch index must be 0 or more")


@dataclass(frozen=True)
class Abort:
    """``COUN:ABOR``"""


Command = (
    Identify | Reset | QueryError | QueryDetectors | QueryDoor | QueryPlate | SetCountTime
    | QueryCountTime | SetPrecision | QueryPrecision | SetIsotope | QueryIsotope | StartCount
    | QueryStatus | Fetch | Abort
)

_PLAIN_HEADERS: Final[dict[type[Command], str]] = {
    Identify: "*IDN?", Reset: "*RST", QueryError: "SYST:ERR?", QueryDetectors: "SYST:DET?",
    QueryDoor: "SYST:DOOR?", QueryPlate: "PLAT:ID?", QueryCountTime: "CONF:TIME?",
    QueryPrecision: "CONF:PREC?", QueryIsotope: "CONF:ISOT?", QueryStatus: "COUN:STAT?",
    Abort: "COUN:ABOR",
}


def encode_command(command: Command) -> bytes:
    """The wire bytes of one command, terminator included."""
    match command:
        case SetCountTime(seconds=seconds):
            text = f"CONF:TIME {format_float(seconds)}"
        case SetPrecision(percent=percent):
            text = f"CONF:PREC {format_float(percent)}"
        case SetIsotope(isotope=isotope):
            text = f"CONF:ISOT {isotope}"
        case StartCount(wells=None):
            text = "COUN:STAR"
        case StartCount(wells=wells):
            text = f"COUN:STAR {','.join(wells or ())}"
        case Fetch(start_index=index):
            text = f"COUN:FETC? {index}"
        case _:
            text = _PLAIN_HEADERS[type(command)]
    return encode_line(text)


# SCPI mnemonics: the short form (upper-case part) or the long form are both accepted.
_MNEMONICS: Final = {
    "SYSTEM": "SYST", "ERROR": "ERR", "DETECTORS": "DET", "PLATE": "PLAT",
    "CONFIGURE": "CONF", "PRECISION": "PREC", "ISOTOPE": "ISOT", "COUNT": "COUN",
    "START": "STAR", "STATUS": "STAT", "FETCH": "FETC", "ABORT": "ABOR",
}

_NO_ARGS: Final[dict[str, Callable[[], Command]]] = {
    header: cls for cls, header in _PLAIN_HEADERS.items()
}


def _parse_wells(arg: str) -> Command:
    return StartCount(tuple(w.strip().upper() for w in arg.split(",")))


_WITH_ARGS: Final[dict[str, Callable[[str], Command]]] = {
    "CONF:TIME": lambda a: SetCountTime(parse_float(a)),
    "CONF:PREC": lambda a: SetPrecision(parse_float(a)),
    "CONF:ISOT": lambda a: SetIsotope(a.upper()),
    "COUN:STAR": _parse_wells,
    "COUN:FETC?": lambda a: Fetch(parse_int(a)),
}
_OPTIONAL_ARGS: Final = frozenset({"COUN:STAR"})


def parse_command(line: Line | str) -> Command | ErrorReply:
    """Instrument side: one command line to a command, or the error reply to send back."""
    text = line_text(line).strip()
    header, _, arg = text.partition(" ")
    arg = arg.strip()
    parts = header.upper().split(":")
    query = parts[-1].endswith("?")
    parts[-1] = parts[-1].rstrip("?")
    key = ":".join(_MNEMONICS.get(p, p) for p in parts) + ("?" if query else "")
    builder = _WITH_ARGS.get(key)
    plain = _NO_ARGS.get(key)
    if builder is None and plain is None:
        return ErrorReply(ErrorCode.UNDEFINED_HEADER, "Undefined header")
    try:
        if arg and builder is not None:
            return builder(arg)
        if arg:
            return ErrorReply(ErrorCode.PARAMETER_NOT_ALLOWED, "Parameter not allowed")
        if plain is not None:
            return plain()
        if key in _OPTIONAL_ARGS:
            return StartCount(None)
        return ErrorReply(ErrorCode.MISSING_PARAMETER, "Missing parameter")
    except (ValueError, ProtocolError) as exc:
        message = f"Illegal parameter value: {exc}".replace('"', "'")[:120]
        return ErrorReply(ErrorCode.ILLEGAL_PARAMETER, message)

"""Instrument replies of the harvester protocol: ``OK <data>`` / ``ER <nn> <text>`` and the
data of ``ID?``, ``ST?``, ``AN?`` and ``MT?`` (see :mod:`.codec`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal, get_args

from drivers.errors import ProtocolError
from drivers.harvester._frames import open_frame, seal
from labware import wells

State = Literal["IDLE", "BUSY", "FAULT"]
Step = Literal["NONE", "PW", "AS", "WS", "DR", "RL"]
STATES: Final = get_args(State)
STEPS: Final = get_args(Step)
WELLS: Final = wells(96)

_ERROR = re.compile(r"ER (\d{2}) ([ -~]{0,80})", re.ASCII)
_FIELD = re.compile(r"[A-Za-z0-9 ._\-/]{1,32}")
_FLOAT = re.compile(r"-?\d{1,4}\.\d{1,3}", re.ASCII)
_UINT = re.compile(r"\d{1,3}", re.ASCII)
_BITS: Final = ("0", "1")


class ErrorCode(IntEnum):
    """Numbered errors. 10-15: instrument faults (need the operator); 20: busy;
    30-32: the command could not be accepted (transmission or host bug)."""

    LOW_VACUUM = 10
    MAT_NOT_SEATED = 11
    BUFFER_EMPTY = 12
    WASTE_FULL = 13
    CLOGGED_WELLS = 14
    NO_PLATE = 15
    BUSY = 20
    BAD_CHECKSUM = 30
    UNKNOWN_COMMAND = 31
    BAD_ARGUMENT = 32


FAULT_NAMES: Final[dict[int, str]] = {
    ErrorCode.LOW_VACUUM: "low_vacuum",
    ErrorCode.MAT_NOT_SEATED: "mat_not_seated",
    ErrorCode.BUFFER_EMPTY: "buffer_empty",
    ErrorCode.WASTE_FULL: "waste_full",
    ErrorCode.CLOGGED_WELLS: "clogged_wells",
    ErrorCode.NO_PLATE: "no_plate",
}
ERROR_TEXT: Final[dict[int, str]] = {
    ErrorCode.LOW_VACUUM: "Low vacuum",
    ErrorCode.MAT_NOT_SEATED: "Mat not seated",
    ErrorCode.BUFFER_EMPTY: "Buffer empty",
    ErrorCode.WASTE_FULL: "Waste full",
    ErrorCode.CLOGGED_WELLS: "Clogged wells",
    ErrorCode.NO_PLATE: "No plate",
    ErrorCode.BUSY: "Busy",
    ErrorCode.BAD_CHECKSUM: "Bad checksum",
    ErrorCode.UNKNOWN_COMMAND: "Unknown command",
    ErrorCode.BAD_ARGUMENT: "Bad argument",
}


@dataclass(frozen=True)
class OkReply:
    data: str = ""


@dataclass(frozen=True)
class ErrorReply:
    code: int
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 99:
            raise ValueError("error codes have two digits")


Reply = OkReply | ErrorReply


def format_reply(reply: Reply) -> bytes:
    """The sealed frame of ``reply`` (no terminator)."""
    if isinstance(reply, ErrorReply):
        return seal(f"ER {reply.code:02d} {reply.text}")
    return seal(f"OK {reply.data}" if reply.data else "OK")


def error_reply(code: ErrorCode, detail: str = "") -> ErrorReply:
    text = ERROR_TEXT[code]
    return ErrorReply(code, f"{text}: {detail}"[:80] if detail else text)


def read_reply(line: bytes) -> Reply:
    """Host side: one reply line as the link delivers it (terminator stripped): checked
    frame, then :func:`parse_reply`. Raises only :class:`ProtocolError`."""
    return parse_reply(open_frame(line).body)


def parse_reply(body: str) -> Reply:
    if body == "OK":
        return OkReply()
    if body.startswith("OK "):
        return OkReply(body[3:])
    if match := _ERROR.fullmatch(body):
        return ErrorReply(int(match[1]), match[2])
    raise ProtocolError(f"neither OK nor ER: {body[:40]!r}")


# --------------------------------------------------------------------------- ID?


@dataclass(frozen=True)
class Identity:
    vendor: str
    model: str
    serial: str
    firmware: str


def format_identity(ident: Identity) -> str:
    fields = (ident.vendor, ident.model, ident.serial, ident.firmware)
    if not all(_FIELD.fullmatch(f) for f in fields):
        raise ValueError(f"identity fields: 1-32 letters, digits, ' ._-/': {fields!r}")
    return ",".join(fields)


def parse_identity(data: str) -> Identity:
    fields = data.split(",")
    if len(fields) != 4 or not all(_FIELD.fullmatch(f) for f in fields):
        raise ProtocolError(f"not an identity: {data[:60]!r}")
    return Identity(*fields)


# --------------------------------------------------------------------------- ST?


@dataclass(frozen=True)
class Status:
    """``ST?``: ``state,step,cycle,progress,vacuum,buffer,waste,mat,plate,fault``.

    ``step`` is the running step (BUSY) or the last one (IDLE/FAULT); ``cycle`` the wash
    cycle (1-based, 0 outside a wash); ``progress_pct`` of that step; ``fault_code`` the
    latched fault (0: none).
    """

    state: State
    step: Step
    cycle: int
    progress_pct: int
    vacuum_bar: float
    buffer_pct: float
    waste_pct: float
    mat_seated: bool
    plate_present: bool
    fault_code: int

    def __post_init__(self) -> None:
        numbers_ok = (0 <= self.cycle <= 99 and 0 <= self.progress_pct <= 100
                      and 0 <= self.fault_code <= 99 and -2.0 <= self.vacuum_bar <= 2.0
                      and 0 <= self.buffer_pct <= 100 and 0 <= self.waste_pct <= 100)
        if self.state not in STATES or self.step not in STEPS or not numbers_ok:
            raise ValueError(f"status out of range: {self!r}")


def format_status(status: Status) -> str:
    return (f"{status.state},{status.step},{status.cycle},{status.progress_pct},"
            f"{status.vacuum_bar:.2f},{status.buffer_pct:.1f},{status.waste_pct:.1f},"
            f"{int(status.mat_seated)},{int(status.plate_present)},{status.fault_code:02d}")


def parse_status(data: str) -> Status:
    fields = data.split(",")
    if len(fields) != 10:
        raise ProtocolError(f"status wants 10 fields, got {len(fields)}: {data[:60]!r}")
    state, step, cycle, progress, vacuum, buffer, waste, mat, plate, fault = fields
    if state not in STATES or step not in STEPS or mat not in _BITS or plate not in _BITS:
        raise ProtocolError(f"bad status: {data[:60]!r}")
    try:
        return Status(
            state, step, _uint(cycle), _uint(progress), _float(vacuum),  # type: ignore[arg-type]
            _float(buffer), _float(waste), mat == "1", plate == "1", _uint(fault),
        )
    except ValueError as exc:
        raise ProtocolError(f"status out of range: {data[:60]!r}") from exc


def _uint(text: str) -> int:
    if not _UINT.fullmatch(text):
        raise ProtocolError(f"not a small whole number: {text[:12]!r}")
    return int(text)


def _float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise ProtocolError(f"not a decimal number: {text[:12]!r}")
    return float(text)  # at most 4+3 digits: always finite


# --------------------------------------------------------------------------- AN?


def format_anomalies(clogged: Iterable[str]) -> str:
    wells = sorted(set(clogged), key=WELLS.index)
    return ",".join([str(len(wells)), *wells])


def parse_anomalies(data: str) -> tuple[str, ...]:
    """``<n>[,<well>]*``: the clogged wells of the last aspirate, in plate order."""
    count, *wells = data.split(",")
    if (not _UINT.fullmatch(count) or int(count) != len(wells)
            or any(w not in WELLS for w in wells) or len(set(wells)) != len(wells)):
        raise ProtocolError(f"not a well list: {data[:60]!r}")
    return tuple(wells)


# --------------------------------------------------------------------------- MT?

_COUNT = re.compile(r"\d{1,5}", re.ASCII)


@dataclass(frozen=True)
class MatReport:
    """``MT?``: ``seated,prewet,aspirated,washes,dried,made,began``.

    What has been done to the filter mat now seated (all zero for a fresh one; reset by
    ``RL``): PEI pulled through it, a plate aspirated onto it, wash cycles completed on it
    (a wash stopped by a fault counts the cycles it finished), and whether it was dried
    after an aspirate (a complete harvest). ``made`` counts the complete harvests since
    power-on, so a host can tell whether a cycle it ran produced a mat. ``began``: an
    aspirate has started on this mat (with ``aspirated`` 0: one cut short by a fault or an
    abort, the plate partly filtered onto it).
    """

    seated: bool
    prewet: bool
    aspirated: bool
    washes: int
    dried: bool
    made: int
    began: bool = False

    def __post_init__(self) -> None:
        if not (0 <= self.washes <= 99 and 0 <= self.made <= 99999):
            raise ValueError(f"mat report out of range: {self!r}")

    @property
    def used(self) -> bool:
        """A plate has been filtered onto this mat (it is some plate's harvest)."""
        return self.began or self.aspirated or self.dried


def format_mat(report: MatReport) -> str:
    bits = (report.seated, report.prewet, report.aspirated)
    return ",".join([*(str(int(b)) for b in bits), str(report.washes),
                     str(int(report.dried)), str(report.made),
                     str(int(report.began))])


def parse_mat(data: str) -> MatReport:
    fields = data.split(",")
    if len(fields) != 7:
        raise ProtocolError(f"mat report wants 7 fields, got {len(fields)}: {data[:60]!r}")
    seated, prewet, aspirated, washes, dried, made, began = fields
    if any(b not in _BITS for b in (seated, prewet, aspirated, dried, began)) or not (
        _UINT.fullmatch(washes) and _COUNT.fullmatch(made)
    ):
        raise ProtocolError(f"bad mat report: {data[:60]!r}")
    try:
        return MatReport(seated == "1", prewet == "1", aspirated == "1", int(washes),
                         dried == "1", int(made), began == "1")
    except ValueError as exc:
        raise ProtocolError(f"mat report out of range: {data[:60]!r}") from exc

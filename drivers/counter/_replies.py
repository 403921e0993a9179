"""Reply dataclasses, formatters (instrument side) and parsers (host side) of the counter
codec (see :mod:`.codec`). Parsers raise only :class:`~drivers.errors.ProtocolError`."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from drivers.counter._lines import Line, format_float, line_text, parse_float, parse_int
from drivers.errors import ProtocolError

MAX_RECORDS_PER_REPLY: Final = 16
STATES: Final = ("IDLE", "COUNTING", "DONE", "ABORTED", "FAULT")
State = Literal["IDLE", "COUNTING", "DONE", "ABORTED", "FAULT"]

WELL_RE = re.compile(r"[A-H](?:1[0-2]|[1-9])")
_PLATE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TEXT = re.compile(r'[ -!#-~]{0,200}')  # printable ASCII without the double quote
_FIELD = re.compile(r"[!-+\--:<-~]{1,64}")  # printable, no space, comma or semicolon


class ErrorCode(IntEnum):
    """Codes of ``ERR <code>,"<message>"`` replies and of status fault fields."""

    NONE = 0
    SYNTAX = -102
    PARAMETER_NOT_ALLOWED = -108
    MISSING_PARAMETER = -109
    UNDEFINED_HEADER = -113
    TOO_MUCH_DATA = -223
    ILLEGAL_PARAMETER = -224
    NO_PLATE = 201
    DOOR_OPEN = 202
    BUSY = 203
    NO_COUNT = 204
    ABORTED_BY_HOST = 210
    HV_FAULT = 220


@dataclass(frozen=True)
class OkReply:
    """``OK`` or ``OK,<field>,...`` (``COUN:STAR`` answers ``OK,<count id>,<total wells>``)."""

    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ErrorReply:
    """``ERR <code>,"<message>"``"""

    code: int
    message: str


@dataclass(frozen=True)
class IdentityReply:
    """``<vendor>,<model>,<serial>,<firmware>``"""

    vendor: str
    model: str
    serial: str
    firmware: str


@dataclass(frozen=True)
class StatusReply:
    """``<STATE>,<done>,<total>,<count id>,<fault code>,"<fault text>"``"""

    state: State
    done: int
    total: int
    count_id: int
    fault_code: int
    fault_text: str


@dataclass(frozen=True)
class WellCount:
    """One counted well, as the driver hands it out.

    ``index`` is the completion index within the count (0 for the first well finished);
    ``flags`` are one-letter codes (L luminescence, D dead-time, Q quench outside the
    curve, P stopped on the precision target).
    """

    index: int
    well: str
    detector: int
    counts: int
    count_time_s: float
    cpm: float
    ccpm: float
    sigma2_pct: float
    sqp: float
    flags: tuple[str, ...] = ()


def is_error_reply(line: Line | str) -> bool:
    return line_text(line).startswith("ERR ")


_ERROR_RE = re.compile(r'ERR (-?\d{1,6}),"([^"]{0,200})"')
_STATUS_RE = re.compile(r'([A-Z]+),(\d{1,9}),(\d{1,9}),(\d{1,9}),(-?\d{1,6}),"([^"]{0,200})"')


def format_error(code: int, message: str) -> str:
    if not _TEXT.fullmatch(message):
        raise ValueError("error message must be printable ASCII without quotes")
    return f'ERR {code},"{message}"'


def parse_error(line: Line | str) -> ErrorReply:
    match = _ERROR_RE.fullmatch(line_text(line))
    if match is None:
        raise ProtocolError(f"not an error reply: {line_text(line)[:40]!r}")
    return ErrorReply(int(match[1]), match[2])


def format_ok(*fields: str) -> str:
    for field in fields:
        if not _FIELD.fullmatch(field):
            raise ValueError(f"not a valid OK field: {field!r}")
    return ",".join(("OK", *fields))


def parse_ok(line: Line | str) -> OkReply:
    head, *fields = line_text(line).split(",")
    if head != "OK" or not all(_FIELD.fullmatch(f) for f in fields):
        raise ProtocolError(f"expected OK, got {line_text(line)[:40]!r}")
    return OkReply(tuple(fields))


def format_identity(reply: IdentityReply) -> str:
    fields = (reply.vendor, reply.model, reply.serial, reply.firmware)
    if not all(_FIELD.fullmatch(f) for f in fields):
        raise ValueError("identity fields must be printable ASCII without , ; or space")
    return ",".join(fields)


def parse_identity(line: Line | str) -> IdentityReply:
    fields = line_text(line).split(",")
    if len(fields) != 4 or not all(_FIELD.fullmatch(f) for f in fields):
        raise ProtocolError(f"not an identity: {line_text(line)[:40]!r}")
    return IdentityReply(*fields)


def format_status(reply: StatusReply) -> str:
    if not _TEXT.fullmatch(reply.fault_text):
        raise ValueError("fault text must be printable ASCII without quotes")
    return (
        f"{reply.state},{reply.done},{reply.total},{reply.count_id},"
        f'{reply.fault_code},"{reply.fault_text}"'
    )


def parse_status(line: Line | str) -> StatusReply:
    text = line_text(line)
    match = _STATUS_RE.fullmatch(text)
    if match is None or match[1] not in STATES:
        raise ProtocolError(f"not a status reply: {text[:40]!r}")
    state: State = match[1]  # type: ignore[assignment]  # checked against STATES above
    done, total = int(match[2]), int(match[3])
    if done > total:
        raise ProtocolError(f"status reports {done} of {total} wells done")
    return StatusReply(state, done, total, int(match[4]), int(match[5]), match[6])


def _format_record(rec: WellCount) -> str:
    if any(len(f) != 1 or not "A" <= f <= "Z" for f in rec.flags):
        raise ValueError(f"flags must be single upper-case letters: {rec.flags}")
    flags = "".join(rec.flags) or "-"
    numbers = (rec.count_time_s, rec.cpm, rec.ccpm, rec.sigma2_pct, rec.sqp)
    return ",".join(
        (str(rec.index), rec.well, str(rec.detector), str(rec.counts),
         *(format_float(n) for n in numbers), flags)
    )


def format_records(records: tuple[WellCount, ...] | list[WellCount]) -> str:
    if len(records) > MAX_RECORDS_PER_REPLY:
        raise ValueError(f"at most {MAX_RECORDS_PER_REPLY} records per reply")
    return ";".join((str(len(records)), *(_format_record(r) for r in records)))


def _parse_record(text: str) -> WellCount:
    fields = text.split(",")
    if len(fields) != 10:
        raise ProtocolError(f"record needs 10 fields, got {len(fields)}")
    index, well, detector, counts, t, cpm, ccpm, sigma, sqp, flags = fields
    if not WELL_RE.fullmatch(well):
        raise ProtocolError(f"not a well name: {well[:8]!r}")
    if flags != "-" and not (flags.isalpha() and flags.isupper() and flags.isascii()):
        raise ProtocolError(f"bad flags field: {flags[:16]!r}")
    det = parse_int(detector)
    if not 1 <= det <= 12:
        raise ProtocolError(f"detector {det} out of range")
    return WellCount(
        index=parse_int(index), well=well, detector=det, counts=parse_int(counts),
        count_time_s=parse_float(t), cpm=parse_float(cpm), ccpm=parse_float(ccpm),
        sigma2_pct=parse_float(sigma), sqp=parse_float(sqp),
        flags=() if flags == "-" else tuple(flags),
    )


def parse_records(line: Line | str) -> tuple[WellCount, ...]:
    """Parse a ``COUN:FETC?`` reply; indices must be consecutive."""
    head, *rest = line_text(line).split(";")
    n = parse_int(head)
    if n != len(rest) or n > MAX_RECORDS_PER_REPLY:
        raise ProtocolError(f"record count {n} does not match {len(rest)} records")
    records = tuple(_parse_record(r) for r in rest)
    for prev, rec in itertools.pairwise(records):
        if rec.index != prev.index + 1:
            raise ProtocolError(f"record indices not consecutive: {prev.index}, {rec.index}")
    return records


def parse_door(line: Line | str) -> bool:
    """``OPEN`` -> True, ``CLOSED`` -> False."""
    text = line_text(line)
    if text not in ("OPEN", "CLOSED"):
        raise ProtocolError(f"not a door state: {text[:16]!r}")
    return text == "OPEN"


def parse_plate_id(line: Line | str) -> str | None:
    text = line_text(line)
    if text == "NONE":
        return None
    if not _PLATE_ID.fullmatch(text):
        raise ProtocolError(f"not a plate id: {text[:40]!r}")
    return text


def format_error_entry(entry: ErrorReply) -> str:
    """A ``SYST:ERR?`` reply: ``<code>,"<message>"`` (``0,"No error"`` when the queue is empty)."""
    return format_error(entry.code, entry.message).removeprefix("ERR ")


def parse_error_entry(line: Line | str) -> ErrorReply:
    return parse_error("ERR " + line_text(line))

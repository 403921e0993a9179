"""Pure codec for the AutoMate ValveLink8 ASCII serial protocol (our documented dialect).

No I/O happens here: bytes in, frozen dataclasses out (and back), so every function can be
fuzzed. The wire format is documented byte by byte in ``docs/protocols/perfusion.md``.

Host side: :func:`encode_command` and :func:`parse_reply`. Instrument side (the simulator):
:func:`command_from_bytes` / :func:`parse_command` and :func:`format_reply`. Encoders return
one line *without* its terminator, and decoders take one line: cutting the byte stream into
lines (:data:`EOL`, at most :data:`MAX_LINE` bytes with it) is the link's job on both sides
(:func:`drivers.serial_link.split_line`). Decoding raises only
:class:`~drivers.errors.ProtocolError`; building a command or reply with an out-of-range
field raises :class:`ValueError` (a caller bug, not a wire fault).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from drivers.errors import ProtocolError

__all__ = [
    "EOL", "MAX_LINE", "MODE_MASTER", "MODE_ONE_ON", "MODE_PRESELECT", "MODE_TTL", "VALVES",
    "AcknowledgeSpill", "CloseAll", "CloseValve", "Command", "ErrorCode", "ErrorReply",
    "Identify", "IdentityReply", "ModeSpec", "OkReply", "OpenAll", "OpenValve",
    "QueryStatus", "Reply", "SetModes", "StatusReply", "ValveState", "command_from_bytes",
    "encode_command", "format_reply", "parse_command", "parse_reply",
]

EOL: Final = b"\r"
MAX_LINE: Final = 128
"""Longest line in either direction, terminator included."""
VALVES: Final = 8
MODE_TTL: Final = 1
"""TTL straight-through: TTL input ``v`` opens (high) or closes (low) valve ``v``."""
MODE_ONE_ON: Final = 2
"""One-on: opening any valve closes every other one."""
MODE_PRESELECT: Final = 4
"""Preselect ``4/v``: when a close leaves no valve open, valve ``v`` opens (rest solution)."""
MODE_MASTER: Final = 5
"""Master ``5/v``: valve ``v`` is open exactly while any other valve is open."""
_PARAM_MODES: Final = frozenset({MODE_PRESELECT, MODE_MASTER})

ValveState = Literal["closed", "open", "unplugged", "shorted"]
_STATE_CHARS: Final[dict[ValveState, str]] = {
    "closed": "0", "open": "1", "unplugged": "U", "shorted": "S",
}
_CHAR_STATES: Final = {c: s for s, c in _STATE_CHARS.items()}


class ErrorCode(IntEnum):
    """Numbered errors in ``R<n> ERR <code>`` replies."""

    SYNTAX = 1
    BAD_VALVE = 2
    MODE_CONFLICT = 3
    SPILL_LATCHED = 4
    VALVE_UNPLUGGED = 5
    VALVE_SHORTED = 6


# --------------------------------------------------------------------------- commands


def _check_address(address: int) -> None:
    if not 0 <= address <= 9:
        raise ValueError(f"device address must be 0-9, got {address}")


def _check_valve(valve: int) -> None:
    if not 1 <= valve <= VALVES:
        raise ValueError(f"valve must be 1-{VALVES}, got {valve}")


@dataclass(frozen=True)
class ModeSpec:
    """One mode of an ``M+``/``M-`` list: ``number`` 1-9, ``valve`` for modes 4 and 5."""

    number: int
    valve: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.number <= 9:
            raise ValueError(f"mode must be 1-9, got {self.number}")
        if self.valve is not None:
            _check_valve(self.valve)
            if self.number not in _PARAM_MODES:
                raise ValueError(f"mode {self.number} takes no valve")

    def text(self) -> str:
        return str(self.number) if self.valve is None else f"{self.number}/{self.valve}"


@dataclass(frozen=True)
class _Addressed:
    address: int

    def __post_init__(self) -> None:
        _check_address(self.address)


@dataclass(frozen=True)
class OpenAll(_Addressed):
    """``ATnO``: open every valve (refused in one-on mode)."""


@dataclass(frozen=True)
class CloseAll(_Addressed):
    """``ATnC``: close every valve, the preselected one included."""


@dataclass(frozen=True)
class OpenValve(_Addressed):
    """``ATnV+v``"""

    valve: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_valve(self.valve)


@dataclass(frozen=True)
class CloseValve(_Addressed):
    """``ATnV-v``"""

    valve: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_valve(self.valve)


@dataclass(frozen=True)
class SetModes(_Addressed):
    """``ATnM+x,x/y,...`` (``on``) or ``ATnM-x,...``: activate or deactivate modes."""

    on: bool = True
    modes: tuple[ModeSpec, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.modes or len({m.number for m in self.modes}) != len(self.modes):
            raise ValueError("a mode list needs 1-9 distinct modes")
        if self.on and any((m.number in _PARAM_MODES) != (m.valve is not None)
                           for m in self.modes):
            raise ValueError("modes 4 and 5 need a valve when activated")
        if not self.on and any(m.valve is not None for m in self.modes):
            raise ValueError("deactivating a mode takes no valve")


@dataclass(frozen=True)
class QueryStatus(_Addressed):
    """``ATnS?`` (extension): valve states, active modes and the spill latch."""


@dataclass(frozen=True)
class Identify(_Addressed):
    """``ATnI?`` (extension): model, serial number, firmware."""


@dataclass(frozen=True)
class AcknowledgeSpill(_Addressed):
    """``ATnA`` (extension): clear the spill latch (the front-panel acknowledge)."""


Command = (
    OpenAll | CloseAll | OpenValve | CloseValve | SetModes | QueryStatus | Identify
    | AcknowledgeSpill
)

_PLAIN: Final[dict[type[Command], str]] = {
    OpenAll: "O", CloseAll: "C", QueryStatus: "S?", Identify: "I?", AcknowledgeSpill: "A",
}
_PLAIN_BY_TEXT: Final = {text: cls for cls, text in _PLAIN.items()}


def encode_command(command: Command) -> bytes:
    """The wire bytes of one command, without the terminator."""
    match command:
        case OpenValve(address=a, valve=v):
            body = f"V+{v}"
        case CloseValve(address=a, valve=v):
            body = f"V-{v}"
        case SetModes(address=a, on=on, modes=modes):
            body = "M" + ("+" if on else "-") + ",".join(m.text() for m in modes)
        case _:
            a, body = command.address, _PLAIN[type(command)]
    return f"AT{a}{body}".encode("ascii")


_AT = re.compile(r"AT(\d)(.*)", re.IGNORECASE | re.DOTALL | re.ASCII)
_VALVE_CMD = re.compile(r"V([+-])(\d{1,2})", re.ASCII)
_MODE_ITEM = re.compile(r"(\d)(?:/(\d{1,2}))?", re.ASCII)


def command_from_bytes(raw: bytes) -> Command | ErrorReply | None:
    """Instrument side: :func:`parse_command` for one raw line (terminator stripped). A line
    with non-printable bytes is a syntax error if it starts ``AT<digit>``, else ignored."""
    try:
        text = _text(raw)
    except ProtocolError:
        head = _AT.match(raw[:3].decode("ascii", "replace"))
        return None if head is None else ErrorReply(int(head[1]), ErrorCode.SYNTAX)
    return parse_command(text)


def parse_command(text: str) -> Command | ErrorReply | None:
    """Instrument side: one line to a command, the error reply to send back, or None for a
    line that does not start with ``AT<digit>`` (nobody on the chain answers it)."""
    match = _AT.fullmatch(text.strip())
    if match is None:
        return None
    address, body = int(match[1]), match[2].strip().upper()
    if body in _PLAIN_BY_TEXT:
        return _PLAIN_BY_TEXT[body](address)
    if valve := _VALVE_CMD.fullmatch(body):
        number = int(valve[2])
        if not 1 <= number <= VALVES:
            return ErrorReply(address, ErrorCode.BAD_VALVE)
        cls = OpenValve if valve[1] == "+" else CloseValve
        return cls(address, number)
    if body[:2] in ("M+", "M-"):
        return _parse_modes(address, body[0:2] == "M+", body[2:])
    return ErrorReply(address, ErrorCode.SYNTAX)


def _parse_modes(address: int, on: bool, text: str) -> SetModes | ErrorReply:
    """Valves given with ``M-`` are accepted and ignored, as the manual's syntax allows."""
    specs: list[ModeSpec] = []
    for item in text.split(","):
        match = _MODE_ITEM.fullmatch(item.strip())
        if match is None or match[1] == "0":
            return ErrorReply(address, ErrorCode.SYNTAX)
        number, valve = int(match[1]), None if match[2] is None else int(match[2])
        needs_valve = number in _PARAM_MODES
        if (valve is not None and not needs_valve) or (on and needs_valve and valve is None):
            return ErrorReply(address, ErrorCode.SYNTAX)
        if valve is not None and not 1 <= valve <= VALVES:
            return ErrorReply(address, ErrorCode.BAD_VALVE)
        specs.append(ModeSpec(number, valve if on else None))
    if len({s.number for s in specs}) != len(specs):
        return ErrorReply(address, ErrorCode.MODE_CONFLICT)
    return SetModes(address, on, tuple(specs))


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class OkReply:
    """``R<n> OK``: a setting command was carried out."""

    address: int


@dataclass(frozen=True)
class ErrorReply:
    """``R<n> ERR <code>``"""

    address: int
    code: int

    def __post_init__(self) -> None:
        _check_address(self.address)
        if not 1 <= self.code <= 99:
            raise ValueError(f"error code must be 1-99, got {self.code}")


@dataclass(frozen=True)
class StatusReply:
    """``R<n> ST V=<8 valve chars> M=<modes or -> SPILL=<0|1>``"""

    address: int
    valves: tuple[ValveState, ...]
    modes: tuple[ModeSpec, ...] = ()
    spill_latched: bool = False

    def __post_init__(self) -> None:
        _check_address(self.address)
        if len(self.valves) != VALVES or any(v not in _STATE_CHARS for v in self.valves):
            raise ValueError(f"need {VALVES} valve states")
        if list(self.modes) != sorted(self.modes, key=lambda m: m.number) or len(
            {m.number for m in self.modes}
        ) != len(self.modes):
            raise ValueError("modes must be distinct and sorted by number")


_TOKEN = re.compile(r"[A-Za-z0-9._\-]{1,32}")


@dataclass(frozen=True)
class IdentityReply:
    """``R<n> ID MODEL=<m> SERIAL=<s> FW=<f>``"""

    address: int
    model: str
    serial: str
    firmware: str

    def __post_init__(self) -> None:
        _check_address(self.address)
        for value in (self.model, self.serial, self.firmware):
            if not _TOKEN.fullmatch(value):
                raise ValueError(f"not an identity token: {value!r}")


Reply = OkReply | ErrorReply | StatusReply | IdentityReply


def format_reply(reply: Reply) -> bytes:
    """The wire bytes of one reply, without the terminator."""
    match reply:
        case OkReply(address=a):
            body = "OK"
        case ErrorReply(address=a, code=code):
            body = f"ERR {code}"
        case StatusReply(address=a, valves=valves, modes=modes, spill_latched=spill):
            chars = "".join(_STATE_CHARS[v] for v in valves)
            mode_text = ",".join(m.text() for m in modes) or "-"
            body = f"ST V={chars} M={mode_text} SPILL={int(spill)}"
        case IdentityReply(address=a, model=model, serial=serial, firmware=fw):
            body = f"ID MODEL={model} SERIAL={serial} FW={fw}"
    return f"R{a} {body}".encode("ascii")


_REPLY = re.compile(r"R(\d) (OK|ERR|ST|ID)(?: (.*))?", re.DOTALL | re.ASCII)
_ERR = re.compile(r"(\d{1,2})", re.ASCII)
_STATUS = re.compile(r"V=([01US]{8}) M=(-|[0-9/,]{1,40}) SPILL=([01])", re.ASCII)
_IDENTITY = re.compile(
    r"MODEL=([A-Za-z0-9._\-]{1,32}) SERIAL=([A-Za-z0-9._\-]{1,32}) FW=([A-Za-z0-9._\-]{1,32})"
)


def parse_reply(line: str | bytes) -> Reply:
    """Host side: one reply line (terminator stripped) to a reply; :class:`ProtocolError`
    for anything else."""
    text = _text(line)
    match = _REPLY.fullmatch(text)
    if match is None:
        raise ProtocolError(f"not a ValveLink reply: {text[:40]!r}")
    address, kind, rest = int(match[1]), match[2], match[3] or ""
    try:
        if kind == "OK" and not rest:
            return OkReply(address)
        if kind == "ERR" and (err := _ERR.fullmatch(rest)) and int(err[1]) > 0:
            return ErrorReply(address, int(err[1]))
        if kind == "ST" and (st := _STATUS.fullmatch(rest)):
            valves = tuple(_CHAR_STATES[c] for c in st[1])
            return StatusReply(address, valves, _parse_mode_list(st[2]), st[3] == "1")
        if kind == "ID" and (ident := _IDENTITY.fullmatch(rest)):
            return IdentityReply(address, ident[1], ident[2], ident[3])
    except ValueError as exc:  # a field out of range
        raise ProtocolError(f"bad {kind} reply: {text[:40]!r}: {exc}") from exc
    raise ProtocolError(f"malformed {kind} reply: {text[:40]!r}")


def _text(line: str | bytes) -> str:
    """A line's text; LF bytes are dropped (a terminal sending CR LF works)."""
    if isinstance(line, str):
        return line
    raw = line.replace(b"\n", b"")
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise ProtocolError(f"line holds non-printable bytes: {raw[:32]!r}")
    return raw.decode("ascii")


def _parse_mode_list(text: str) -> tuple[ModeSpec, ...]:
    if text == "-":
        return ()
    specs = []
    for item in text.split(","):
        match = _MODE_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"bad mode {item!r}")
        specs.append(ModeSpec(int(match[1]), None if match[2] is None else int(match[2])))
    return tuple(specs)


"""The amplifier's wire format: tagged ASCII lines over TCP (pure code: bytes in, frames out).

The MultiClamp 700B is driven through its Commander's message API (``AxMultiClampMsg``);
a lab PC exposes it on TCP with a small bridge, as acq4 does, one request and one reply a
line (``docs/protocols/amplifier.md``)::

    request  <tag> <Verb>[ <arg>]...\\n          17 SetMode 1 VC
    reply    <tag> OK[ <key>=<value>]...\\n       17 OK
             <tag> ERR <code> <text>\\n           17 ERR 6002 commander not open

``tag`` (1-999999) pairs a reply with its request, so a late reply is never taken for the
answer to another command. Verbs are the API's function names without ``MCCMSG_``; the
channel, where a verb takes one, is its first argument. Error codes are the API's
(6000-6006, :data:`MCC_ERRORS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from drivers.errors import ProtocolError

__all__ = [
    "EOL", "MAX_LINE", "MAX_TAG", "MCC_COMMAND_FAIL", "MCC_ERRORS", "MCC_INVALID_PARAMETER",
    "MCC_MSG_TIMEOUT", "MCC_NOT_OPEN", "ErrorReply", "Reply", "Request", "decode_reply",
    "decode_request", "encode_reply", "encode_request", "tag_of",
]

EOL: Final = b"\n"
MAX_LINE: Final = 512
MAX_TAG: Final = 999_999

MCC_NOT_OPEN: Final = 6002
MCC_INVALID_PARAMETER: Final = 6004
MCC_MSG_TIMEOUT: Final = 6005
MCC_COMMAND_FAIL: Final = 6006
MCC_ERRORS: Final = {
    6000: "no error", 6001: "out of memory", 6002: "commander not open",
    6003: "invalid DLL handle", 6004: "invalid parameter", 6005: "message timeout",
    6006: "command failed",
}  # fmt: skip

_VERB = re.compile(r"[A-Z][A-Za-z0-9]{1,47}")
_KEY = re.compile(r"[a-z][a-z0-9_]{0,47}")
_VALUE = re.compile(r"[A-Za-z0-9_.+\-]{1,64}")


@dataclass(frozen=True)
class Request:
    tag: int
    verb: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reply:
    tag: int
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorReply:
    tag: int
    code: int
    text: str


def _tag(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 6 or raw.startswith(b"0"):
        raise ProtocolError(f"bad tag {raw[:12]!r}")
    return int(raw)


def _ascii(line: bytes) -> list[bytes]:
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line of {len(line)} bytes exceeds {MAX_LINE}")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise ProtocolError("non-printable byte in line")
    return line.split(b" ")


def encode_request(request: Request) -> bytes:
    """``request`` as one line, terminator included; ValueError for what cannot be sent."""
    if not 1 <= request.tag <= MAX_TAG:
        raise ValueError(f"tag must be 1-{MAX_TAG}")
    if not _VERB.fullmatch(request.verb):
        raise ValueError(f"bad verb {request.verb!r}")
    for arg in request.args:
        if not _VALUE.fullmatch(arg):
            raise ValueError(f"bad argument {arg!r}")
    return " ".join((str(request.tag), request.verb, *request.args)).encode() + EOL


def decode_request(line: bytes) -> Request:
    """One request line (terminator stripped); :class:`ProtocolError` if malformed."""
    parts = _ascii(line)
    if len(parts) < 2:
        raise ProtocolError("a request is '<tag> <Verb> [args]'")
    verb = parts[1].decode()
    if not _VERB.fullmatch(verb):
        raise ProtocolError(f"bad verb {verb[:48]!r}")
    args = tuple(p.decode() for p in parts[2:])
    for arg in args:
        if not _VALUE.fullmatch(arg):
            raise ProtocolError(f"bad argument {arg[:64]!r}")
    return Request(_tag(parts[0]), verb, args)


def encode_reply(reply: Reply | ErrorReply) -> bytes:
    if isinstance(reply, ErrorReply):
        text = " ".join(reply.text.split())[:200] or MCC_ERRORS.get(reply.code, "error")
        safe = "".join(c if 0x20 <= ord(c) <= 0x7E else "?" for c in text)
        return f"{reply.tag} ERR {reply.code} {safe}".encode() + EOL
    for key, value in reply.values.items():
        if not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise ValueError(f"bad reply field {key}={value!r}")
    fields = [f"{k}={v}" for k, v in reply.values.items()]
    return " ".join((str(reply.tag), "OK", *fields)).encode() + EOL


def decode_reply(line: bytes) -> Reply | ErrorReply:
    """One reply line (terminator stripped); :class:`ProtocolError` if malformed."""
    parts = _ascii(line)
    if len(parts) < 2:
        raise ProtocolError("a reply is '<tag> OK ...' or '<tag> ERR <code> <text>'")
    tag = _tag(parts[0])
    if parts[1] == b"ERR":
        if len(parts) < 3 or not parts[2].isdigit() or len(parts[2]) != 4:
            raise ProtocolError("an error reply is '<tag> ERR <4-digit code> <text>'")
        return ErrorReply(tag, int(parts[2]), b" ".join(parts[3:]).decode())
    if parts[1] != b"OK":
        raise ProtocolError(f"expected OK or ERR, got {parts[1][:12]!r}")
    values: dict[str, str] = {}
    for part in parts[2:]:
        key, sep, value = part.decode().partition("=")
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise ProtocolError(f"bad reply field {part[:64]!r}")
        if key in values:
            raise ProtocolError(f"field {key!r} twice")
        values[key] = value
    return Reply(tag, values)


def tag_of(line: bytes) -> int | None:
    """The tag a line starts with, or None: lets a link route a reply it cannot decode."""
    head = line.split(b" ", 1)[0]
    try:
        return _tag(head)
    except ProtocolError:
        return None

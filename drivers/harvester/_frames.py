"""Framing and checksum of the harvester protocol (see :mod:`.codec`).

A frame is one line of printable ASCII ``<body>*<CK>`` ended by CR, where ``CK`` is the XOR
of every byte of ``<body>`` as two hex digits. The body never contains ``*``. Cutting the
byte stream into lines is the link's job (:func:`drivers.serial_link.split_line`, on both
sides); :func:`open_frame` checks one such line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from drivers.errors import ProtocolError

EOL: Final = b"\r"
MAX_LINE: Final = 512
"""Longest frame in either direction, terminator excluded."""

_CHECK = re.compile(rb"[0-9A-Fa-f]{2}")


class ChecksumError(ProtocolError):
    """A frame arrived whole but its checksum does not match its body (line noise)."""

    def __init__(self, expected: int, got: str) -> None:
        super().__init__(f"checksum {got!r} does not match the body (expected {expected:02X})")
        self.expected = expected


@dataclass(frozen=True)
class Frame:
    """A checked frame: its body, checksum and terminator stripped."""

    body: str


def checksum(body: bytes) -> int:
    """XOR of every byte of ``body``."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def seal(body: str) -> bytes:
    """``body`` + ``*`` + checksum, without the terminator (the link or port adds it)."""
    raw = body.encode("ascii")
    if b"*" in raw or any(b < 0x20 or b > 0x7E for b in raw) or len(raw) + 3 > MAX_LINE:
        raise ValueError(f"not a valid frame body: {body[:40]!r}")
    return raw + b"*%02X" % checksum(raw)


def open_frame(line: bytes) -> Frame:
    """Check one line (terminator already stripped) and return its body.

    Raises :class:`ChecksumError` for a whole frame with a wrong checksum and
    :class:`ProtocolError` for anything that is not a frame at all.
    """
    if len(line) > MAX_LINE:
        raise ProtocolError(f"frame of {len(line)} bytes is longer than {MAX_LINE}")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise ProtocolError(f"frame holds non-printable bytes: {line[:32]!r}")
    body, star, check = line.rpartition(b"*")
    if not star or b"*" in body or not _CHECK.fullmatch(check):
        raise ProtocolError(f"no '*<2 hex>' checksum at the end of {line[:40]!r}")
    expected = checksum(body)
    if int(check, 16) != expected:
        raise ChecksumError(expected, check.decode("ascii"))
    return Frame(body.decode("ascii"))


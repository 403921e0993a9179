"""Line framing and number syntax shared by the counter codec (see :mod:`.codec`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from drivers.errors import FrameTooLongError, ProtocolError

MAX_LINE: Final = 4096
"""Longest line in either direction, terminator included."""

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_UINT = re.compile(r"\d{1,12}")
_INT = re.compile(r"-?\d{1,12}")


@dataclass(frozen=True)
class Line:
    """One decoded line: printable ASCII, terminator (and an optional CR) stripped."""

    text: str


def decode_line(buf: bytes | bytearray) -> tuple[Line | None, int]:
    """Decode the first line of ``buf``.

    Returns ``(line, consumed)``, or ``(None, 0)`` when more bytes are needed. Raises
    :class:`FrameTooLongError` when no terminator appears within :data:`MAX_LINE` bytes, and
    :class:`ProtocolError` for a line holding bytes outside printable ASCII; in both cases the
    caller drops bytes up to the next ``\\n`` (:func:`skip_to_next_line`) and carries on.
    """
    end = buf.find(b"\n", 0, MAX_LINE)
    if end < 0:
        if len(buf) >= MAX_LINE:
            raise FrameTooLongError(len(buf), MAX_LINE)
        return None, 0
    raw = bytes(buf[:end])
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise ProtocolError(f"line holds non-printable bytes: {raw[:32]!r}")
    return Line(raw.decode("ascii")), end + 1


def skip_to_next_line(buf: bytes | bytearray) -> int:
    """How many bytes to drop from ``buf`` to resynchronise after a decode error."""
    end = buf.find(b"\n")
    return len(buf) if end < 0 else end + 1


class LineAssembler:
    """Bytes in, lines out, with bounded memory and resync on garbage.

    ``feed`` returns, in order, each complete :class:`Line` or the :class:`ProtocolError`
    that replaced a bad line (one item per ``\\n``-terminated input line, so a server can
    answer every line exactly once). The internal buffer never exceeds :data:`MAX_LINE`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Line | ProtocolError]:
        out: list[Line | ProtocolError] = []
        for start in range(0, len(data), MAX_LINE):
            self._buf.extend(data[start : start + MAX_LINE])
            self._drain(out)
        return out

    def _drain(self, out: list[Line | ProtocolError]) -> None:
        while self._buf:
            if self._discarding is not None:
                drop = skip_to_next_line(self._buf)
                ended = self._buf[drop - 1 : drop] == b"\n"
                del self._buf[:drop]
                if not ended:
                    return
                out.append(self._discarding)
                self._discarding = None
                continue
            try:
                line, used = decode_line(self._buf)
            except ProtocolError as exc:
                self._discarding = exc
                continue
            if line is None:
                return
            del self._buf[:used]
            out.append(line)


def encode_line(text: str) -> bytes:
    """Terminate ``text`` for the wire, checking it is printable ASCII and short enough."""
    raw = text.encode("ascii")
    if any(b < 0x20 or b > 0x7E for b in raw) or len(raw) + 1 > MAX_LINE:
        raise ValueError(f"not a valid protocol line: {text[:40]!r}")
    return raw + b"\n"


# --------------------------------------------------------------------------- numbers


def format_float(value: float) -> str:
    """Shortest text that parses back to exactly ``value`` (``repr``), finite values only."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    return repr(float(value))


def parse_float(line: Line | str) -> float:
    text = line_text(line)
    if not _NUMBER.fullmatch(text):
        raise ProtocolError(f"not a number: {text[:32]!r}")
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number out of range: {text[:32]!r}")
    return value


def parse_int(line: Line | str, *, signed: bool = False) -> int:
    text = line_text(line)
    if not (_INT if signed else _UINT).fullmatch(text):
        raise ProtocolError(f"not an integer: {text[:32]!r}")
    return int(text)


def line_text(line: Line | str) -> str:
    return line.text if isinstance(line, Line) else line

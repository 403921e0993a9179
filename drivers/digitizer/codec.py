"""The digitizer's wire format: checksummed binary frames over TCP (pure code).

Every message, in both directions, is one frame (little-endian)::

    offset  size  field
    0       2     sync 0xA5 0x5A
    2       1     type (below)
    3       1     header check: CRC-8 (poly 0x07) of type and length
    4       4     payload length n (at most the type's bound, LIMITS)
    8       n     payload
    8+n     4     CRC-32 (zlib) of bytes 2 .. 8+n (type, reserved, length, payload)

:class:`FrameDecoder` cuts frames out of a byte stream incrementally with a bounded buffer:
a bad checksum, a header that fails its check (an unknown type, a length beyond the type's
bound, a wrong header CRC: a sync-like pair of bytes inside samples is not taken for a
frame, so it cannot make the decoder wait for a payload that never comes) or bytes that are
not a sync are reported as :class:`Corrupt` (how many bytes were skipped) and the decoder
resynchronises at the next sync; it never raises. :func:`decode_message` turns a frame
into a typed message or raises :class:`~drivers.errors.ProtocolError`. Samples are int16
codes, +-10 V full scale (:data:`VOLTS_PER_CODE`), interleaved by channel.
``docs/protocols/digitizer.md`` has the messages byte by byte.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from drivers.errors import ProtocolError

__all__ = [
    "LIMITS",
    "MAX_PAYLOAD",
    "SYNC",
    "VOLTS_PER_CODE",
    "Ack",
    "Configure",
    "Corrupt",
    "Data",
    "End",
    "Frame",
    "FrameDecoder",
    "Ident",
    "Identify",
    "Message",
    "Overrun",
    "StartStream",
    "StartSweep",
    "Status",
    "StatusReply",
    "Stop",
    "Upload",
    "decode_message",
    "encode",
    "encode_frame",
    "header_check",
]

SYNC: Final = b"\xa5\x5a"
HEADER: Final = struct.Struct("<2sBBI")
CRC: Final = struct.Struct("<I")
MAX_PAYLOAD: Final = 1 << 22  # 4 MiB: two million samples of command waveform
VOLTS_PER_CODE: Final = 10.0 / 32768
MAX_CHANNELS: Final = 16
Codes = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Frame:
    type: int
    payload: bytes


@dataclass(frozen=True)
class Corrupt:
    """Bytes skipped to resynchronise (a bad checksum, length or sync)."""

    skipped: int
    why: str


def header_check(kind: int, length: int) -> int:
    """CRC-8 (polynomial 0x07, initial 0) of the type byte and the four length bytes."""
    crc = 0
    for byte in (kind, *length.to_bytes(4, "little")):
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_frame(kind: int, payload: bytes) -> bytes:
    limit = LIMITS.get(kind, MAX_PAYLOAD)
    if len(payload) > limit:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {limit} for type {kind:#x}")
    head = HEADER.pack(SYNC, kind, header_check(kind, len(payload)), len(payload))
    return head + payload + CRC.pack(zlib.crc32(head[2:] + payload) & 0xFFFFFFFF)


class FrameDecoder:
    """Incremental frame cutter; the buffer never holds more than one maximal frame."""

    def __init__(self, max_payload: int = MAX_PAYLOAD,
                 limits: Mapping[int, int] | None = None) -> None:  # fmt: skip
        self.max_payload = max_payload
        self._limits = limits
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | Corrupt]:
        self._buf += data
        out: list[Frame | Corrupt] = []
        buf = self._buf
        while True:
            start = buf.find(SYNC)
            if start < 0:  # keep a trailing first sync byte, drop the rest
                keep = 1 if buf.endswith(SYNC[:1]) else 0
                if len(buf) - keep:
                    out.append(Corrupt(len(buf) - keep, "no sync"))
                del buf[: len(buf) - keep]
                return out
            if start:
                out.append(Corrupt(start, "no sync"))
                del buf[:start]
            if len(buf) < HEADER.size:
                return out
            _, kind, check, length = HEADER.unpack_from(buf)
            limits = LIMITS if self._limits is None else self._limits
            if (kind not in limits or length > min(limits[kind], self.max_payload)
                    or check != header_check(kind, length)):  # fmt: skip
                out.append(Corrupt(1, "impossible header"))
                del buf[:1]
                continue
            end = HEADER.size + length + CRC.size
            if len(buf) < end:
                return out
            payload = bytes(buf[HEADER.size : HEADER.size + length])
            (crc,) = CRC.unpack_from(buf, end - CRC.size)
            if zlib.crc32(bytes(buf[2 : HEADER.size + length])) & 0xFFFFFFFF != crc:
                out.append(Corrupt(1, "bad checksum"))
                del buf[:1]  # the frame may have been a false sync: look again after it
                continue
            out.append(Frame(kind, payload))
            del buf[:end]


# ---------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Identify:
    tag: int


@dataclass(frozen=True)
class Configure:
    tag: int
    rate_hz: int
    inputs: tuple[int, ...]  # analog input numbers, in frame order
    output: int  # the analog output the command waveform drives


@dataclass(frozen=True, eq=False)
class Upload:
    tag: int
    samples: Codes  # the command waveform, one period / one sweep

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Upload) and other.tag == self.tag \
            and np.array_equal(other.samples, self.samples)  # fmt: skip

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class StartSweep:
    tag: int
    acquisition: int  # the host's id, echoed in every data frame
    samples: int  # per channel


@dataclass(frozen=True)
class StartStream:
    tag: int
    acquisition: int


@dataclass(frozen=True)
class Stop:
    tag: int


@dataclass(frozen=True)
class Status:
    tag: int


@dataclass(frozen=True)
class Ack:
    tag: int
    code: int  # 0: done; otherwise the digitizer's error (docs/protocols/digitizer.md)
    text: str = ""


@dataclass(frozen=True)
class Ident:
    tag: int
    inputs: int
    outputs: int
    max_rate_hz: int
    model: str


@dataclass(frozen=True)
class StatusReply:
    tag: int
    running: bool
    rate_hz: int
    overruns: int


@dataclass(frozen=True, eq=False)
class Data:
    seq: int  # consecutive within an acquisition, from 0
    acquisition: int
    first_sample: int  # index of the frame's first sample (per channel) in the acquisition
    samples: Codes  # shape (n, channels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Data) and (other.seq, other.acquisition, other.first_sample) \
            == (self.seq, self.acquisition, self.first_sample) \
            and np.array_equal(other.samples, self.samples)  # fmt: skip

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class End:
    acquisition: int
    samples: int  # per channel, all sent
    frames: int  # data frames sent


@dataclass(frozen=True)
class Overrun:
    """The digitizer's own buffer overflowed: these samples are gone."""

    acquisition: int
    first_sample: int
    lost: int


Message = (Identify | Configure | Upload | StartSweep | StartStream | Stop | Status | Ack
           | Ident | StatusReply | Data | End | Overrun)  # fmt: skip

_TAG = struct.Struct("<H")
_CONFIGURE = struct.Struct("<HIBB")  # tag, rate, output, n inputs; then n bytes
_SWEEP = struct.Struct("<HII")
_STREAM = struct.Struct("<HI")
_ACK = struct.Struct("<HH")
_IDENT = struct.Struct("<HBBI")
_STATUS = struct.Struct("<HBII")
_DATA = struct.Struct("<IIQBBH")  # seq, acquisition, first, channels, reserved, n
_END = struct.Struct("<IQI")
_OVERRUN = struct.Struct("<IQI")
TYPES: Final = {Identify: 0x01, Configure: 0x02, Upload: 0x03, StartSweep: 0x04,
                StartStream: 0x05, Stop: 0x06, Status: 0x07, Ack: 0x80, Ident: 0x81,
                StatusReply: 0x82, Data: 0x90, End: 0x91, Overrun: 0x92}  # fmt: skip
_BY_TYPE: Final = {v: k for k, v in TYPES.items()}
_DATA_MAX = _DATA.size + 2 * MAX_CHANNELS * 65535
LIMITS: Final[Mapping[int, int]] = {
    0x01: 2, 0x02: _CONFIGURE.size + MAX_CHANNELS, 0x03: MAX_PAYLOAD, 0x04: _SWEEP.size,
    0x05: _STREAM.size, 0x06: 2, 0x07: 2, 0x80: _ACK.size + 200, 0x81: _IDENT.size + 200,
    0x82: _STATUS.size, 0x90: _DATA_MAX, 0x91: _END.size, 0x92: _OVERRUN.size,
}  # fmt: skip
"""The largest payload each message type can have: a header claiming more is not one."""


def _payload(m: Message) -> bytes:
    match m:
        case Identify() | Stop() | Status():
            return _TAG.pack(m.tag)
        case Configure():
            return _CONFIGURE.pack(m.tag, m.rate_hz, m.output, len(m.inputs)) + bytes(m.inputs)
        case Upload():
            return _TAG.pack(m.tag) + np.asarray(m.samples, dtype="<i2").tobytes()
        case StartSweep():
            return _SWEEP.pack(m.tag, m.acquisition, m.samples)
        case StartStream():
            return _STREAM.pack(m.tag, m.acquisition)
        case Ack():
            return _ACK.pack(m.tag, m.code) + m.text.encode("utf-8")[:200]
        case Ident():
            return _IDENT.pack(m.tag, m.inputs, m.outputs, m.max_rate_hz) + m.model.encode()[:200]
        case StatusReply():
            return _STATUS.pack(m.tag, int(m.running), m.rate_hz, m.overruns)
        case Data():
            n, ch = m.samples.shape
            head = _DATA.pack(m.seq, m.acquisition, m.first_sample, ch, 0, n)
            return head + np.asarray(m.samples, dtype="<i2").tobytes()
        case End():
            return _END.pack(m.acquisition, m.samples, m.frames)
        case Overrun():
            return _OVERRUN.pack(m.acquisition, m.first_sample, m.lost)
    raise TypeError(f"not a digitizer message: {m!r}")


def encode(message: Message) -> bytes:
    """One message as one frame."""
    return encode_frame(TYPES[type(message)], _payload(message))


def _unpack(layout: struct.Struct, payload: bytes, name: str) -> tuple[int, ...]:
    if len(payload) < layout.size:
        raise ProtocolError(f"{name}: {len(payload)} bytes, need {layout.size}")
    return layout.unpack_from(payload)


def _exact(layout: struct.Struct, payload: bytes, name: str) -> tuple[int, ...]:
    if len(payload) != layout.size:
        raise ProtocolError(f"{name}: {len(payload)} bytes, expected {layout.size}")
    return layout.unpack(payload)


def decode_message(frame: Frame) -> Message:
    """The typed message in ``frame``; :class:`ProtocolError` if it is not one."""
    kind = _BY_TYPE.get(frame.type)
    p = frame.payload
    if kind is None:
        raise ProtocolError(f"unknown frame type 0x{frame.type:02x}")
    name = kind.__name__
    if kind in (Identify, Stop, Status):
        return kind(*_exact(_TAG, p, name))
    if kind is Configure:
        tag, rate, output, n = _unpack(_CONFIGURE, p, name)
        if len(p) != _CONFIGURE.size + n or not 1 <= n <= MAX_CHANNELS:
            raise ProtocolError(f"{name}: {n} inputs in {len(p)} bytes")
        return Configure(tag, rate, tuple(p[_CONFIGURE.size :]), output)
    if kind is Upload:
        if len(p) < 2 or len(p) % 2:
            raise ProtocolError(f"{name}: odd length {len(p)}")
        (tag,) = _TAG.unpack_from(p)
        return Upload(tag, np.frombuffer(p, dtype="<i2", offset=2).astype(np.int16))
    if kind is StartSweep:
        return StartSweep(*_exact(_SWEEP, p, name))
    if kind is StartStream:
        return StartStream(*_exact(_STREAM, p, name))
    if kind is Ack:
        tag, code = _unpack(_ACK, p, name)
        return Ack(tag, code, p[_ACK.size :].decode("utf-8", "replace"))
    if kind is Ident:
        tag, ins, outs, rate = _unpack(_IDENT, p, name)
        return Ident(tag, ins, outs, rate, p[_IDENT.size :].decode("utf-8", "replace"))
    if kind is StatusReply:
        tag, running, rate, overruns = _exact(_STATUS, p, name)
        return StatusReply(tag, bool(running), rate, overruns)
    if kind is Data:
        seq, acq, first, ch, _, n = _unpack(_DATA, p, name)
        if not 1 <= ch <= MAX_CHANNELS or len(p) != _DATA.size + 2 * n * ch:
            raise ProtocolError(f"{name}: {n} x {ch} samples in {len(p)} bytes")
        codes = np.frombuffer(p, dtype="<i2", offset=_DATA.size).astype(np.int16)
        return Data(seq, acq, first, codes.reshape(n, ch))
    if kind is End:
        return End(*_exact(_END, p, name))
    return Overrun(*_exact(_OVERRUN, p, name))

"""The sweep spool: each recorded sweep made durable the moment it is complete.

A patch-clamp run's raw samples never go through the journal's documents or MQTT (2
channels x 100 kHz would swamp both): each sweep is appended to one file per run, checksummed
and flushed to disk (fsync) *before* its summary document is journaled, so a summary in the
journal always has its samples on disk. The run's NWB file is written from the spool, and
rebuilt from it after a crash: a daemon killed mid-recording loses at most the sweep in
progress, which was never appended.

The file is ``MAGIC`` then records, each::

    b"SWP1" | u32 length | u32 crc32(payload) | payload        (little-endian)
    payload = u32 meta_length | meta (UTF-8 JSON) | samples (int16, channel after channel)

``meta`` is JSON-able: the sweep's ``index`` and whatever the recorder keeps with it (the
stimulus, the amplifier's telegraph, the bath's solution, timing), and ``channels``: each
channel's ``name``, ``unit``, ``scale`` (units per count) and sample count ``n``.

Reading back (:func:`read_spool`) never raises for what a crash or a bad disk leaves: a
record cut short at the end (the sweep being written when the daemon died) is reported as
``torn_tail_bytes``; a record whose checksum fails is reported in ``damaged`` (its byte
offset) and skipped, the reader resynchronising on the next record marker; a sweep index
seen twice keeps its first copy (``duplicates``). Opening a spool for appending cuts a torn
tail off first, so new records follow the last good one.

Blocking file I/O: call these on a worker thread (``asyncio.to_thread``), never on the
event loop.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self

import numpy as np
import numpy.typing as npt

__all__ = ["MAGIC", "SpoolContents", "SpoolError", "SpooledSweep", "SweepSpool", "read_spool"]

MAGIC = b"ASSAY-SPOOL/1\n"
_MARK = b"SWP1"
_HEAD = struct.Struct("<4sII")
_META_LEN = struct.Struct("<I")
MAX_RECORD_BYTES = 256 * 1024 * 1024  # 8 channels x 100 kHz x 60 s x 2 bytes is 96 MiB


class SpoolError(Exception):
    """The spool cannot be used: not a spool file, or a sweep that cannot be encoded."""


@dataclass(frozen=True)
class SpooledSweep:
    """One sweep: its metadata and each channel's int16 samples (``scale`` units/count)."""

    index: int
    meta: Mapping[str, Any]
    channels: Mapping[str, npt.NDArray[np.int16]]
    units: Mapping[str, str] = field(default_factory=dict)
    scales: Mapping[str, float] = field(default_factory=dict)

    def scaled(self, name: str) -> npt.NDArray[np.float64]:
        """Channel ``name`` in its unit."""
        return self.channels[name].astype(np.float64) * self.scales.get(name, 1.0)


@dataclass
class SpoolContents:
    sweeps: list[SpooledSweep] = field(default_factory=list)
    torn_tail_bytes: int = 0  # a record cut short at the end (the sweep being written)
    damaged: list[int] = field(default_factory=list)  # byte offsets of records failing CRC
    duplicates: list[int] = field(default_factory=list)  # sweep indices seen again
    good_end: int = len(MAGIC)  # where the last good record ends


def _encode(sweep: SpooledSweep) -> bytes:
    channels = []
    blobs = []
    for name, samples in sweep.channels.items():
        arr = np.ascontiguousarray(samples, dtype="<i2")
        scale = float(sweep.scales.get(name, 1.0))
        channels.append({"name": name, "unit": sweep.units.get(name, ""), "scale": scale,
                         "n": int(arr.size)})  # fmt: skip
        blobs.append(arr.tobytes())
    try:
        meta = json.dumps({**sweep.meta, "index": sweep.index, "channels": channels},
                          allow_nan=False, separators=(",", ":")).encode()  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise SpoolError(f"sweep {sweep.index}: metadata is not JSON-able ({exc})") from exc
    payload = b"".join([_META_LEN.pack(len(meta)), meta, *blobs])
    if len(payload) > MAX_RECORD_BYTES:
        raise SpoolError(f"sweep {sweep.index}: {len(payload)} bytes, above {MAX_RECORD_BYTES}")
    return _HEAD.pack(_MARK, len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> SpooledSweep:
    """ValueError (any kind) if the payload does not hold a sweep."""
    (meta_len,) = _META_LEN.unpack_from(payload)
    meta = json.loads(payload[4 : 4 + meta_len])
    if not isinstance(meta, dict) or not isinstance(meta.get("index"), int):
        raise ValueError("no sweep index")  # noqa: TRY004 - read_spool catches ValueError
    offset = 4 + meta_len
    channels: dict[str, npt.NDArray[np.int16]] = {}
    units: dict[str, str] = {}
    scales: dict[str, float] = {}
    for ch in meta.pop("channels"):
        n = int(ch["n"])
        end = offset + 2 * n
        if n < 0 or end > len(payload):
            raise ValueError("samples cut short")
        channels[str(ch["name"])] = np.frombuffer(payload[offset:end], dtype="<i2").astype(
            np.int16)
        units[str(ch["name"])] = str(ch.get("unit", ""))
        scales[str(ch["name"])] = float(ch.get("scale", 1.0))
        offset = end
    if offset != len(payload):
        raise ValueError("bytes after the samples")
    index = meta.pop("index")
    return SpooledSweep(index, meta, channels, units, scales)


def read_spool(path: Path) -> SpoolContents:
    """Every good sweep of the spool at ``path``, in file order (see the module docstring);
    SpoolError if the file is not a spool."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise SpoolError(f"{path}: not a sweep spool (no {MAGIC!r} header)")
    out = SpoolContents()
    seen: set[int] = set()
    pos = len(MAGIC)
    while pos < len(data):
        if len(data) - pos < _HEAD.size:
            out.torn_tail_bytes = len(data) - pos
            break
        mark, length, crc = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if mark == _MARK and length <= MAX_RECORD_BYTES and end > len(data) \
                and data.find(_MARK, pos + _HEAD.size) < 0:
            # cut short, and nothing after it: the sweep being written at the crash
            out.torn_tail_bytes = len(data) - pos
            break
        payload = data[pos + _HEAD.size : end]
        sweep = None
        if mark == _MARK and length <= MAX_RECORD_BYTES and zlib.crc32(payload) == crc:
            try:
                sweep = _decode(payload)
            except (ValueError, KeyError, TypeError, struct.error):
                sweep = None
        if sweep is None:
            out.damaged.append(pos)
            nxt = data.find(_MARK, pos + 1)
            if nxt < 0:  # nothing after it to resynchronise on
                break
            pos = nxt
            continue
        if sweep.index in seen:
            out.duplicates.append(sweep.index)
        else:
            seen.add(sweep.index)
            out.sweeps.append(sweep)
        pos = end
        out.good_end = end
    return out


class SweepSpool:
    """Append sweeps to one run's spool, each durable (flushed and fsynced) on return.

    ``SweepSpool.open(path)`` creates the file (and its directory) or, for an existing
    spool, reads it back and cuts off a torn tail so the next record follows the last good
    one; ``contents`` is what was there. Blocking: use it on a worker thread.
    """

    def __init__(self, path: Path, fh: BinaryIO, contents: SpoolContents) -> None:
        self.path = path
        self._fh = fh
        self.contents = contents
        self.indices = {s.index for s in contents.sweeps}

    @classmethod
    def open(cls, path: Path) -> Self:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size == 0:
            with path.open("wb") as new:
                new.write(MAGIC)
                new.flush()
                os.fsync(new.fileno())
            _fsync_dir(path.parent)
            contents = SpoolContents()
        else:
            contents = read_spool(path)
        fh = path.open("r+b")
        if contents.torn_tail_bytes:
            fh.truncate(path.stat().st_size - contents.torn_tail_bytes)
        fh.seek(0, os.SEEK_END)
        return cls(path, fh, contents)

    def append(self, sweep: SpooledSweep) -> int:
        """Write ``sweep`` and make it durable; its byte offset. SpoolError for an index the
        spool holds already (a sweep is recorded once)."""
        if sweep.index in self.indices:
            raise SpoolError(f"{self.path}: sweep {sweep.index} is spooled already")
        record = _encode(sweep)
        offset = self._fh.tell()
        self._fh.write(record)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.indices.add(sweep.index)
        return offset

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    """The new file's directory entry made durable too (POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

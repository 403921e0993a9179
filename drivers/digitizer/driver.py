"""The streaming digitizer's driver: configure, upload a command, acquire sweeps or stream.

Codec (:mod:`.codec`) -> link (:mod:`.link`: reader task, replies by tag, a bounded data
queue) -> this driver, which checks every acquisition for completeness: data frames must
come with consecutive sequence numbers and contiguous sample indices, and end with the
digitizer's ``End`` whose totals match. A missing frame, a checksum error, an overrun (the
digitizer's or the host's queue) or a short sweep raises :class:`~drivers.errors.DataLossError`
naming the sample ranges lost; samples are never interpolated or padded. A connection lost
mid-sweep raises :class:`~drivers.errors.LinkError`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from drivers.addresses import parse_tcp_address
from drivers.base import LinkedInstrument, Readings
from drivers.digitizer.codec import (
    VOLTS_PER_CODE,
    Ack,
    Configure,
    Corrupt,
    Data,
    End,
    Ident,
    Identify,
    Message,
    Overrun,
    StartStream,
    StartSweep,
    Status,
    StatusReply,
    Stop,
    Upload,
)  # fmt: skip
from drivers.digitizer.link import DigitizerLink, Lost
from drivers.errors import (
    DataLossError,
    InstrumentError,
    InstrumentReplyError,
    InstrumentTimeoutError,
)  # fmt: skip

__all__ = ["RATE_RANGE_HZ", "DigitizerDriver", "DigitizerIdentity", "Sweep", "to_codes"]

RATE_RANGE_HZ: Final = (10_000, 100_000)
FULL_SCALE_V: Final = 10.0


@dataclass(frozen=True)
class DigitizerIdentity:
    model: str
    inputs: int
    outputs: int
    max_rate_hz: int


@dataclass(frozen=True)
class Sweep:
    """One complete sweep: ``codes`` (samples, channels) int16; volts = codes x
    ``volts_per_code``."""

    acquisition: int
    rate_hz: int
    inputs: tuple[int, ...]
    codes: npt.NDArray[np.int16]
    volts_per_code: float = VOLTS_PER_CODE

    def volts(self, column: int) -> npt.NDArray[np.float64]:
        return self.codes[:, column].astype(np.float64) * self.volts_per_code


def to_codes(volts: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Volts -> DAC codes; ValueError beyond +-10 V (a command is never clipped silently)."""
    v = np.asarray(volts, dtype=np.float64)
    if v.ndim != 1 or not len(v):
        raise ValueError("a command waveform is a non-empty 1-D array of volts")
    if not np.all(np.isfinite(v)) or np.max(np.abs(v)) > FULL_SCALE_V:
        raise ValueError("the command waveform must stay within +-10 V")
    return np.clip(np.round(v / VOLTS_PER_CODE), -32768, 32767).astype(np.int16)


class DigitizerDriver(LinkedInstrument[DigitizerLink]):
    """One digitizer at ``tcp://host:port``."""

    def __init__(self, address: str, *, instrument_id: str = "digitizer",
                 timeout_s: float = 3.0, queue_size: int = 512) -> None:  # fmt: skip
        host, port = parse_tcp_address(address)
        self.address = address
        self.instrument_id = instrument_id
        self.timeout_s = timeout_s
        self._link = DigitizerLink(host, port, timeout_s=timeout_s, queue_size=queue_size,
                                   instrument_id=instrument_id)  # fmt: skip
        self._acquisitions = itertools.count(1)
        self.rate_hz = 0
        self.inputs: tuple[int, ...] = ()
        self._identity: DigitizerIdentity | None = None

    @property
    def host_overruns(self) -> int:
        return self._link.host_overruns

    async def _probe(self) -> None:
        self._identity = await self.identify()

    async def _ask(self, message: Message, tag: int) -> Message:
        reply = await self._link.request(message, tag)
        if isinstance(reply, Ack) and reply.code:
            raise InstrumentReplyError(f"{type(message).__name__} refused ({reply.code}): "
                                       f"{reply.text}", instrument=self.instrument_id,
                                       code=reply.code)  # fmt: skip
        return reply

    async def identify(self) -> DigitizerIdentity:
        tag = self._link.next_tag()
        reply = await self._ask(Identify(tag), tag)
        if not isinstance(reply, Ident):
            raise InstrumentReplyError("Identify: not an identity", instrument=self.instrument_id)
        return DigitizerIdentity(reply.model, reply.inputs, reply.outputs, reply.max_rate_hz)

    async def configure(self, rate_hz: int, inputs: Sequence[int], output: int = 0) -> None:
        """Sample ``inputs`` (analog input numbers, in column order) and drive ``output``
        at ``rate_hz`` per channel (10-100 kHz)."""
        if not RATE_RANGE_HZ[0] <= rate_hz <= RATE_RANGE_HZ[1]:
            raise ValueError("the sample rate must be 10-100 kHz per channel")
        if not inputs or len(set(inputs)) != len(inputs):
            raise ValueError("inputs: one or more distinct analog inputs")
        tag = self._link.next_tag()
        await self._ask(Configure(tag, int(rate_hz), tuple(inputs), output), tag)
        self.rate_hz, self.inputs = int(rate_hz), tuple(inputs)

    async def upload(self, command_v: npt.ArrayLike) -> None:
        """The command waveform (volts at the analog output) for the next sweeps."""
        tag = self._link.next_tag()
        await self._ask(Upload(tag, to_codes(command_v)), tag)

    async def status(self) -> StatusReply:
        tag = self._link.next_tag()
        reply = await self._ask(Status(tag), tag)
        if not isinstance(reply, StatusReply):
            raise InstrumentReplyError("Status: not a status", instrument=self.instrument_id)
        return reply

    async def stop(self) -> None:
        tag = self._link.next_tag()
        await self._ask(Stop(tag), tag)

    def _silence_s(self) -> float:
        return self.timeout_s

    async def acquire_sweep(self, samples: int) -> Sweep:
        """Play the command and record ``samples`` per channel, simultaneously; the whole
        sweep, or :class:`DataLossError` (samples missing: what was lost is named) or
        :class:`LinkError`. After a failure the digitizer is stopped (best effort), so the
        next sweep or configuration finds it idle."""
        if not self.inputs:
            raise ValueError("configure the digitizer before a sweep")
        if samples < 1:
            raise ValueError("a sweep has at least one sample")
        acquisition = next(self._acquisitions)
        self._link.clear_queue()
        tag = self._link.next_tag()
        await self._ask(StartSweep(tag, acquisition, samples), tag)
        try:
            return await self._collect(acquisition, samples)
        except (DataLossError, InstrumentTimeoutError):
            with contextlib.suppress(InstrumentError):
                await self.stop()
            raise

    async def _collect(self, acquisition: int, samples: int) -> Sweep:
        codes = np.zeros((samples, len(self.inputs)), dtype=np.int16)
        check = _Continuity(acquisition, samples, self.instrument_id, self._link.host_overruns)
        while True:
            try:
                event = await self._link.next_event(self._silence_s())
            except InstrumentTimeoutError:
                # no End (lost, or the digitizer stalled): whole if every sample came
                check.silent(host_overruns=self._link.host_overruns)
                return Sweep(acquisition, self.rate_hz, self.inputs, codes)
            if isinstance(event, Lost):
                raise event.error
            if isinstance(event, Data) and event.acquisition == acquisition:
                fit = check.data(event)
                first = event.first_sample
                codes[first : first + fit] = event.samples[:fit]
            elif isinstance(event, (Overrun, Corrupt)):
                check.note(event)
            elif isinstance(event, End) and event.acquisition == acquisition:
                check.end(event, host_overruns=self._link.host_overruns)
                return Sweep(acquisition, self.rate_hz, self.inputs, codes)

    async def stream(self) -> AsyncGenerator[Data, None]:
        """Stream the command, repeated, and the inputs: blocks in order, or
        :class:`DataLossError` at the first hole. Iterate inside
        ``contextlib.aclosing(driver.stream())``: leaving it stops the digitizer at once."""
        acquisition = next(self._acquisitions)
        self._link.clear_queue()
        tag = self._link.next_tag()
        await self._ask(StartStream(tag, acquisition), tag)
        check = _Continuity(acquisition, None, self.instrument_id, self._link.host_overruns)
        try:
            while True:
                event = await self._link.next_event(self._silence_s())
                if isinstance(event, Lost):
                    raise event.error
                if isinstance(event, Overrun | Corrupt):
                    check.note(event)
                elif (isinstance(event, Data) and event.acquisition == acquisition
                      and check.data(event) > 0):  # fmt: skip
                    check.raise_if_lost(self._link.host_overruns)
                    yield event
        finally:
            if self._link.connected:
                await self.stop()

    async def readings(self) -> Readings:
        status = await self.status()
        return Readings("busy" if status.running else "idle", values={
            "rate_khz": status.rate_hz / 1000, "running": status.running,
            "overruns": status.overruns,
        })  # fmt: skip


class _Continuity:
    """Checks one acquisition's frames: sequence, sample indices, totals."""

    def __init__(self, acquisition: int, samples: int | None, instrument: str,
                 host_overruns: int) -> None:  # fmt: skip
        self.acquisition = acquisition
        self.host_overruns_at_start = host_overruns
        self.samples = samples
        self.instrument = instrument
        self.next_seq = 0
        self.next_sample = 0
        self.lost: list[tuple[int, int]] = []
        self.reasons: list[str] = []

    def note(self, event: Overrun | Corrupt) -> None:
        if isinstance(event, Overrun):
            if event.acquisition == self.acquisition:
                self.reasons.append("digitizer overrun")
                self.lost.append((event.first_sample, event.first_sample + event.lost))
        else:
            self.reasons.append(f"frame {event.why}")

    def data(self, event: Data) -> int:
        """How many of ``event``'s samples belong to the acquisition (a frame reaching past
        the end of a sweep is cut there, its samples inside are kept)."""
        n = len(event.samples)
        if event.seq != self.next_seq or event.first_sample != self.next_sample:
            if event.first_sample > self.next_sample:
                self.lost.append((self.next_sample, event.first_sample))
            self.reasons.append(f"frame(s) {self.next_seq}..{event.seq - 1} missing")
        self.next_seq = event.seq + 1
        self.next_sample = max(self.next_sample, event.first_sample + n)
        if self.samples is None:
            return n
        return max(0, min(n, self.samples - event.first_sample))

    def end(self, event: End, *, host_overruns: int) -> None:
        total = self.samples if self.samples is not None else event.samples
        if event.samples < total:
            self.reasons.append(f"the digitizer ended after {event.samples} of {total} samples")
            self.lost.append((event.samples, total))
        if self.next_sample < total:
            missing = event.frames - self.next_seq
            self.reasons.append(f"{missing} frame(s) missing at the end" if missing > 0
                                else "samples missing at the end")  # fmt: skip
            self.lost.append((self.next_sample, total))
        self.raise_if_lost(host_overruns)

    def silent(self, *, host_overruns: int) -> None:
        """The stream went quiet before the End: a loss unless every sample is in."""
        total = self.samples or 0
        if self.next_sample < total:
            self.reasons.append("the data stopped before the end of the sweep")
            self.lost.append((self.next_sample, total))
        self.raise_if_lost(host_overruns)

    def raise_if_lost(self, host_overruns: int) -> None:
        if not self.lost:
            return  # a corrupt frame that cost no sample (a control frame) is no loss
        if host_overruns > self.host_overruns_at_start:
            self.reasons.append("host queue overrun")
        ranges = tuple(_merge(self.lost))
        where = ", ".join(f"{a}-{b - 1}" for a, b in ranges) or "unknown samples"
        raise DataLossError(f"acquisition {self.acquisition}: samples {where} lost "
                            f"({'; '.join(dict.fromkeys(self.reasons))})",
                            instrument=self.instrument, acquisition=self.acquisition,
                            lost=ranges, reasons=tuple(self.reasons))  # fmt: skip


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out

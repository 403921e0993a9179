"""Simulated streaming digitizer on TCP (binary frames, :mod:`drivers.digitizer.codec`),
wired to the shared patch rig: analog output 0 drives the amplifier's command input;
inputs 0/1 are channel 1's primary and secondary outputs, 2/3 channel 2's, the rest float
(a few codes of noise).

A sweep plays the uploaded command (held at its last value past its end) and samples the
inputs simultaneously, paced by the bench clock: frames of at most ``frame_ms`` are sent as
their time passes. The rig's response is computed half a second at a time, ahead, on a
worker thread (the bath and the access as they are then; the membrane potential carried
from block to block). Streaming repeats the command, period by period, until ``Stop``.

Faults (control channel), each for the next acquisition: ``drop_frame`` (one data frame is
not sent), ``corrupt_frame`` (one frame's bytes are damaged in flight), ``overrun`` (the
digitizer's buffer overflows: a frame's samples are replaced by an ``Overrun`` report),
``close_mid_sweep`` (the connection closes half-way), ``stall_mid_sweep`` (data stops
half-way, no ``End``), ``split_frames`` (every frame of it written a few bytes at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import numpy as np
import numpy.typing as npt
import structlog

from drivers.clock import Clock
from drivers.digitizer.codec import (
    VOLTS_PER_CODE,
    Ack,
    Configure,
    Data,
    End,
    Frame,
    FrameDecoder,
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
    decode_message,
    encode,
)  # fmt: skip
from drivers.errors import ProtocolError
from simulators.amplifier import end_connections
from simulators.patch_rig import PatchRig

__all__ = ["DIGITIZER_FAULTS", "DigitizerSimulator"]

_log = structlog.get_logger()
DIGITIZER_FAULTS: Final = ("drop_frame", "corrupt_frame", "overrun", "close_mid_sweep",
                           "stall_mid_sweep", "split_frames")  # fmt: skip
INPUTS: Final = 8
OUTPUTS: Final = 2
MAX_RATE_HZ: Final = 100_000
E_BAD_CONFIG: Final = 1
E_BUSY: Final = 2
E_NOT_READY: Final = 3


class DigitizerSimulator:
    def __init__(self, rig: PatchRig, clock: Clock, *, instrument_id: str = "digitizer",
                 frame_ms: float = 10.0, seed: int = 7) -> None:  # fmt: skip
        self.rig = rig
        self.clock = clock
        self.instrument_id = instrument_id
        self.frame_ms = frame_ms
        self._rng = np.random.default_rng(seed)
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._acq: asyncio.Task[None] | None = None
        self._acq_writer: asyncio.StreamWriter | None = None
        self.rate_hz = 20_000
        self.inputs: tuple[int, ...] = (0,)
        self.output = 0
        self.command = np.zeros(1, dtype=np.int16)
        self.overruns = 0
        self.faults: list[str] = []
        self.frames_sent = 0

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"tcp://{host}:{port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._acq is not None:
            self._acq.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acq
        await end_connections(self._conns)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def inject_fault(self, kind: str) -> None:
        if kind not in DIGITIZER_FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(DIGITIZER_FAULTS)}")
        _log.info("fault injected", instrument=self.instrument_id, kind=kind)
        self.faults.append(kind)

    def snapshot(self) -> dict[str, object]:
        return {"instrument": self.instrument_id, "rate_hz": self.rate_hz,
                "inputs": list(self.inputs), "running": self._running(),
                "overruns": self.overruns, "frames_sent": self.frames_sent}  # fmt: skip

    def _running(self) -> bool:
        return self._acq is not None and not self._acq.done()

    # ------------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        decoder = FrameDecoder()
        try:
            while chunk := await reader.read(1 << 16):
                for item in decoder.feed(chunk):
                    if isinstance(item, Frame):
                        await self._handle(item, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns.pop(task, None)
            if self._acq is not None and not self._acq.done() and self._acq_writer is writer:
                self._acq.cancel()  # its host went away (another connection's goes on)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _handle(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        try:
            m = decode_message(frame)
        except ProtocolError:
            return
        reply = self._reply(m, writer)
        if reply is not None:
            writer.write(encode(reply))
            await writer.drain()

    def _reply(self, m: Message, writer: asyncio.StreamWriter) -> Message | None:
        if isinstance(m, Identify):
            return Ident(m.tag, INPUTS, OUTPUTS, MAX_RATE_HZ, "DIGI-16 SIM")
        if isinstance(m, Status):
            return StatusReply(m.tag, self._running(), self.rate_hz, self.overruns)
        if isinstance(m, Stop):
            if self._acq is not None:
                self._acq.cancel()
            return Ack(m.tag, 0)
        if not isinstance(m, Configure | Upload | StartSweep | StartStream):
            return None
        if self._running():
            return Ack(m.tag, E_BUSY, "an acquisition is running")
        if isinstance(m, Configure):
            bad = [i for i in m.inputs if not 0 <= i < INPUTS]
            if not 10_000 <= m.rate_hz <= MAX_RATE_HZ or bad or not 0 <= m.output < OUTPUTS:
                return Ack(m.tag, E_BAD_CONFIG, "rate 10-100 kHz, inputs 0-7, output 0-1")
            self.rate_hz, self.inputs, self.output = m.rate_hz, m.inputs, m.output
            return Ack(m.tag, 0)
        if isinstance(m, Upload):
            if not len(m.samples):
                return Ack(m.tag, E_BAD_CONFIG, "an empty waveform")
            self.command = m.samples.copy()
            return Ack(m.tag, 0)
        samples = m.samples if isinstance(m, StartSweep) else None
        if samples is not None and samples < 1:
            return Ack(m.tag, E_BAD_CONFIG, "a sweep of no samples")
        self._acq = asyncio.create_task(self._acquire(writer, m.acquisition, samples),
                                        name=f"digitizer-sim-acq-{m.acquisition}")  # fmt: skip
        self._acq_writer = writer
        return Ack(m.tag, 0)

    # ------------------------------------------------------------------ acquiring

    def _command_volts(self, first: int, n: int, *, cyclic: bool) -> npt.NDArray[np.float64]:
        idx = np.arange(first, first + n)
        cmd = self.command
        idx = idx % len(cmd) if cyclic else np.minimum(idx, len(cmd) - 1)
        return cmd[idx].astype(np.float64) * VOLTS_PER_CODE

    def _sample(self, command_v: npt.NDArray[np.float64],
                continuing: bool) -> npt.NDArray[np.int16]:  # fmt: skip
        outputs: dict[int, npt.NDArray[np.float64]] = {}
        for ch in (1, 2):
            if any(i in (2 * ch - 2, 2 * ch - 1) for i in self.inputs):
                drive = command_v if (self.output == ch - 1) else np.zeros_like(command_v)
                outputs[2 * ch - 2], outputs[2 * ch - 1] = self.rig.respond(
                    ch, drive, self.rate_hz, continuing=continuing)
        columns = [outputs.get(i, self._rng.normal(0.0, 3 * VOLTS_PER_CODE, len(command_v)))
                   for i in self.inputs]  # fmt: skip
        volts = np.stack(columns, axis=1)
        return np.clip(np.round(volts / VOLTS_PER_CODE), -32768, 32767).astype(np.int16)

    async def _acquire(self, writer: asyncio.StreamWriter, acq: int, samples: int | None) -> None:
        per_frame = max(1, int(self.rate_hz * self.frame_ms / 1000))
        per_frame = min(per_frame, 60_000 // max(1, len(self.inputs)))
        fault = self.faults.pop(0) if self.faults else None
        total = samples if samples is not None else None
        # the rig's response is computed half a second ahead, on a worker thread, the
        # membrane carried on from block to block
        block = max(per_frame, self.rate_hz // 2)
        seq = first = 0
        start = self.clock.monotonic()
        try:
            while total is None or first < total:
                n_block = block if total is None else min(block, total - first)
                command = self._command_volts(first, n_block, cyclic=total is None)
                codes = await asyncio.to_thread(self._sample, command, first > 0)
                for offset in range(0, n_block, per_frame):
                    part = codes[offset : offset + per_frame]
                    due = start + (first + offset + len(part)) / self.rate_hz
                    wait = due - self.clock.monotonic()
                    if wait > 0:
                        await self.clock.sleep(wait)
                    halfway = total is not None and first + offset >= total // 2
                    if fault == "close_mid_sweep" and halfway:
                        writer.close()
                        return
                    if fault == "stall_mid_sweep" and halfway:
                        await asyncio.Event().wait()
                    wire = encode(Data(seq, acq, first + offset, part))
                    if fault == "overrun" and halfway:
                        self.overruns += 1
                        wire = encode(Overrun(acq, first + offset, len(part)))
                        fault = None
                    elif fault == "drop_frame" and halfway:
                        wire, fault = b"", None
                    elif fault == "corrupt_frame" and halfway:
                        damaged = bytearray(wire)
                        damaged[len(damaged) // 2] ^= 0xFF
                        wire, fault = bytes(damaged), None
                    seq += 1
                    self.frames_sent += 1
                    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)] \
                        if fault == "split_frames" else [wire]  # fmt: skip
                    for piece in pieces:
                        if piece:
                            writer.write(piece)
                            await writer.drain()
                            if len(pieces) > 1:
                                await asyncio.sleep(0)
                first += n_block
            writer.write(encode(End(acq, first, seq)))
            await writer.drain()
        except (ConnectionError, OSError):
            pass



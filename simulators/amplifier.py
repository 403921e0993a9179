"""Simulated MultiClamp 700B behind its Commander's TCP bridge (tagged lines, see
:mod:`drivers.amplifier.codec` and ``docs/protocols/amplifier.md``).

Each connection is served in order, one request at a time, like the Commander's message
queue. The settings live in the shared :class:`~simulators.patch_rig.PatchRig`, which the
digitizer simulator reads when it samples. The auto functions take time on the bench clock
and answer ``ERR 6006`` when they cannot converge: offset beyond +-100 mV, slow or
whole-cell compensation without whole-cell access. A direct VC <-> IC switch is refused
(6004), so a driver that forgets the I=0 step is caught.

Faults (control channel): the rig's (``commander_not_open`` makes every request answer
6002 until ``commander_open``; ``seal_loss``, ``rs_runaway``) and transport faults for the
next reply: ``stall`` (no reply), ``split`` (the reply a byte at a time), ``garbage`` (a
garbled reply), ``close`` (the connection closes instead of replying).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from drivers.amplifier.codec import (
    EOL,
    MAX_LINE,
    MCC_COMMAND_FAIL,
    MCC_INVALID_PARAMETER,
    MCC_NOT_OPEN,
    ErrorReply,
    Reply,
    Request,
    decode_request,
    encode_reply,
)  # fmt: skip
from drivers.clock import Clock
from drivers.errors import FrameTooLongError, ProtocolError
from drivers.serial_link import skip_line, split_line
from simulators.patch_rig import NOISE_A, RIG_FAULTS, ChannelState, PatchRig

__all__ = ["AMPLIFIER_FAULTS", "AmplifierSimulator"]

_log = structlog.get_logger()
TRANSPORT_FAULTS: Final = ("stall", "split", "garbage", "close")
AMPLIFIER_FAULTS: Final = (*RIG_FAULTS, *TRANSPORT_FAULTS)
AUTO_S: Final = {"AutoPipetteOffset": 0.5, "AutoFastComp": 1.0, "AutoSlowComp": 1.5,
                 "AutoWholeCellComp": 2.0}  # fmt: skip
_GAINS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_SIGNALS: Final = ("membrane_current", "membrane_potential", "command")


class _Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise _Refused(MCC_INVALID_PARAMETER, "expected 0 or 1")
    return text == "1"


def _number(text: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Refused(MCC_INVALID_PARAMETER, f"not a number: {text}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _Refused(MCC_INVALID_PARAMETER, f"{text} outside {lo:g}..{hi:g}")
    return value


def _text(value: object) -> str:
    if value is None:
        return "bypass"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class _Setting:
    attr: str
    parse: Callable[[str], object]


def _lpf(text: str) -> float | None:
    return None if text == "bypass" else _number(text, 2_000, 30_000)


def _gain(text: str) -> int:
    if text not in {str(g) for g in _GAINS}:
        raise _Refused(MCC_INVALID_PARAMETER, f"gain {text} is not one of the 700B's")
    return int(text)


def _feedback(text: str) -> float:
    value = _number(text, 1e6, 1e11)
    if value not in NOISE_A:
        raise _Refused(MCC_INVALID_PARAMETER, "feedback resistor 50G, 5G, 500M or 50M")
    return value


def _signal(text: str) -> str:
    if text not in _SIGNALS:
        raise _Refused(MCC_INVALID_PARAMETER, f"primary signal one of {', '.join(_SIGNALS)}")
    return text


SETTINGS: Final = {
    "Holding": _Setting("holding", lambda t: _number(t, -1.0, 1.0)),
    "HoldingEnable": _Setting("holding_enable", _flag),
    "PrimarySignal": _Setting("primary_signal", _signal),
    "PrimarySignalGain": _Setting("gain", _gain),
    "PrimarySignalLPF": _Setting("lpf_hz", _lpf),
    "FeedbackResistor": _Setting("feedback_ohm", _feedback),
    "TestSignalAmplitude": _Setting("test_amplitude_v", lambda t: _number(t, -1.0, 1.0)),
    "TestSignalFrequency": _Setting("test_frequency_hz", lambda t: _number(t, 1, 1000)),
    "TestSignalEnable": _Setting("test_enable", _flag),
    "RsCompEnable": _Setting("rs_enable", _flag),
    "RsCompCorrection": _Setting("rs_correction_pct", lambda t: _number(t, 0, 100)),
    "RsCompPrediction": _Setting("rs_prediction_pct", lambda t: _number(t, 0, 100)),
    "RsCompBandwidth": _Setting("rs_bandwidth_hz", lambda t: _number(t, 300, 20_000)),
}  # fmt: skip


class AmplifierSimulator:
    """The amplifier's control over TCP, on the rig ``rig``."""

    def __init__(self, rig: PatchRig, clock: Clock, *, instrument_id: str = "amplifier",
                 serial: str = "MC700B-SIM-0001") -> None:  # fmt: skip
        self.rig = rig
        self.clock = clock
        self.instrument_id = instrument_id
        self.serial = serial
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._faults: list[str] = []
        self.requests: list[Request] = []
        """Every request served (tests check what a driver sent)."""

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        assert self._server is not None
        return str(self._server.sockets[0].getsockname()[0])

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await end_connections(self._conns)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def inject_fault(self, kind: str) -> None:
        if kind not in AMPLIFIER_FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(AMPLIFIER_FAULTS)}")
        _log.info("fault injected", instrument=self.instrument_id, kind=kind)
        if kind in TRANSPORT_FAULTS:
            self._faults.append(kind)
        else:
            self.rig.inject_fault(kind)

    def snapshot(self) -> dict[str, object]:
        return {"instrument": self.instrument_id, "commander_open": self.rig.commander_open,
                "channels": {n: ch.__dict__ for n, ch in self.rig.channels.items()},
                "rig": self.rig.truth()}  # fmt: skip

    # ------------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        buf = bytearray()
        try:
            while chunk := await reader.read(4096):
                buf += chunk
                while True:
                    try:
                        line, used = split_line(buf, eol=EOL, max_line=MAX_LINE)
                    except FrameTooLongError:
                        del buf[: skip_line(buf, eol=EOL)]
                        continue
                    if line is None:
                        break
                    del buf[:used]
                    if not await self._answer(line, writer):
                        return
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> bool:
        try:
            request = decode_request(line)
        except ProtocolError:
            return True  # the bridge drops what it cannot read; the host times out
        self.requests.append(request)
        reply = await self.handle(request)
        fault = self._faults.pop(0) if self._faults else None
        wire = encode_reply(reply)
        if fault == "stall":
            return True
        if fault == "close":
            return False
        if fault == "garbage":
            wire = wire[: len(wire) // 2] + b"\x07#" + EOL
        if fault == "split":
            for i in range(len(wire)):
                writer.write(wire[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
            return True
        writer.write(wire)
        await writer.drain()
        return True

    async def handle(self, request: Request) -> Reply | ErrorReply:
        tag = request.tag
        if not self.rig.commander_open:
            return ErrorReply(tag, MCC_NOT_OPEN, "commander not open")
        try:
            return Reply(tag, await self._dispatch(request))
        except _Refused as exc:
            return ErrorReply(tag, exc.code, str(exc))

    def _channel(self, request: Request) -> ChannelState:
        if not request.args or request.args[0] not in ("1", "2"):
            raise _Refused(MCC_INVALID_PARAMETER, "the channel (1 or 2) comes first")
        return self.rig.channels[int(request.args[0])]

    def _one_arg(self, request: Request) -> str:
        if len(request.args) != 2:
            raise _Refused(MCC_INVALID_PARAMETER, f"{request.verb} takes a channel and a value")
        return request.args[1]

    async def _dispatch(self, request: Request) -> dict[str, str]:
        verb = request.verb
        if verb == "Identify":
            return {"model": "700B", "serial": self.serial, "firmware": "SIM-2.2",
                    "channels": "2"}  # fmt: skip
        ch = self._channel(request)
        name = verb[3:]
        if verb.startswith("Get") and name in SETTINGS:
            return {"value": _text(getattr(ch, SETTINGS[name].attr))}
        if verb.startswith("Set") and name in SETTINGS:
            setattr(ch, SETTINGS[name].attr, SETTINGS[name].parse(self._one_arg(request)))
            return {}
        if verb == "GetMode":
            return {"value": ch.mode}
        if verb == "SetMode":
            mode = self._one_arg(request)
            if mode not in ("VC", "IC", "I0"):
                raise _Refused(MCC_INVALID_PARAMETER, "mode VC, IC or I0")
            if {mode, ch.mode} == {"VC", "IC"}:
                raise _Refused(MCC_INVALID_PARAMETER, "VC <-> IC must pass through I=0")
            ch.mode = mode
            return {}
        if verb == "GetMeter":
            n = int(request.args[0])
            r = self.rig.resistance_ohm() if ch.test_enable else None
            return {"current_a": repr(self.rig.holding_current_a(n)),
                    "potential_v": repr(ch.holding if ch.mode == "VC" else self.rig.cell.e_leak_v),
                    "resistance_ohm": "none" if r is None else repr(r)}  # fmt: skip
        if verb == "GetTelegraph":
            return {k: _text(v) for k, v in ch.telegraph().items()}
        if verb in AUTO_S:
            await self.clock.sleep(AUTO_S[verb])
            return self._auto(verb, ch)
        raise _Refused(MCC_INVALID_PARAMETER, f"unknown command {verb}")

    def _auto(self, verb: str, ch: ChannelState) -> dict[str, str]:
        rig = self.rig
        if verb == "AutoPipetteOffset":
            offset = rig.spec.electrode_offset_v
            if abs(offset) > 0.100 or rig.stage != "bath":
                raise _Refused(MCC_COMMAND_FAIL, "pipette offset did not converge")
            ch.offset_compensation_v = offset
            return {"offset_v": repr(offset)}
        if verb == "AutoFastComp":
            ch.fast_cap_f, ch.fast_tau_s = 4.5e-12, 1.8e-6
            return {"cap_f": repr(ch.fast_cap_f), "tau_s": repr(ch.fast_tau_s)}
        if rig.stage != "whole_cell" or rig.ra_ohm() > 40e6:
            raise _Refused(MCC_COMMAND_FAIL, f"{verb[4:]} did not converge")
        if verb == "AutoSlowComp":
            ch.slow_cap_f, ch.slow_tau_s = rig.cell.cm_f, rig.cell.cm_f * rig.ra_ohm()
            return {"cap_f": repr(ch.slow_cap_f), "tau_s": repr(ch.slow_tau_s)}
        ch.wc_cm_f, ch.wc_rs_ohm = rig.cell.cm_f, rig.ra_ohm()
        return {"cm_f": repr(ch.wc_cm_f), "rs_ohm": repr(ch.wc_rs_ohm)}


async def end_connections(conns: dict[asyncio.Task[None], asyncio.StreamWriter]) -> None:
    """Close each connection's socket and let its task end by itself (a cancelled
    connection task makes asyncio's server log an error)."""
    for writer in conns.values():
        writer.close()
    for task in list(conns):
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await task

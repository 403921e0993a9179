"""The MultiClamp 700B-style amplifier driver: the Commander's API over tagged TCP lines.

Codec (:mod:`.codec`) -> link (:class:`~drivers.tcp_lines.TaggedLineLink`: tags, 3 s
message timeout, a lost connection failing what waits) -> this driver, which speaks the
amplifier's meaning: modes, holding, gain and filter, the seal test, the auto functions,
series-resistance compensation, the meter and the telegraph.

Rules it keeps:

* **VC <-> IC passes through I=0** (the amplifier's own rule: never switch the headstage
  from clamping voltage to injecting current in one step).
* **Setters are idempotent and never rewrite an unchanged value**: each reads the setting
  first (the Commander's panel may have changed it) and writes only a different value.
* **Errors as the API has them**: an ``ERR`` reply raises :class:`AmplifierError` with the
  API's code (6002 commander not open, 6004 invalid parameter, 6006 command failed: an auto
  function that did not converge); no reply within the timeout raises
  :class:`~drivers.errors.InstrumentTimeoutError` (the API's 6005).
* The telegraph (mode, gain, filter, Cm, Rs, external command sensitivity) is read back as
  a :class:`Telegraph`, what the acquisition records with every sweep.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Final, Literal

from drivers.addresses import parse_tcp_address
from drivers.amplifier.codec import (
    EOL,
    MAX_LINE,
    MAX_TAG,
    MCC_ERRORS,
    MCC_NOT_OPEN,
    ErrorReply,
    Reply,
    Request,
    decode_reply,
    encode_request,
    tag_of,
)  # fmt: skip
from drivers.base import LinkedInstrument, Readings
from drivers.clock import Clock
from drivers.errors import InstrumentReplyError, ProtocolError
from drivers.tcp_lines import TaggedLineLink

__all__ = [
    "AUTO_TIMEOUT_S", "FEEDBACK_RESISTORS", "GAINS", "AmplifierDriver", "AmplifierError",
    "AmplifierIdentity", "Meter", "Mode", "Telegraph",
]

Mode = Literal["VC", "IC", "I0"]
"""Voltage clamp, current clamp, I=0 (the wire's word for I=0)."""
MODES: Final = ("VC", "IC", "I0")
GAINS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
FEEDBACK_RESISTORS: Final = (50e9, 5e9, 500e6, 50e6)
LPF_RANGE_HZ: Final = (2_000.0, 30_000.0)
AUTO_TIMEOUT_S: Final = 10.0
"""The auto functions take seconds; they get this long instead of the message timeout."""


class AmplifierError(InstrumentReplyError):
    """The amplifier (its Commander) answered ``ERR``; ``code`` is the API's 6000-6006."""


@dataclass(frozen=True)
class AmplifierIdentity:
    model: str
    serial: str
    firmware: str
    channels: int


@dataclass(frozen=True)
class Telegraph:
    """What the amplifier tells the acquisition about the signal, recorded with each sweep."""

    mode: Mode
    primary_signal: str  # what the primary output carries: "membrane_current" in VC
    gain: float  # primary output gain
    scale_v_per_unit: float  # primary output volts per ampere (VC) or per volt (IC)
    lpf_hz: float | None  # Bessel cutoff; None: bypassed
    cm_f: float  # whole-cell compensation's membrane capacitance (0: off)
    rs_ohm: float  # whole-cell compensation's series resistance (0: off)
    ext_cmd_sensitivity: float  # V/V at the cell per command volt (VC), A/V (IC)
    feedback_ohm: float

    def as_record(self) -> dict[str, float | str | None]:
        return asdict(self)


@dataclass(frozen=True)
class Meter:
    current_a: float
    potential_v: float
    resistance_ohm: float | None  # from the seal test's pulses; None while it is off


def _same(current: str, wanted: str) -> bool:
    """The same setting: equal words, or numbers equal to the wire's precision."""
    try:
        return current == wanted or math.isclose(float(current), float(wanted),
                                                 rel_tol=1e-9, abs_tol=1e-15)  # fmt: skip
    except ValueError:
        return False


def _num(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    return repr(float(value))


class AmplifierDriver(LinkedInstrument[TaggedLineLink]):
    """One amplifier at ``tcp://host:port`` (the Commander's bridge); ``channel`` 1 or 2."""

    def __init__(
        self, address: str, *, instrument_id: str = "amplifier", channel: int = 1,
        timeout_s: float = 3.0, clock: Clock | None = None,
    ) -> None:  # fmt: skip
        host, port = parse_tcp_address(address)
        if channel not in (1, 2):
            raise ValueError("channel must be 1 or 2")
        self.address = address
        self.instrument_id = instrument_id
        self.channel = channel
        self._link = TaggedLineLink(
            host, port, tag_of=tag_of, eol=EOL, max_line=MAX_LINE, max_tag=MAX_TAG,
            timeout_s=timeout_s, instrument_id=instrument_id, clock=clock,
        )  # fmt: skip
        self.writes = 0
        """Setter writes actually sent (the idempotence tests count them)."""

    async def _probe(self) -> None:
        await self.identify()

    def select_channel(self, channel: int) -> None:
        """Address the amplifier's other channel (headstage) from now on."""
        if channel not in (1, 2):
            raise ValueError("channel must be 1 or 2")
        self.channel = channel

    # ------------------------------------------------------------------ exchange

    async def _call(self, verb: str, *args: str, channel: bool = True,
                    timeout_s: float | None = None) -> dict[str, str]:  # fmt: skip
        tag = self._link.next_tag()
        full = (str(self.channel), *args) if channel else args
        line = await self._link.request(tag, encode_request(Request(tag, verb, full)),
                                        timeout_s=timeout_s)  # fmt: skip
        try:
            reply = decode_reply(line)
        except ProtocolError as exc:
            raise InstrumentReplyError(f"garbled reply to {verb}: {exc}",
                                       instrument=self.instrument_id) from exc  # fmt: skip
        if isinstance(reply, ErrorReply):
            meaning = MCC_ERRORS.get(reply.code, "unknown error")
            raise AmplifierError(f"{verb}: error {reply.code} ({meaning}): {reply.text}",
                                 instrument=self.instrument_id, code=reply.code)  # fmt: skip
        assert isinstance(reply, Reply)
        return reply.values

    def _field(self, values: dict[str, str], key: str, verb: str) -> str:
        if key not in values:
            raise InstrumentReplyError(f"{verb}: reply without {key}",
                                       instrument=self.instrument_id)  # fmt: skip
        return values[key]

    def _float(self, values: dict[str, str], key: str, verb: str) -> float:
        text = self._field(values, key, verb)
        try:
            value = float(text)
        except ValueError:
            raise InstrumentReplyError(f"{verb}: {key}={text!r} is not a number",
                                       instrument=self.instrument_id) from None  # fmt: skip
        if not math.isfinite(value):
            raise InstrumentReplyError(f"{verb}: {key} is {text}", instrument=self.instrument_id)
        return value

    async def _get(self, name: str) -> str:
        return self._field(await self._call(f"Get{name}"), "value", f"Get{name}")

    async def _get_float(self, name: str) -> float:
        return self._float({"value": await self._get(name)}, "value", f"Get{name}")

    async def _set_if_changed(self, name: str, value: str) -> bool:
        """Write ``Set<name>`` only when the amplifier holds another value; True if written."""
        if _same(await self._get(name), value):
            return False
        await self._call(f"Set{name}", value)
        self.writes += 1
        return True

    # ------------------------------------------------------------------ the API

    async def identify(self) -> AmplifierIdentity:
        v = await self._call("Identify", channel=False)
        return AmplifierIdentity(self._field(v, "model", "Identify"),
                                 self._field(v, "serial", "Identify"),
                                 self._field(v, "firmware", "Identify"),
                                 int(self._float(v, "channels", "Identify")))  # fmt: skip

    async def mode(self) -> Mode:
        value = await self._get("Mode")
        if value not in MODES:
            raise InstrumentReplyError(f"GetMode: unknown mode {value!r}",
                                       instrument=self.instrument_id)  # fmt: skip
        return value  # type: ignore[return-value]

    async def set_mode(self, mode: Mode) -> None:
        """VC, IC or I0; between VC and IC the amplifier passes through I=0."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        current = await self.mode()
        if current == mode:
            return
        if {current, mode} == {"VC", "IC"}:
            await self._call("SetMode", "I0")
            self.writes += 1
        await self._call("SetMode", mode)
        self.writes += 1

    async def set_holding(self, value: float, *, enable: bool | None = None) -> None:
        """The holding command (V in VC, A in IC), and optionally its enable."""
        await self._set_if_changed("Holding", _num(value))
        if enable is not None:
            await self._set_if_changed("HoldingEnable", "1" if enable else "0")

    async def holding(self) -> tuple[float, bool]:
        return await self._get_float("Holding"), await self._get("HoldingEnable") == "1"

    async def set_primary_signal(self, signal: str) -> None:
        await self._set_if_changed("PrimarySignal", signal)

    async def set_gain(self, gain: int) -> None:
        if gain not in GAINS:
            raise ValueError(f"gain must be one of {GAINS}")
        await self._set_if_changed("PrimarySignalGain", str(gain))

    async def set_lpf(self, cutoff_hz: float | None) -> None:
        """The Bessel low-pass on the primary output; None bypasses it."""
        if cutoff_hz is not None and not LPF_RANGE_HZ[0] <= cutoff_hz <= LPF_RANGE_HZ[1]:
            raise ValueError("the low-pass cutoff must be 2-30 kHz (or None: bypass)")
        await self._set_if_changed("PrimarySignalLPF",
                                   "bypass" if cutoff_hz is None else _num(cutoff_hz))  # fmt: skip

    async def set_feedback_resistor(self, ohm: float) -> None:
        if ohm not in FEEDBACK_RESISTORS:
            raise ValueError("the feedback resistor must be 50G, 5G, 500M or 50M ohm")
        await self._set_if_changed("FeedbackResistor", _num(ohm))

    async def seal_test(self, on: bool, *, amplitude_v: float | None = None,
                        frequency_hz: float | None = None) -> None:  # fmt: skip
        """The seal-test pulses (amplitude, frequency) on or off."""
        if amplitude_v is not None:
            await self._set_if_changed("TestSignalAmplitude", _num(amplitude_v))
        if frequency_hz is not None:
            await self._set_if_changed("TestSignalFrequency", _num(frequency_hz))
        await self._set_if_changed("TestSignalEnable", "1" if on else "0")

    async def auto_pipette_offset(self) -> float:
        """Null the electrode offset (within +-100 mV); the offset it found, V."""
        v = await self._call("AutoPipetteOffset", timeout_s=AUTO_TIMEOUT_S)
        return self._float(v, "offset_v", "AutoPipetteOffset")

    async def auto_fast_comp(self) -> tuple[float, float]:
        """Fast (pipette) capacitance compensation: (capacitance F, tau s)."""
        v = await self._call("AutoFastComp", timeout_s=AUTO_TIMEOUT_S)
        return self._float(v, "cap_f", "AutoFastComp"), self._float(v, "tau_s", "AutoFastComp")

    async def auto_slow_comp(self) -> tuple[float, float]:
        v = await self._call("AutoSlowComp", timeout_s=AUTO_TIMEOUT_S)
        return self._float(v, "cap_f", "AutoSlowComp"), self._float(v, "tau_s", "AutoSlowComp")

    async def auto_whole_cell_comp(self) -> tuple[float, float]:
        """Whole-cell compensation: (Cm F, Rs ohm); AmplifierError 6006 if it did not
        converge (no whole-cell access)."""
        v = await self._call("AutoWholeCellComp", timeout_s=AUTO_TIMEOUT_S)
        return (self._float(v, "cm_f", "AutoWholeCellComp"),
                self._float(v, "rs_ohm", "AutoWholeCellComp"))  # fmt: skip

    async def set_rs_compensation(
        self, *, enable: bool, correction_pct: float | None = None,
        prediction_pct: float | None = None, bandwidth_hz: float | None = None,
    ) -> None:  # fmt: skip
        for name, value, lo, hi in (("RsCompCorrection", correction_pct, 0, 100),
                                    ("RsCompPrediction", prediction_pct, 0, 100),
                                    ("RsCompBandwidth", bandwidth_hz, 300, 20_000)):  # fmt: skip
            if value is not None:
                if not lo <= value <= hi:
                    raise ValueError(f"{name} must be {lo}-{hi}")
                await self._set_if_changed(name, _num(value))
        await self._set_if_changed("RsCompEnable", "1" if enable else "0")

    async def compensation(self) -> dict[str, float | bool]:
        """Series-resistance compensation as set now (recorded with each sweep)."""
        return {"rs_enable": await self._get("RsCompEnable") == "1",
                "rs_correction_pct": await self._get_float("RsCompCorrection"),
                "rs_prediction_pct": await self._get_float("RsCompPrediction"),
                "rs_bandwidth_hz": await self._get_float("RsCompBandwidth")}  # fmt: skip

    async def meter(self) -> Meter:
        v = await self._call("GetMeter")
        r = self._field(v, "resistance_ohm", "GetMeter")
        return Meter(self._float(v, "current_a", "GetMeter"),
                     self._float(v, "potential_v", "GetMeter"),
                     None if r == "none" else self._float(v, "resistance_ohm", "GetMeter"))

    async def telegraph(self) -> Telegraph:
        v = await self._call("GetTelegraph")
        mode = self._field(v, "mode", "GetTelegraph")
        if mode not in MODES:
            raise InstrumentReplyError(f"GetTelegraph: unknown mode {mode!r}",
                                       instrument=self.instrument_id)  # fmt: skip
        lpf = self._field(v, "lpf_hz", "GetTelegraph")
        f = self._float
        return Telegraph(
            mode=mode,  # type: ignore[arg-type]
            primary_signal=self._field(v, "primary_signal", "GetTelegraph"),
            gain=f(v, "gain", "GetTelegraph"),
            scale_v_per_unit=f(v, "scale_v_per_unit", "GetTelegraph"),
            lpf_hz=None if lpf == "bypass" else f(v, "lpf_hz", "GetTelegraph"),
            cm_f=f(v, "cm_f", "GetTelegraph"), rs_ohm=f(v, "rs_ohm", "GetTelegraph"),
            ext_cmd_sensitivity=f(v, "ext_cmd_sensitivity", "GetTelegraph"),
            feedback_ohm=f(v, "feedback_ohm", "GetTelegraph"),
        )  # fmt: skip

    async def make_safe(self, holding_v: float) -> None:
        """What an abort leaves: voltage clamp at ``holding_v``, the seal test off."""
        await self.seal_test(False)
        await self.set_mode("VC")
        await self.set_holding(holding_v, enable=True)

    async def readings(self) -> Readings:
        try:
            mode = await self.mode()
            holding, enabled = await self.holding()
            meter = await self.meter()
        except AmplifierError as exc:
            if exc.code == MCC_NOT_OPEN:
                return Readings("fault", fault="commander not open (6002)")
            raise
        values: dict[str, float | int | str | bool | None] = {"mode": mode,
                                                              "holding_enabled": enabled}
        if mode == "VC":
            values["holding_mv"] = round(holding * 1e3, 2)
        else:
            values["holding_pa"] = round(holding * 1e12, 1)
        values["current_pa"] = round(meter.current_a * 1e12, 1)
        values["seal_test"] = meter.resistance_ohm is not None
        if meter.resistance_ohm is not None:  # the seal test's: seal, or access + membrane
            values["resistance_mohm"] = round(meter.resistance_ohm / 1e6, 2)
        return Readings("idle", values=values)

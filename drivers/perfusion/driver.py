"""Driver for the AutoMate ValveLink8.2 perfusion valve controller, over RS-232.

Speaks the meaning of the instrument (which solution flows, which modes, the spill latch)
on top of :class:`~drivers.serial_link.SerialLink` (framing, timeouts, resync, reconnect)
and :mod:`drivers.perfusion.codec` (bytes).

Why no cached valve state: the front pushbuttons and the TTL inputs move valves behind the
host's back ("last input wins"), so every method acts on the controller's own answer.
Opening an open valve is therefore sent again, and is harmless: the controller leaves it
open and replies ``OK``. Compound methods (:meth:`PerfusionDriver.select_solution`,
:meth:`PerfusionDriver.set_mode`) read the status first and send only what differs.

Garbled replies follow the policy of :class:`~drivers.base.SerialInstrument`: a line that is
not an ``R<our address> ...`` reply, followed at once by more input, is skipped as noise; a
reply that does not parse, comes from another address or is of the wrong kind is retried
once. Every command the driver sends is safe to repeat: ``S?``/``I?`` are queries;
``V+n``/``V-n``/``C``/``A`` leave the controller as they found it when repeated; ``M+``/``M-``
set or clear the same modes again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from drivers.base import Readings, SerialInstrument
from drivers.clock import Clock, MonotonicClock
from drivers.errors import InstrumentFaultError, InstrumentReplyError, ProtocolError
from drivers.perfusion.codec import (
    EOL,
    MAX_LINE,
    MODE_MASTER,
    MODE_ONE_ON,
    MODE_PRESELECT,
    MODE_TTL,
    VALVES,
    AcknowledgeSpill,
    CloseAll,
    CloseValve,
    Command,
    ErrorCode,
    ErrorReply,
    Identify,
    IdentityReply,
    ModeSpec,
    OkReply,
    OpenValve,
    QueryStatus,
    Reply,
    SetModes,
    StatusReply,
    ValveState,
    encode_command,
    parse_reply,
)
from drivers.serial_link import SerialLink

__all__ = ["PerfusionDriver", "PerfusionMode", "ValveStatus"]

R = TypeVar("R", bound=Reply)

PerfusionMode = Literal["independent", "one_on", "ttl"]
"""How valves relate: each on its own; opening one closes the others; TTL straight-through."""
_BASE_MODES: dict[PerfusionMode, int | None] = {
    "independent": None, "one_on": MODE_ONE_ON, "ttl": MODE_TTL,
}
_VALVE_FAULTS = {
    ErrorCode.VALVE_UNPLUGGED: "valve unplugged", ErrorCode.VALVE_SHORTED: "valve shorted",
}


@dataclass(frozen=True)
class ValveStatus:
    """A snapshot of the controller: ``valves[i]`` is valve ``i + 1``."""

    valves: tuple[ValveState, ...]
    mode: PerfusionMode
    preselect: int | None
    master: int | None
    spill_latched: bool

    @property
    def open_valves(self) -> tuple[int, ...]:
        return tuple(i + 1 for i, s in enumerate(self.valves) if s == "open")

    @property
    def open_valve(self) -> int | None:
        """The one open solution valve (the master valve aside); None if none or several."""
        solution = [v for v in self.open_valves if v != self.master]
        return solution[0] if len(solution) == 1 else None

    @property
    def pattern(self) -> str:
        """``"10000000"``: 1 for each open valve, valve 1 first."""
        return "".join("1" if s == "open" else "0" for s in self.valves)

    def valves_in(self, state: ValveState) -> tuple[int, ...]:
        return tuple(i + 1 for i, s in enumerate(self.valves) if s == state)

    @property
    def mode_text(self) -> str:
        """E.g. ``one_on``, ``independent+preselect/1+master/8``."""
        extra = [f"preselect/{self.preselect}"] if self.preselect else []
        extra += [f"master/{self.master}"] if self.master else []
        return "+".join([self.mode, *extra])


class PerfusionDriver(SerialInstrument):
    """One ValveLink8.2 at a serial URL (``/dev/ttyUSB0``, a pty path, ``socket://h:p``),
    device address 0-9 (the rear switch). Valves are numbered 1-8 as on the front panel.

    Every method is one short exchange (or a few); methods may be called from several tasks:
    the driver serialises them. Instrument refusals raise :class:`InstrumentFaultError`
    (``fault``: ``spill latched``, ``valve unplugged``, ``valve shorted``) or
    :class:`InstrumentReplyError` with the error ``code``; a reply garbled twice raises
    :class:`InstrumentReplyError` with ``code=None``; transport faults raise
    :class:`~drivers.errors.LinkError` and the next call reconnects.
    """

    def __init__(
        self,
        address: str,
        *,
        instrument_id: str = "perfusion",
        device_address: int = 0,
        timeout_s: float = 2.0,
        clock: Clock | None = None,
        baudrate: int = 9600,
    ) -> None:
        if not 0 <= device_address <= 9:
            raise ValueError(f"device address must be 0-9, got {device_address}")
        self.address = address
        self.device_address = device_address
        self._clock: Clock = clock or MonotonicClock()
        self._lock = asyncio.Lock()
        super().__init__(
            SerialLink(
                address, baudrate=baudrate, eol=EOL, max_line=MAX_LINE - len(EOL),
                timeout_s=timeout_s, instrument_id=instrument_id, clock=self._clock,
            ),
            instrument_id,
        )

    async def _probe(self) -> None:
        """The controller answers at its address."""
        await self.valve_states()

    # ------------------------------------------------------------------ Instrument

    async def identify(self) -> Mapping[str, str | int]:
        reply = await self._ask(Identify(self.device_address), IdentityReply)
        return {
            "vendor": "AutoMate Scientific", "model": reply.model, "serial": reply.serial,
            "firmware": reply.firmware, "device_address": self.device_address,
        }

    async def readings(self) -> Readings:
        status = await self.valve_states()
        shorted, unplugged = status.valves_in("shorted"), status.valves_in("unplugged")
        fault = "spill latched" if status.spill_latched else None
        if fault is None and shorted:
            fault = "valve shorted: " + ",".join(map(str, shorted))
        return Readings(
            state="fault" if fault else "idle",
            fault=fault,
            values={
                "valves": status.pattern,
                "open_valve": status.open_valve,
                "mode": status.mode_text,
                "spill_latched": status.spill_latched,
                "shorted_valves": ",".join(map(str, shorted)),
                "unplugged_valves": ",".join(map(str, unplugged)),
            },
        )

    # ------------------------------------------------------------------ valves

    async def valve_states(self) -> ValveStatus:
        reply = await self._ask(QueryStatus(self.device_address), StatusReply)
        return _status(reply)

    async def open_valve(self, valve: int) -> None:
        """Open ``valve`` (in one-on mode the controller closes the others). Sent even if
        it is open already: harmless, the controller replies ``OK`` and changes nothing."""
        await self._ok(OpenValve(self.device_address, valve), valve)

    async def close_valve(self, valve: int) -> None:
        """Close ``valve``; closing a closed, unplugged or shorted valve is harmless."""
        await self._ok(CloseValve(self.device_address, valve), valve)

    async def close_all(self) -> None:
        """Close every valve (the preselected rest valve too); allowed during a spill."""
        await self._ok(CloseAll(self.device_address))

    async def select_solution(self, valve: int) -> ValveStatus:
        """Make ``valve`` the only solution flowing, in any mode: open it first (no dry
        moment, no preselect kick-in), then close any other open valve. Sends nothing
        but the status query when it already is. Returns the resulting status."""
        async with self._lock:
            status = await self._status_locked()
            self._check_valve(valve)
            if status.open_valve != valve:
                await self._ok_locked(OpenValve(self.device_address, valve), valve)
                if status.mode != "one_on":
                    for other in status.open_valves:
                        if other not in (valve, status.master):
                            await self._ok_locked(CloseValve(self.device_address, other), other)
                status = await self._status_locked()
            return status

    async def acknowledge_spill(self) -> None:
        """Clear the spill latch (harmless when not latched). Valves stay closed."""
        await self._ok(AcknowledgeSpill(self.device_address))

    async def clear_fault(self) -> None:
        """Clear a latched fault as the manual says, once the operator has fixed its cause:
        the spill latch is acknowledged (valves stay closed)."""
        await self.acknowledge_spill()

    async def set_mode(
        self, mode: PerfusionMode, *, preselect: int | None = None, master: int | None = None
    ) -> ValveStatus:
        """Make the controller's modes exactly ``mode`` plus the optional preselect (rest)
        and master valves; sends only the changes (nothing if already so)."""
        if mode not in _BASE_MODES:
            raise ValueError(f"mode must be one of {', '.join(_BASE_MODES)}")
        want: dict[int, int | None] = {}
        if (base := _BASE_MODES[mode]) is not None:
            want[base] = None
        for number, valve in ((MODE_PRESELECT, preselect), (MODE_MASTER, master)):
            if valve is not None:
                self._check_valve(valve)
                want[number] = valve
        async with self._lock:
            status = await self._status_locked()
            have = _mode_map(status)
            drop = [ModeSpec(n) for n in sorted(have) if n not in want]
            add = [ModeSpec(n, v) for n, v in sorted(want.items()) if have.get(n, 0) != v]
            if drop:
                await self._ok_locked(SetModes(self.device_address, False, tuple(drop)))
            if add:
                await self._ok_locked(SetModes(self.device_address, True, tuple(add)))
            return await self._status_locked() if drop or add else status

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_valve(valve: int) -> None:
        if not 1 <= valve <= VALVES:
            raise ValueError(f"valve must be 1-{VALVES}, got {valve}")

    async def _ok(self, command: Command, valve: int | None = None) -> None:
        async with self._lock:
            await self._ok_locked(command, valve)

    async def _ok_locked(self, command: Command, valve: int | None = None) -> None:
        await self._exchange(command, OkReply, valve)

    async def _status_locked(self) -> ValveStatus:
        return _status(await self._exchange(QueryStatus(self.device_address), StatusReply))

    async def _ask(self, command: Command, kind: type[R]) -> R:
        async with self._lock:
            return await self._exchange(command, kind)

    async def _exchange(
        self, command: Command, kind: type[R], valve: int | None = None
    ) -> R:
        def decode(raw: bytes) -> R:
            reply = parse_reply(raw)
            if reply.address != self.device_address:
                raise ProtocolError(
                    f"reply from device {reply.address}, expected {self.device_address}")
            if isinstance(reply, ErrorReply):
                raise self._error(reply.code, command, valve)
            if not isinstance(reply, kind):
                raise ProtocolError(f"expected a {kind.__name__}, got {raw[:40]!r}")
            return reply

        return await self._request(encode_command(command), decode, accept=self._is_ours)

    def _is_ours(self, raw: bytes) -> bool:
        """An ``R<our address> ...`` reply: anything else before it is line noise."""
        try:
            return parse_reply(raw).address == self.device_address
        except ProtocolError:
            return False

    def _error(
        self, code: int, command: Command, valve: int | None
    ) -> InstrumentFaultError | InstrumentReplyError:
        where = self.instrument_id
        if code == ErrorCode.SPILL_LATCHED:
            return InstrumentFaultError(
                "spill sensor tripped: all valves closed until acknowledged",
                instrument=where, fault="spill latched",
            )
        if code in _VALVE_FAULTS:
            fault = _VALVE_FAULTS[ErrorCode(code)]
            return InstrumentFaultError(f"{fault}: valve {valve}", instrument=where, fault=fault)
        known = code in {c.value for c in ErrorCode}
        name = ErrorCode(code).name.lower() if known else "unknown"
        return InstrumentReplyError(
            f"error {code} ({name}) to {encode_command(command).decode()}",
            instrument=where, code=code,
        )


def _mode_map(status: ValveStatus) -> dict[int, int | None]:
    have: dict[int, int | None] = {}
    if (base := _BASE_MODES[status.mode]) is not None:
        have[base] = None
    if status.preselect is not None:
        have[MODE_PRESELECT] = status.preselect
    if status.master is not None:
        have[MODE_MASTER] = status.master
    return have


def _status(reply: StatusReply) -> ValveStatus:
    modes = {m.number: m.valve for m in reply.modes}
    mode: PerfusionMode = (
        "ttl" if MODE_TTL in modes else "one_on" if MODE_ONE_ON in modes else "independent"
    )
    return ValveStatus(
        valves=reply.valves, mode=mode, preselect=modes.get(MODE_PRESELECT),
        master=modes.get(MODE_MASTER), spill_latched=reply.spill_latched,
    )

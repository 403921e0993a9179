"""Driver for the cell harvester (Brandel / FilterMate 96-style) over RS-232.

Speaks the meaning of the instrument (prewet, aspirate, wash, dry, release the mat) on top
of :class:`~drivers.serial_link.SerialLink` (transport, framing, resync, reconnect) and
:mod:`drivers.harvester.codec` (bytes). Long steps are acknowledged at once by the
instrument; each step method then polls ``ST?`` on the injected clock until the step is
done, so it returns only when the work is finished.

Errors (``docs/protocols/harvester.md``):

* ``ER 10-15`` (low vacuum, mat not seated, buffer empty, waste full, clogged wells, no
  plate) and a step that ends in ``FAULT`` raise :class:`InstrumentFaultError` whose
  ``fault`` is the condition's name (``low_vacuum`` ...).
* ``ER 20/31/32`` raise :class:`InstrumentReplyError` with the ``code``.
* Garbled replies follow the policy of :class:`~drivers.base.SerialInstrument`: a line
  that is not a checked ``OK``/``ER`` frame, followed at once by more input, is skipped as
  noise; a reply that fails its checksum or makes no sense, or ``ER 30`` (our command
  arrived garbled), is retried once; a second failure raises
  :class:`InstrumentReplyError` (``code=None``, or 30). Every command is safe to repeat:
  queries and ``AB`` change nothing, and the instrument acknowledges a repeat of the step
  it is running without restarting it.
* While a step runs, link faults on the status polls are ridden out by reconnecting for up
  to ``reconnect_timeout_s``; the step itself goes on in the instrument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from drivers.base import Readings, SerialInstrument
from drivers.clock import Clock, MonotonicClock
from drivers.errors import (
    InstrumentFaultError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    LinkError,
    ProtocolError,
)
from drivers.harvester.codec import (
    EOL,
    FAULT_NAMES,
    MAX_LINE,
    Abort,
    Aspirate,
    Command,
    Dry,
    ErrorCode,
    ErrorReply,
    Identify,
    MatReport,
    Prewet,
    QueryAnomalies,
    QueryMat,
    QueryStatus,
    Release,
    Wash,
    encode_command,
    parse_anomalies,
    parse_identity,
    parse_mat,
    parse_status,
    read_reply,
)
from drivers.serial_link import SerialLink

__all__ = ["HarvestReport", "HarvesterDriver", "HarvesterIdentity", "HarvesterState",
           "HarvesterStatus", "HarvesterStep", "MatReport"]

T = TypeVar("T")
HarvesterState = Literal["idle", "busy", "fault"]
HarvesterStep = Literal["none", "prewet", "aspirate", "wash", "dry", "release"]
_STEP_NAMES: Final[dict[str, HarvesterStep]] = {
    "NONE": "none", "PW": "prewet", "AS": "aspirate", "WS": "wash", "DR": "dry",
    "RL": "release",
}
_STATE_NAMES: Final[dict[str, HarvesterState]] = {
    "IDLE": "idle", "BUSY": "busy", "FAULT": "fault",
}
_STEP_ALLOWANCE_S: Final = 60.0  # beyond the nominal step time before we call it stuck


@dataclass(frozen=True)
class HarvesterIdentity:
    vendor: str
    model: str
    serial: str
    firmware: str


@dataclass(frozen=True)
class HarvesterStatus:
    """A snapshot. ``step`` is the running step (busy) or the last one; ``fault`` names the
    latched fault (``low_vacuum`` ...), None if none."""

    state: HarvesterState
    step: HarvesterStep
    cycle: int
    progress_pct: int
    vacuum_bar: float
    buffer_pct: float
    waste_pct: float
    mat_seated: bool
    plate_present: bool
    fault: str | None
    fault_code: int


@dataclass(frozen=True)
class HarvestReport:
    """What one harvest cycle did; times are the driver's clock."""

    prewet_s: int
    washes: int
    wash_volume_ml: float
    dry_s: int
    clogged_wells: tuple[str, ...]
    peak_vacuum_bar: float
    """The strongest (most negative) vacuum seen while polling the steps."""
    buffer_pct: float
    waste_pct: float
    started_s: float
    finished_s: float
    mat: MatReport | None = None
    """The harvester's report of the mat after the dry, before it was released."""

    @property
    def duration_s(self) -> float:
        return self.finished_s - self.started_s


class HarvesterDriver(SerialInstrument):
    """One harvester at a serial ``address`` (``/dev/ttyUSB0``, a pty or its symlink, or
    ``socket://host:port``). All waiting uses the injected ``clock``; ``timeout_s`` bounds
    each reply; ``poll_s`` is the status polling period while a step runs."""

    resend_codes = frozenset({ErrorCode.BAD_CHECKSUM})

    def __init__(
        self,
        address: str,
        *,
        instrument_id: str = "harvester",
        timeout_s: float = 2.0,
        clock: Clock | None = None,
        poll_s: float = 0.5,
        baudrate: int = 9600,
        reconnect_timeout_s: float = 30.0,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        self.address = address
        self._clock: Clock = clock or MonotonicClock()
        self._poll_s = poll_s
        self._reconnect_timeout_s = reconnect_timeout_s
        super().__init__(
            SerialLink(
                address, baudrate=baudrate, eol=EOL, max_line=MAX_LINE, timeout_s=timeout_s,
                instrument_id=instrument_id, clock=self._clock,
            ),
            instrument_id,
        )

    async def _probe(self) -> None:
        await self.identity()

    # ------------------------------------------------------------------ queries

    async def identity(self) -> HarvesterIdentity:
        ident = await self._ask(Identify(), parse_identity)
        return HarvesterIdentity(ident.vendor, ident.model, ident.serial, ident.firmware)

    async def identify(self) -> Mapping[str, str | int]:
        ident = await self.identity()
        return {"vendor": ident.vendor, "model": ident.model, "serial": ident.serial,
                "firmware": ident.firmware}

    async def status(self) -> HarvesterStatus:
        st = await self._ask(QueryStatus(), parse_status)
        return HarvesterStatus(
            state=_STATE_NAMES[st.state],
            step=_STEP_NAMES[st.step],
            cycle=st.cycle,
            progress_pct=st.progress_pct,
            vacuum_bar=st.vacuum_bar,
            buffer_pct=st.buffer_pct,
            waste_pct=st.waste_pct,
            mat_seated=st.mat_seated,
            plate_present=st.plate_present,
            fault=_fault_name(st.fault_code) if st.fault_code else None,
            fault_code=st.fault_code,
        )

    async def readings(self) -> Readings:
        st = await self.status()
        return Readings(
            state=st.state,
            fault=st.fault,
            values={
                "step": st.step, "cycle": st.cycle, "progress_pct": st.progress_pct,
                "vacuum_bar": st.vacuum_bar, "buffer_pct": st.buffer_pct,
                "waste_pct": st.waste_pct, "mat_seated": st.mat_seated,
                "plate_present": st.plate_present,
            },
        )

    async def mat(self) -> MatReport:
        """What has been done to the filter mat now seated (``MT?``)."""
        return await self._ask(QueryMat(), parse_mat)

    async def anomalies(self) -> list[str]:
        """The clogged wells of the last aspirate, in plate order."""
        return list(await self._ask(QueryAnomalies(), parse_anomalies))

    # ------------------------------------------------------------------ steps

    async def prewet(self, seconds: float = 10) -> None:
        """Pull PEI through the filter mat for ``seconds`` (whole seconds, 1-300)."""
        s = _whole("prewet seconds", seconds)
        await self._step(Prewet(s), "prewet", s)

    async def aspirate(self) -> list[str]:
        """Filter the plate through the mat; returns the wells that drained slowly
        (clogged), empty if none."""
        await self._step(Aspirate(), "aspirate", 120.0)
        return await self.anomalies()

    async def wash(self, cycles: int, volume_ml: float) -> None:
        """``cycles`` washes of ``volume_ml`` of ice-cold buffer per well."""
        await self._step(Wash(cycles, round(volume_ml, 1)), "wash", 60.0 * cycles)

    async def dry(self, seconds: float) -> None:
        """Pull air through the mat for ``seconds`` (whole seconds, 1-600)."""
        s = _whole("dry seconds", seconds)
        await self._step(Dry(s), "dry", s)

    async def release_mat(self) -> None:
        """Release the filter mat; a mat already released is left alone."""
        await self._step(Release(), "release", 30.0)

    async def abort(self) -> None:
        """Stop the running step and clear a latched fault (the operator has fixed it)."""
        await self._ask(Abort(), _ok)

    async def clear_fault(self) -> None:
        """Clear a latched fault as the manual says (``AB``), once the operator has fixed
        its cause; the sensors are read again by the next ``status()``."""
        await self.abort()

    async def harvest(
        self,
        *,
        prewet_s: float = 10,
        washes: int = 3,
        wash_volume_ml: float = 1.0,
        dry_s: float = 30,
        release: bool = True,
        resume: MatReport | None = None,
    ) -> HarvestReport:
        """The whole cycle: prewet with PEI (skipped if ``prewet_s`` is 0), aspirate,
        ``washes`` washes, dry, and release the mat. Every argument is checked before
        anything is sent. Clogged wells do not stop the cycle: they are reported.

        ``resume``: the report of the seated mat when a cycle stopped part-way (a fault,
        a host that went away) is finished on the same mat: what it says was done is not
        done again (no prewet or aspirate once aspirated, only the washes still missing),
        the dry always. Without it the seated mat must be unused
        (:class:`InstrumentFaultError` ``mat_in_use`` otherwise). The cycle must end with
        the harvester reporting a newly harvested mat (``MT?``), else
        :class:`InstrumentFaultError` ``no_mat``: a harvest never reports success without
        its effect."""
        pw = _whole("prewet seconds", prewet_s) if prewet_s else 0
        dr = _whole("dry seconds", dry_s)
        before = await self.mat()
        if resume is None and before.used:
            raise InstrumentFaultError(
                "the seated filter mat already holds a harvest: release it and take it out",
                instrument=self.instrument_id, fault="mat_in_use",
            )
        done = resume if resume is not None else before
        steps: list[tuple[Command, HarvesterStep, float]] = []
        if pw and not (done.prewet or done.aspirated):
            steps.append((Prewet(pw), "prewet", pw))
        if not done.aspirated:
            steps.append((Aspirate(), "aspirate", 120.0))
        missing = max(0, washes - done.washes) if done.aspirated else washes
        if missing:
            steps.append((Wash(missing, round(wash_volume_ml, 1)), "wash", 60.0 * missing))
        steps.append((Dry(dr), "dry", dr))
        started = self._clock.monotonic()
        peak = 0.0
        clogged: tuple[str, ...] = ()
        for command, step, nominal_s in steps:
            peak = min(peak, await self._step(command, step, nominal_s))
            if step == "aspirate":
                clogged = tuple(await self.anomalies())
        if not clogged and done.aspirated:
            clogged = tuple(await self.anomalies())
        final, after = await self.status(), await self.mat()
        if not (after.dried and after.made != before.made) and not before.dried:
            raise InstrumentFaultError(
                "the harvest cycle ran but the harvester reports no harvested mat "
                f"(mat: aspirated {int(after.aspirated)}, dried {int(after.dried)})",
                instrument=self.instrument_id, fault="no_mat",
            )
        if release:
            await self.release_mat()
        return HarvestReport(
            prewet_s=pw, washes=washes, wash_volume_ml=round(wash_volume_ml, 1) if washes else 0,
            dry_s=dr, clogged_wells=clogged, peak_vacuum_bar=peak,
            buffer_pct=final.buffer_pct, waste_pct=final.waste_pct,
            started_s=started, finished_s=self._clock.monotonic(), mat=after,
        )

    # ------------------------------------------------------------------ internals

    async def _step(self, command: Command, step: HarvesterStep, nominal_s: float) -> float:
        """Start ``command`` and poll until its step is done; returns the peak vacuum."""
        await self._ask(command, _ok)
        deadline = self._clock.monotonic() + nominal_s * 1.5 + _STEP_ALLOWANCE_S
        peak = 0.0
        failing_since: float | None = None
        while True:
            await self._clock.sleep(self._poll_s)
            try:
                st = await self.status()
            except (LinkError, InstrumentReplyError) as exc:
                if isinstance(exc, InstrumentReplyError) and exc.code is not None:
                    raise
                failing_since = await self._ride_out(exc, failing_since)
                continue
            failing_since = None
            peak = min(peak, st.vacuum_bar)
            if st.state == "fault":
                fault = st.fault or "fault"
                raise InstrumentFaultError(
                    f"{step} stopped by a fault: {fault} (code {st.fault_code})",
                    instrument=self.instrument_id, fault=fault,
                )
            if st.step != step:
                raise InstrumentFaultError(
                    f"expected step {step}, the harvester reports {st.step}",
                    instrument=self.instrument_id, fault="step replaced",
                )
            if st.state == "idle":
                if st.progress_pct < 100:
                    raise InstrumentFaultError(
                        f"{step} ended at {st.progress_pct}%: aborted",
                        instrument=self.instrument_id, fault="aborted",
                    )
                return peak
            if self._clock.monotonic() > deadline:
                raise InstrumentTimeoutError(
                    f"{step} still running after {nominal_s * 1.5 + _STEP_ALLOWANCE_S:g} s",
                    instrument=self.instrument_id,
                )

    async def _ride_out(self, exc: Exception, failing_since: float | None) -> float:
        """A status poll failed while a step runs: reconnect, within the allowance."""
        now = self._clock.monotonic()
        since = now if failing_since is None else failing_since
        remaining = self._reconnect_timeout_s - (now - since)
        if remaining <= 0:
            raise LinkError(
                f"gave up after {self._reconnect_timeout_s:g} s: {exc}",
                instrument=self.instrument_id,
            ) from exc
        if isinstance(exc, LinkError) and not isinstance(exc, InstrumentTimeoutError):
            await self._link.reconnect(remaining)
        return since

    async def _ask(self, command: Command, parser: Callable[[str], T]) -> T:
        """One exchange, under the garbled-reply policy (every command may be repeated)."""

        def decode(line: bytes) -> T:
            reply = read_reply(line)
            if isinstance(reply, ErrorReply):
                raise self._reply_error(reply)
            return parser(reply.data)

        return await self._request(encode_command(command), decode, accept=_is_reply)

    def _reply_error(self, reply: ErrorReply) -> InstrumentFaultError | InstrumentReplyError:
        text = f"error {reply.code:02d}: {reply.text}"
        if reply.code in FAULT_NAMES:
            return InstrumentFaultError(
                text, instrument=self.instrument_id, fault=FAULT_NAMES[reply.code]
            )
        return InstrumentReplyError(text, instrument=self.instrument_id, code=reply.code)


def _is_reply(line: bytes) -> bool:
    """A checked ``OK``/``ER`` frame: anything else before the reply is line noise."""
    try:
        read_reply(line)
    except ProtocolError:
        return False
    return True


def _ok(data: str) -> None:
    """Acknowledgements carry no data."""
    if data:
        raise ProtocolError(f"unexpected data in an acknowledgement: {data[:40]!r}")


def _fault_name(code: int) -> str:
    return FAULT_NAMES.get(code, f"fault {code:02d}")


def _whole(name: str, seconds: float) -> int:
    if seconds != int(seconds):
        raise ValueError(f"{name} must be whole seconds, got {seconds!r}")
    return int(seconds)

"""Driver for the microplate scintillation counter (MicroBeta2-style), over VISA.

Speaks the meaning of the instrument (configure, count, stream per-well results) on top of
:class:`~drivers.visa_link.VisaLink` (transport, locking, reconnect) and
:mod:`drivers.counter.codec` (bytes). The counter keeps counting while the host link is down,
so :meth:`CounterDriver.count_plate` survives link faults by reconnecting and fetching from the
next completion index: every well is yielded once, in index order, and none is invented.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from drivers.base import Readings
from drivers.clock import Clock, MonotonicClock
from drivers.counter.codec import (
    MAX_LINE,
    Abort,
    Command,
    Fetch,
    Identify,
    Line,
    QueryDetectors,
    QueryDoor,
    QueryPlate,
    QueryStatus,
    Reset,
    SetCountTime,
    SetIsotope,
    SetPrecision,
    StartCount,
    StatusReply,
    WellCount,
    decode_line,
    encode_command,
    is_error_reply,
    parse_door,
    parse_error,
    parse_identity,
    parse_int,
    parse_ok,
    parse_plate_id,
    parse_records,
    parse_status,
)
from drivers.errors import (
    InstrumentFaultError,
    InstrumentReplyError,
    LinkError,
    ProtocolError,
)
from drivers.visa_link import VisaLink

__all__ = ["CounterDriver", "CounterIdentity", "CounterState", "CounterStatus"]

T = TypeVar("T")
CounterState = Literal["idle", "counting", "done", "aborted", "fault"]
_STATE_NAMES: dict[str, CounterState] = {
    "IDLE": "idle", "COUNTING": "counting", "DONE": "done", "ABORTED": "aborted",
    "FAULT": "fault",
}


@dataclass(frozen=True)
class CounterIdentity:
    vendor: str
    model: str
    serial: str
    firmware: str
    detectors: int


@dataclass(frozen=True)
class CounterStatus:
    """A snapshot of the counter. ``fault`` is the instrument's fault text, None if none."""

    state: CounterState
    done: int
    total: int
    door_open: bool
    plate_id: str | None
    fault: str | None
    count_id: int = 0
    fault_code: int = 0


class CounterDriver:
    """One counter at a VISA resource string such as ``TCPIP::127.0.0.1::5025::SOCKET``.

    All waiting uses the injected ``clock``; ``timeout_s`` bounds each reply. Methods may be
    called concurrently from several tasks: the link serialises them.
    """

    def __init__(
        self,
        resource: str,
        *,
        instrument_id: str = "counter",
        timeout_s: float = 3.0,
        clock: Clock | None = None,
        poll_interval_s: float = 0.05,
        reconnect_timeout_s: float = 30.0,
    ) -> None:
        self.resource = resource
        self.instrument_id = instrument_id
        self._clock: Clock = clock or MonotonicClock()
        self._poll_interval_s = poll_interval_s
        self._reconnect_timeout_s = reconnect_timeout_s
        self._link: VisaLink[Line] = VisaLink(
            resource,
            decode=decode_line,
            max_line=MAX_LINE,
            probe=encode_command(Identify()),
            timeout_s=timeout_s,
            instrument_id=instrument_id,
            clock=self._clock,
        )

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect and check the counter answers; raises :class:`LinkError` if unreachable."""
        await self._link.open()

    async def close(self) -> None:
        await self._link.close()

    async def __aenter__(self) -> CounterDriver:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._link.connected

    # ------------------------------------------------------------------ one-shot commands

    async def identify(self) -> CounterIdentity:
        idn, det = await self._ask(Identify(), QueryDetectors())
        ident = self._parse(idn, parse_identity)
        detectors = self._parse(det, parse_int)
        return CounterIdentity(ident.vendor, ident.model, ident.serial, ident.firmware, detectors)

    async def status(self) -> CounterStatus:
        stat, door, plate = await self._ask(QueryStatus(), QueryDoor(), QueryPlate())
        st = self._parse(stat, parse_status)
        return CounterStatus(
            state=_STATE_NAMES[st.state],
            done=st.done,
            total=st.total,
            door_open=self._parse(door, parse_door),
            plate_id=self._parse(plate, parse_plate_id),
            fault=st.fault_text if st.fault_code else None,
            count_id=st.count_id,
            fault_code=st.fault_code,
        )

    async def readings(self) -> Readings:
        """State and key readings for the daemon (see :class:`drivers.base.Readings`).

        A standing fault needs an operator (door open, FAULT state); the reason an earlier
        count was aborted is reported until the next count starts, as history, not a fault.
        """
        st = await self.status()
        fault: str | None = None
        if st.door_open:
            fault = "door open"
        elif st.state == "fault":
            fault = st.fault or "fault"
        state: Literal["idle", "busy", "fault"] = (
            "fault" if fault else "busy" if st.state == "counting" else "idle"
        )
        return Readings(
            state,
            fault,
            {
                "count_state": st.state,
                "wells_done": st.done,
                "wells_total": st.total,
                "door_open": st.door_open,
                "plate_id": st.plate_id,
                "last_abort": st.fault if st.state == "aborted" else None,
            },
        )

    async def configure(
        self, *, count_time_s: float, precision_pct: float | None = None, isotope: str = "H3"
    ) -> None:
        """Set the count time, the %2-sigma stop target (None: off) and the isotope.
        Out-of-range values raise :class:`ValueError` before anything is sent."""
        commands = (
            SetCountTime(count_time_s),
            SetPrecision(precision_pct or 0.0),
            SetIsotope(isotope),
        )
        for reply in await self._ask(*commands):
            self._parse(reply, parse_ok)

    async def start_count(self, wells: Sequence[str] | None = None) -> int:
        """Start counting ``wells`` (all 96 if None); returns the number of wells to count."""
        _, total = await self._start(wells)
        return total

    async def fetch(self, start_index: int) -> list[WellCount]:
        """Records from completion index ``start_index`` on (at most 16 per call)."""
        (reply,) = await self._ask(Fetch(start_index))
        records = self._parse(reply, parse_records)
        if records and records[0].index != start_index:
            self._link.mark_stale()
            raise InstrumentReplyError(
                f"asked for records from {start_index}, got {records[0].index}",
                instrument=self.instrument_id,
            )
        return list(records)

    async def abort(self) -> None:
        (reply,) = await self._ask(Abort())
        self._parse(reply, parse_ok)

    async def clear_fault(self) -> None:
        """Leave a FAULT or ABORTED state as the manual says (``*RST``: back to IDLE, error
        queue cleared), once the operator has fixed the cause. A door still open is not
        cleared by this: ``readings()`` reports it until it is closed."""
        (reply,) = await self._ask(Reset())
        self._parse(reply, parse_ok)

    # ------------------------------------------------------------------ streaming

    async def count_plate(
        self,
        *,
        count_time_s: float,
        precision_pct: float | None = None,
        isotope: str = "H3",
        wells: Sequence[str] | None = None,
        resume_from: int | None = None,
    ) -> AsyncIterator[WellCount]:
        """Count a plate and yield each well once, in completion-index order, as it is counted.

        With ``resume_from`` the running (or finished) count is not restarted: records are
        fetched from that index on. Link faults, timeouts and garbled replies are retried by
        reconnecting for up to ``reconnect_timeout_s``; a door opened, an aborted count or an
        instrument fault raises :class:`InstrumentFaultError` after every well already counted
        has been yielded.
        """
        count_id: int | None = None
        next_index = 0 if resume_from is None else resume_from
        if resume_from is None:
            await self.configure(
                count_time_s=count_time_s, precision_pct=precision_pct, isotope=isotope
            )
            count_id, _ = await self._start(wells)
        seen: set[str] = set()
        failing_since: float | None = None
        while True:
            try:
                status, batch = await self._poll(next_index)
            except (LinkError, InstrumentReplyError) as exc:
                if isinstance(exc, InstrumentReplyError) and exc.code is not None:
                    raise  # the counter understood us and said no: not a link fault
                now = self._clock.monotonic()
                failing_since = now if failing_since is None else failing_since
                remaining = self._reconnect_timeout_s - (now - failing_since)
                if remaining <= 0:
                    raise LinkError(
                        f"gave up after {self._reconnect_timeout_s:g} s: {exc}",
                        instrument=self.instrument_id,
                    ) from exc
                await self._link.reconnect(remaining)
                continue
            failing_since = None
            if count_id is None:
                count_id = status.count_id
            self._check_same_count(status, count_id)
            for record in batch:
                if record.well in seen:
                    raise InstrumentReplyError(
                        f"well {record.well} reported twice", instrument=self.instrument_id
                    )
                seen.add(record.well)
                next_index = record.index + 1
                yield record
            if batch and next_index < status.done:
                continue  # more already counted: fetch without waiting
            if status.state == "DONE" and next_index >= status.total:
                return
            if status.state in ("ABORTED", "FAULT"):
                fault = status.fault_text or status.state.lower()
                raise InstrumentFaultError(
                    f"count {status.state.lower()} after {next_index} of {status.total} wells:"
                    f" {fault}",
                    instrument=self.instrument_id,
                    fault=fault,
                )
            await self._clock.sleep(self._poll_interval_s)

    # ------------------------------------------------------------------ internals

    async def _poll(self, next_index: int) -> tuple[StatusReply, list[WellCount]]:
        stat, fetched = await self._ask(QueryStatus(), Fetch(next_index))
        status = self._parse(stat, parse_status)
        if status.state == "IDLE":
            raise InstrumentFaultError(
                "the counter is idle: the count was reset", instrument=self.instrument_id,
                fault="count lost",
            )
        records = self._parse(fetched, parse_records)
        if records and records[0].index != next_index:
            self._link.mark_stale()
            raise InstrumentReplyError(
                f"asked for records from {next_index}, got {records[0].index}",
                instrument=self.instrument_id,
            )
        return status, list(records)

    def _check_same_count(self, status: StatusReply, count_id: int) -> None:
        if status.count_id != count_id:
            raise InstrumentFaultError(
                f"count {count_id} was replaced by count {status.count_id}",
                instrument=self.instrument_id,
                fault="count replaced",
            )

    async def _start(self, wells: Sequence[str] | None) -> tuple[int, int]:
        command = StartCount(None if wells is None else tuple(wells))
        (reply,) = await self._ask(command)
        ok = self._parse(reply, parse_ok)
        if len(ok.fields) != 2:
            raise InstrumentReplyError(
                f"start reply without count id and total: {reply.text!r}",
                instrument=self.instrument_id,
            )
        count_id, total = (self._parse(Line(field), parse_int) for field in ok.fields)
        return count_id, total

    async def _ask(self, *commands: Command) -> list[Line]:
        return await self._link.query_many([encode_command(c) for c in commands])

    def _parse(self, line: Line, parser: Callable[[Line], T]) -> T:
        """Apply ``parser``; an ``ERR`` reply becomes :class:`InstrumentReplyError` with its
        code, a malformed one becomes the same error with ``code=None`` (a garbled link)."""
        try:
            if is_error_reply(line):
                err = parse_error(line)
                raise InstrumentReplyError(
                    f"error {err.code}: {err.message}", instrument=self.instrument_id,
                    code=err.code,
                )
            return parser(line)
        except ProtocolError as exc:
            self._link.mark_stale()  # a reply of the wrong shape may be a stale one
            raise InstrumentReplyError(
                f"unexpected reply {line.text[:60]!r}: {exc}", instrument=self.instrument_id
            ) from exc

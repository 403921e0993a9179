"""Driver for the incubator: a Eurotherm 3200-style temperature controller with a plate
shaker on the same Modbus device (register map: :mod:`drivers.incubator.registers`).

The API states intent and is idempotent. :meth:`IncubatorDriver.set_temperature` reads the
target setpoint back and writes only if it differs at the register's resolution: the
controller keeps setpoints in memory rated for about 100,000 writes, and a control loop that
re-sends "37.0" every poll would wear it out within weeks. All waiting (polls, hold and
timeout of :meth:`IncubatorDriver.wait_until_stable`) is on the injected clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from drivers.backoff import Backoff
from drivers.base import Readings, ReadingValue
from drivers.clock import Clock, MonotonicClock
from drivers.errors import (
    InstrumentFaultError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    LinkError,
    ProtocolError,
)
from drivers.incubator.link import ModbusLink
from drivers.incubator.registers import (
    REGISTERS,
    Reg,
    StatusBits,
    decode_scaled,
    decode_status,
    decode_switch,
    decode_unsigned,
    encode_scaled,
    resolution,
)

__all__ = ["IncubatorDriver", "IncubatorStatus"]

_MAX_RPM = 10_000  # a shaker reporting more is a garbled register


@dataclass(frozen=True)
class IncubatorStatus:
    """One snapshot. ``temperature_c`` is None while the sensor is broken."""

    temperature_c: float | None
    target_c: float
    working_setpoint_c: float
    output_pct: float
    status: StatusBits
    shaker_on: bool
    shaker_rpm_setpoint: int
    shaker_rpm: int

    @property
    def ramping(self) -> bool:
        return self.working_setpoint_c != self.target_c


class IncubatorDriver:
    """One incubator at ``modbus-tcp://host:port`` or ``modbus-rtu://<serial url>``.

    ``decimals`` must match the controller's configured decimal point (registers are scaled
    integers); ``timeout_s`` bounds each Modbus reply (real time). ``settle_band_c``: how far
    the PV may be from the target for :meth:`readings` to say ``idle`` rather than ``busy``.
    """

    def __init__(
        self,
        address: str,
        *,
        instrument_id: str = "incubator",
        device_id: int = 1,
        decimals: int = 1,
        timeout_s: float = 2.0,
        clock: Clock | None = None,
        settle_band_c: float = 0.5,
        backoff: Backoff | None = None,
    ) -> None:
        resolution(decimals)  # validates
        self.address = address
        self.instrument_id = instrument_id
        self.decimals = decimals
        self.settle_band_c = settle_band_c
        self._clock: Clock = clock or MonotonicClock()
        self._settings = asyncio.Lock()  # read-compare-write is one step for concurrent callers
        self._link = ModbusLink(
            address, device_id=device_id, timeout_s=timeout_s, instrument_id=instrument_id,
            clock=self._clock, backoff=backoff,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._link.connected

    async def open(self) -> None:
        """Connect and check the controller answers (reads the PV)."""
        await self._link.open()
        await self._link.read(Reg.PV)

    async def close(self) -> None:
        await self._link.close()

    async def __aenter__(self) -> IncubatorDriver:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def identify(self) -> Mapping[str, str | int]:
        """The 3200 has no identity string over Modbus: report what we talk to, after
        proving it answers."""
        await self._link.read(Reg.PV)
        return {
            "vendor": "Eurotherm",
            "model": "3200 (Modbus register map) + plate shaker",
            "transport": f"modbus-{self._link.target.transport}",
            "device_id": self._link.device_id,
            "decimals": self.decimals,
        }

    # ------------------------------------------------------------------ reading

    async def status(self) -> IncubatorStatus:
        """PV, setpoints and output (registers 1-5), status (75), shaker (300-302)."""
        loop = await self._link.read(Reg.PV, 5)
        (status_word,) = await self._link.read(Reg.STATUS)
        shaker = await self._link.read(Reg.SHAKER_ON, 3)
        try:
            status = decode_status(status_word)
            pv = decode_scaled(loop[0], self.decimals)
            return IncubatorStatus(
                temperature_c=None if status.sensor_break else pv,
                target_c=self._required(loop[1], Reg.TARGET_SP),
                working_setpoint_c=self._required(loop[4], Reg.WORKING_SP),
                output_pct=self._required(loop[3], Reg.WORKING_OP),
                status=status,
                shaker_on=decode_switch(shaker[0], name="register 300 (shaker on)"),
                shaker_rpm_setpoint=decode_unsigned(
                    shaker[1], maximum=_MAX_RPM, name="register 301 (shaker rpm setpoint)"),
                shaker_rpm=decode_unsigned(
                    shaker[2], maximum=_MAX_RPM, name="register 302 (shaker rpm)"),
            )
        except ProtocolError as exc:
            raise InstrumentReplyError(str(exc), instrument=self.instrument_id) from exc

    async def readings(self) -> Readings:
        st = await self.status()
        values: dict[str, ReadingValue] = {
            "temperature_c": st.temperature_c,
            "setpoint_c": st.target_c,
            "working_setpoint_c": st.working_setpoint_c,
            "output_pct": st.output_pct,
            "shaking": st.shaker_on,
            "shaker_rpm": st.shaker_rpm,
            "shaker_rpm_setpoint": st.shaker_rpm_setpoint,
            "sensor_break": st.status.sensor_break,
            "loop_break": st.status.loop_break,
            "pv_over_range": st.status.pv_over_range,
        }
        for i, on in enumerate(st.status.alarms):
            values[f"alarm_{i + 1}"] = on
        if faults := st.status.faults:
            return Readings("fault", ", ".join(faults), values)
        away = st.temperature_c is None or abs(st.temperature_c - st.target_c) > self.settle_band_c
        busy = st.ramping or away or st.shaker_on
        return Readings("busy" if busy else "idle", None, values)

    # ------------------------------------------------------------------ temperature

    async def set_temperature(self, celsius: float) -> bool:
        """Make ``celsius`` the target setpoint. Writes only if the controller holds a
        different value at its resolution; returns whether it wrote. :class:`ValueError`
        (nothing sent) for a value the register cannot hold."""
        return await self._ensure_scaled(Reg.TARGET_SP, celsius)

    async def set_ramp_rate(self, c_per_min: float) -> bool:
        """Setpoint rate limit in degC/min (0 = step changes); written only if different."""
        if c_per_min < 0:
            raise ValueError("a rate limit cannot be negative")
        return await self._ensure_scaled(Reg.SP_RATE, c_per_min)

    async def wait_until_stable(
        self, *, tolerance_c: float, hold_s: float, timeout_s: float, poll_s: float = 1.0
    ) -> float:
        """Wait until the PV has stayed within ``tolerance_c`` of the target (ramp finished)
        for ``hold_s``; return the clock time it entered that band for good.

        Raises :class:`InstrumentFaultError` as soon as an alarm, sensor break or loop break
        shows, and :class:`InstrumentTimeoutError` if not stable within ``timeout_s`` (link
        errors meanwhile are retried every poll; the last one is the timeout's cause).
        """
        if tolerance_c <= 0 or hold_s < 0 or timeout_s <= 0 or poll_s <= 0:
            raise ValueError("need tolerance_c > 0, hold_s >= 0, timeout_s > 0, poll_s > 0")
        start = self._clock.monotonic()
        since: float | None = None
        last_error: LinkError | None = None
        while True:
            now = self._clock.monotonic()
            try:
                st = await self.status()
            except LinkError as exc:
                last_error, since = exc, None
            else:
                last_error = None
                if faults := st.status.faults:
                    raise InstrumentFaultError(
                        f"not stable: {', '.join(faults)}", instrument=self.instrument_id,
                        fault=", ".join(faults),
                    )
                inside = (st.temperature_c is not None and not st.ramping
                          and abs(st.temperature_c - st.target_c) <= tolerance_c)
                since = (since if since is not None else now) if inside else None
                if since is not None and now - since >= hold_s:
                    return since
            if now - start >= timeout_s:
                raise InstrumentTimeoutError(
                    f"temperature not stable within {tolerance_c:g} C for {hold_s:g} s"
                    f" after {timeout_s:g} s", instrument=self.instrument_id,
                ) from last_error
            await self._clock.sleep(min(poll_s, start + timeout_s - now))

    # ------------------------------------------------------------------ shaker

    async def start_shaking(self, rpm: int) -> None:
        """Shake at ``rpm``; writes only what differs (speed, then the on switch)."""
        if isinstance(rpm, bool) or not isinstance(rpm, int) or not 0 < rpm <= 0xFFFF:
            raise ValueError(f"rpm must be a positive integer, got {rpm!r}")
        async with self._settings:
            st = await self.status()
            if st.shaker_rpm_setpoint != rpm:
                await self._link.write(Reg.SHAKER_RPM_SP, rpm)
            if not st.shaker_on:
                await self._link.write(Reg.SHAKER_ON, 1)

    async def stop_shaking(self) -> None:
        async with self._settings:
            (word,) = await self._link.read(Reg.SHAKER_ON)
            if self._decode(lambda: decode_switch(word, name="register 300 (shaker on)")):
                await self._link.write(Reg.SHAKER_ON, 0)

    # ------------------------------------------------------------------ internals

    async def _ensure_scaled(self, address: int, value: float) -> bool:
        word = encode_scaled(value, self.decimals)  # ValueError before anything is sent
        async with self._settings:
            (current,) = await self._link.read(address)
            if current == word:
                return False
            await self._link.write(address, word)
            return True

    def _required(self, word: int, address: int) -> float:
        value = decode_scaled(word, self.decimals)
        if value is None:
            raise ProtocolError(
                f"register {address} ({REGISTERS[address].name}) holds the no-value marker")
        return value

    def _decode(self, fn: Callable[[], bool]) -> bool:
        try:
            return fn()
        except ProtocolError as exc:
            raise InstrumentReplyError(str(exc), instrument=self.instrument_id) from exc


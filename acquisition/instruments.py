"""The daemon's instruments: connection supervision, retained state, and leases.

Each configured instrument gets one supervisor task that connects with jittered backoff,
reads its identity, polls its status, and publishes its retained state on
``{prefix}/{node}/instruments/{id}`` whenever that state changes (through the outbox, so
ordering with run documents holds). A run takes a *lease* on an instrument so that two runs
never drive one instrument; runs on different instruments proceed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass

import structlog

from acquisition.config import InstrumentConfig, LabConfig
from acquisition.errors import CommandError
from acquisition.journal import Journal, OutboxMessage
from acquisition.kinds import role_of
from acquisition.payloads import InstrumentState
from acquisition.run_recorder import utcnow
from drivers.backoff import Backoff
from drivers.base import Instrument
from drivers.clock import Clock
from drivers.errors import InstrumentError

__all__ = ["InstrumentHandle", "InstrumentManager", "make_driver"]

log = structlog.get_logger("acquisition.instruments")


@dataclass
class InstrumentHandle:
    """One instrument as the daemon sees it."""

    config: InstrumentConfig
    driver: Instrument
    state: str = "connecting"
    connected: bool = False
    fault: str | None = None
    identity: dict[str, str | int] | None = None
    readings: dict[str, float | int | str | bool | None] = field(default_factory=dict)
    lease: str | None = None
    last_published: bytes | None = None

    def snapshot(self, node: str) -> InstrumentState:
        state = "busy" if self.lease is not None and self.connected else self.state
        return InstrumentState(
            node=node,
            id=self.config.id,
            kind=self.config.kind,
            address=self.config.address,
            connected=self.connected,
            state=state,
            fault=self.fault,
            identity=self.identity,
            readings=self.readings,
            run=self.lease,
            ts=utcnow(),
        )


def make_driver(cfg: InstrumentConfig, clock: Clock) -> Instrument:
    """The driver for one configured instrument, made by its kind's registry entry
    (acquisition.kinds; the config accepts only registered kinds)."""
    from acquisition.kinds import instrument_kind

    return instrument_kind(cfg.kind).make_driver(cfg, clock)


def _identity(ident: object) -> dict[str, str | int]:
    """A driver's identity (a Mapping or a dataclass) as the published str/int fields."""
    if isinstance(ident, Mapping):
        items = dict(ident).items()
    elif is_dataclass(ident) and not isinstance(ident, type):
        items = asdict(ident).items()
    else:
        items = {"identity": str(ident)}.items()
    return {str(k): v for k, v in items if isinstance(v, str | int)}


class InstrumentManager:
    """Owns every driver; publishes instrument state; grants leases."""

    def __init__(
        self,
        config: LabConfig,
        journal: Journal,
        notify: Callable[[], None],
        clock: Clock,
        *,
        poll_clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._journal = journal
        self._notify = notify
        self._clock = clock  # the drivers'
        self._poll_clock = poll_clock or clock  # status polls and reconnect pacing
        self._rng = rng or random.Random()
        self.handles: dict[str, InstrumentHandle] = {
            cfg.id: InstrumentHandle(cfg, make_driver(cfg, clock)) for cfg in config.instruments
        }
        self._change = asyncio.Event()
        self.generation = 0  # +1 on every change of an instrument's state or lease
        # Runs waiting for instruments, first come first served: (run, instrument ids).
        self._queue: list[tuple[str, frozenset[str]]] = []

    def join_queue(self, run: str, ids: frozenset[str]) -> None:
        if all(r != run for r, _ in self._queue):
            self._queue.append((run, ids))

    def leave_queue(self, run: str) -> None:
        before = len(self._queue)
        self._queue = [(r, ids) for r, ids in self._queue if r != run]
        if len(self._queue) != before:
            self._signal_change()  # the next in line may go

    def waiting_ahead(self, run: str, ids: frozenset[str]) -> str | None:
        """The first run queued before ``run`` (all of them, if ``run`` is not queued) that
        wants one of ``ids`` and could take all it wants now: it goes first. One still
        waiting for something else does not hold ``run`` up (a run that needs the counter
        alone is not kept waiting behind one that also waits for a busy incubator)."""
        for other, wanted in self._queue:
            if other == run:
                return None
            if wanted & ids and all(self._free(i) for i in wanted):
                return other
        return None

    def _free(self, instrument_id: str) -> bool:
        h = self.handles.get(instrument_id)
        return h is not None and h.lease is None and h.connected and h.state != "fault"

    async def changed(self, since: int) -> None:
        """Wait until :attr:`generation` is past ``since`` (read it before looking at the
        instruments, so that a change in between is not missed)."""
        while self.generation == since:
            await self._change.wait()

    def _signal_change(self) -> None:
        self.generation += 1
        self._change.set()
        self._change = asyncio.Event()

    async def run(self) -> None:
        """Supervise every instrument until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for handle in self.handles.values():
                tg.create_task(self._supervise(handle), name=f"instrument:{handle.config.id}")

    async def close(self) -> None:
        for handle in self.handles.values():
            with contextlib.suppress(InstrumentError, OSError):
                await handle.driver.close()
            handle.connected = False
            handle.state = "disconnected"
            await self.publish(handle, force=True)

    def states(self) -> list[InstrumentState]:
        return [h.snapshot(self._config.node) for h in self.handles.values()]

    async def publish(self, handle: InstrumentHandle, *, force: bool = False) -> None:
        """Queue the retained state if it changed (the timestamp does not count)."""
        snap = handle.snapshot(self._config.node)
        key = snap.model_dump_json(exclude={"ts"}).encode()
        if not force and key == handle.last_published:
            return
        handle.last_published = key
        self._signal_change()
        topic = self._config.topic("instruments", handle.config.id)
        payload = snap.model_dump_json(by_alias=True).encode()
        await self._journal.enqueue([OutboxMessage(topic, payload, qos=1, retain=True)])
        self._notify()

    async def republish_all(self) -> None:
        for handle in self.handles.values():
            await self.publish(handle, force=True)

    @contextlib.asynccontextmanager
    async def lease(
        self, instrument_id: str, run: str, *, role: str | None = None
    ) -> AsyncIterator[InstrumentHandle]:
        """Hold an instrument for one run; CommandError if absent, not playing ``role``,
        held, offline or in fault."""
        handle = self.handles.get(instrument_id)
        if handle is None:
            raise CommandError("not_found", f"no instrument '{instrument_id}' in the config")
        if role is not None and role_of(handle.config.kind) != role:
            raise CommandError(
                "bad_request",
                f"instrument '{instrument_id}' is a {handle.config.kind}, not a {role}",
            )
        if handle.lease is not None:
            raise CommandError(
                "conflict", f"instrument '{instrument_id}' is held by run {handle.lease}"
            )
        if not handle.connected:
            raise CommandError(
                "unavailable", f"instrument '{instrument_id}' is not connected ({handle.state})"
            )
        if handle.state == "fault":
            raise CommandError(
                "unavailable",
                f"instrument '{instrument_id}' reports a fault: {handle.fault or 'unknown'}",
            )
        handle.lease = run
        try:
            await self.publish(handle)
            yield handle
        finally:
            handle.lease = None
            await self.publish(handle)

    async def _supervise(self, handle: InstrumentHandle) -> None:
        cfg = handle.config
        backoff = Backoff(base_s=0.5, factor=2.0, cap_s=30.0, random=self._rng.random)
        attempt = 0
        with structlog.contextvars.bound_contextvars(instrument=cfg.id):
            while True:
                try:
                    if not handle.driver.connected and handle.lease is not None:
                        # The run holding the instrument reconnects it itself; only report.
                        handle.connected = False
                        handle.state = "disconnected"
                        await self.publish(handle)
                        await self._poll_clock.sleep(cfg.status_interval_s)
                        continue
                    if not handle.driver.connected:
                        await handle.driver.open()
                        handle.identity = _identity(await handle.driver.identify())
                        log.info("instrument connected", address=cfg.address)
                        attempt = 0
                    await self._poll(handle)
                    await self._poll_clock.sleep(cfg.status_interval_s)
                except InstrumentError as exc:
                    if handle.connected or handle.state == "connecting":
                        log.warning("instrument unreachable", error=str(exc))
                    handle.connected = False
                    handle.state = "disconnected"
                    handle.fault = None
                    handle.readings = {}
                    await self.publish(handle)
                    if handle.lease is None:
                        with contextlib.suppress(InstrumentError, OSError):
                            await handle.driver.close()
                    await self._poll_clock.sleep(backoff.delay(attempt))
                    attempt += 1

    async def _poll(self, handle: InstrumentHandle) -> None:
        readings = await handle.driver.readings()
        handle.connected = True
        handle.fault = readings.fault
        handle.state = readings.state
        handle.readings = dict(readings.values)
        await self.publish(handle)

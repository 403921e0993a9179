"""The outbox drainer: journal outbox rows -> QoS1 publishes -> delete after PUBACK.

One :class:`OutboxDrainer` lives as long as the :class:`~acquisition.mqtt_link.MqttLink`;
:meth:`OutboxDrainer.run` runs once per broker connection. Rows are read in id order and
published with up to ``window`` publishes in flight, handed to paho one by one in id order
(:class:`~acquisition.puback.PubackRouter`), so paho writes them to the socket in id order
and the broker sees them in order. There is no task per message: the publisher task reads
rows ahead (from the journal's in-memory tail) and fills the window; each PUBACK, handled
in paho's callback as it is read, marks its row acknowledged and sends the next row read.
A row is deleted only after its PUBACK; deletes are batched by a second task. A publish
unanswered for ``publish_timeout_s`` ends the connection. When the connection dies the
session's TaskGroup cancels everything and the answers still due are dropped; the next
session starts again from the oldest undeleted row, so a message may be delivered twice
(same payload, same document id) but never lost. Rows acknowledged but not yet deleted are
remembered across sessions and not resent.

A publish the broker *refuses* (a PUBACK with a reason code >= 0x80, e.g. 0x87 "not
authorized" from an ACL) is not an acknowledgement: aiomqtt 2.5.1 ignores PUBACK reason
codes, so :class:`~acquisition.puback.PubackRouter` hands the reason code to the drainer,
which takes a failure as :class:`PublishRefusedError`. The row stays in the outbox, one
error per topic per connection is logged, and the topic is *held*: no later row of that
topic is sent (per-topic order is kept) while other topics keep flowing. After a backoff the
oldest refused row goes out alone as a probe; when the broker accepts it, the rest of the
topic follows in id order, otherwise the hold waits longer (up to
``refused_backoff.cap_s``). A new connection starts with no holds. A refusal is taken as a
verdict on the topic (what Mosquitto's ACLs give): a later row of the topic that was already
in flight when the first was refused and that the broker then accepted would arrive before
the refused one.

The outbox's data types live here too (re-exported by :mod:`acquisition.journal`), with
:class:`OutboxTail`, the journal's in-memory mirror of freshly committed rows.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aiomqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from acquisition.puback import PubackRouter, PublishRefusedError
from drivers.backoff import Backoff


class OutboxStore(Protocol):
    """What the drainer needs of the journal (acquisition.journal.Journal): the rows to
    publish after a cursor, their deletion once acknowledged, and how many are left."""

    async def outbox_after(self, after_id: int, limit: int) -> list[OutboxRow]: ...
    async def outbox_delete(self, ids: Sequence[int]) -> None: ...
    async def outbox_size(self) -> int: ...


__all__ = ["OutboxDrainer", "OutboxMessage", "OutboxRow", "OutboxTail", "PublishRefusedError"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OutboxMessage:
    """A message to publish once it is committed."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class OutboxRow:
    """An outbox message as stored, with its id (publish order)."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class OutboxTail:
    """Committed outbox rows with ``id > floor``, mirrored in memory (thread-safe).

    The drainer asks for "rows after my cursor" after every append; answering from memory
    saves a round trip through the worker thread per document. Rows enter the mirror only
    after their transaction committed and leave it after their delete committed. Rows at or
    below ``floor`` (there when the journal was opened, or shed when the mirror outgrew
    ``limit`` rows or ``max_bytes`` of payload: a broker away for hours) are read from
    SQLite.
    """

    def __init__(self, floor: int, limit: int = 20_000, max_bytes: int = 64 * 2**20) -> None:
        self._lock = threading.Lock()
        self._floor = floor
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ids: list[int] = []  # ascending: AUTOINCREMENT ids only grow
        self._rows: dict[int, OutboxRow] = {}

    @property
    def held_bytes(self) -> int:
        """Payload bytes held in memory now."""
        return self._bytes

    def add(self, rows: Sequence[OutboxRow]) -> None:
        with self._lock:
            for row in rows:
                self._ids.append(row.id)
                self._rows[row.id] = row
                self._bytes += len(row.payload)
            if len(self._ids) > self._limit or self._bytes > self._max_bytes:
                self._floor = self._ids[-1]
                self._ids.clear()
                self._rows.clear()
                self._bytes = 0

    def remove(self, ids: Sequence[int]) -> None:
        with self._lock:
            gone = set()
            for row_id in ids:
                row = self._rows.pop(row_id, None)
                if row is not None:
                    gone.add(row_id)
                    self._bytes -= len(row.payload)
            if not gone:
                return
            # Acknowledged rows are mostly the oldest: then one cut from the front, not a
            # shift of the whole list per row (a backlog can hold thousands).
            head = 0
            while head < len(self._ids) and self._ids[head] in gone:
                head += 1
            if head == len(gone):
                del self._ids[:head]
            else:
                self._ids = [i for i in self._ids if i not in gone]

    def after(self, after_id: int, limit: int) -> list[OutboxRow] | None:
        """The rows, or None if they must be read from SQLite."""
        with self._lock:
            if after_id < self._floor:
                return None
            start = bisect.bisect_right(self._ids, after_id)
            return [self._rows[i] for i in self._ids[start : start + limit]]


@dataclass
class _Hold:
    """A topic whose oldest unacknowledged row the broker refused."""

    first_id: int  # the oldest refused row: the probe
    attempt: int  # refusals of the probe so far (backoff attempt)
    retry_at: float  # loop time of the next probe; inf while the probe is out
    probing: bool = False  # the probe may be sent (once) or is out
    probe_id: int | None = None  # the row sent as the probe, until its answer


class OutboxDrainer:
    """Publishes the journal's outbox over whichever client is connected."""

    def __init__(
        self,
        journal: OutboxStore,
        *,
        window: int,
        publish_timeout_s: float = 30.0,
        poll_s: float = 1.0,
        delete_pause_s: float = 0.02,
        refused_backoff: Backoff | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("the publish window must be at least 1")
        self._journal = journal
        self._window = window
        self._timeout = publish_timeout_s
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._delete_wake = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._delete_batch = max(64, 2 * window)
        self._delete_pause_s = delete_pause_s
        self._delete_lock = asyncio.Lock()
        self._acked: set[int] = set()  # PUBACKed, not yet deleted
        self._to_delete: list[int] = []
        self._refused_backoff = refused_backoff or Backoff(base_s=1.0, factor=2.0, cap_s=60.0)
        # Per connection (reset by run):
        self._inflight: dict[int, float] = {}  # row id -> loop time it was sent, oldest first
        self._pending: deque[OutboxRow] = deque()  # read, not yet looked at, in id order
        self._cursor = 0  # the last row taken from _pending (sent or skipped)
        self._reads = 0  # bumped by a rewind: a read started before it is stale
        self._holds: dict[str, _Hold] = {}
        self._refusal_logged: set[str] = set()
        self._router: PubackRouter[OutboxRow] | None = None
        self._failure: BaseException | None = None  # raised in a PUBACK callback
        self.published = 0  # rows acknowledged by the broker, over the link's lifetime
        self.refused = 0  # publishes the broker refused (rows kept), over its lifetime

    def notify(self) -> None:
        """New outbox rows were committed: wake the publisher (if it has read everything;
        otherwise the PUBACK that empties its read-ahead makes it read again)."""
        if not self._pending:
            self._wake.set()

    async def run(self, client: aiomqtt.Client) -> None:
        """Drain over ``client`` until cancelled or the connection fails (MqttError).

        Call once per client: it takes over the client's PUBACK handling for the rows it
        publishes (see :class:`~acquisition.puback.PubackRouter`)."""
        self._inflight.clear()
        self._pending.clear()
        self._cursor = 0  # a new connection resends from the oldest undeleted row
        self._reads += 1
        self._holds.clear()
        self._refusal_logged.clear()
        self._failure = None
        self._router = PubackRouter(client, self._answered)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._deleter(), name="outbox-deleter")
                await self._publisher()
        finally:
            self._router.close()  # unanswered rows stay in the outbox for the next session
            self._router = None
            self._inflight.clear()
            self._pending.clear()

    async def wait_drained(self) -> None:
        """Return once every outbox row has been acknowledged and deleted."""
        while True:
            self._progress.clear()
            await self.flush()
            if await self._journal.outbox_size() == 0:
                return
            self._wake.set()
            await self._progress.wait()

    async def flush(self) -> None:
        """Delete the rows acknowledged so far."""
        async with self._delete_lock:
            batch = list(self._to_delete)
            if not batch:
                return
            await self._journal.outbox_delete(batch)
            # Appends only go to the end, so the batch is still the list's head.
            del self._to_delete[: len(batch)]
            self._acked.difference_update(batch)

    async def _publisher(self) -> None:
        """Read rows in id order and keep the window full; the PUBACK callback
        (:meth:`_answered`) refills the window between the publisher's wake-ups."""
        batch = max(64, self._window * 4)
        while True:
            self._wake.clear()
            if self._failure is not None:
                raise self._failure
            self._check_timeouts()
            self._release_due_holds()
            if not self._pending:
                reads = self._reads
                rows = await self._journal.outbox_after(self._cursor, batch)
                if reads != self._reads:
                    continue  # rewound while reading: read again from the new cursor
                if not rows:
                    if not self._holds:  # with a hold, progress comes from the probe's answer
                        self._progress.set()
                    await self._idle()
                    continue
                self._pending.extend(rows)
            self._pump()
            if self._pending:  # the window is full: PUBACKs send the rest
                await self._idle()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle_wait()):
                await self._wake.wait()

    def _pump(self) -> None:
        """Send read rows, in id order, while the window has room."""
        router = self._router
        assert router is not None
        pending, inflight = self._pending, self._inflight
        now = asyncio.get_running_loop().time()
        while pending and len(inflight) < self._window:
            row = pending.popleft()
            self._cursor = row.id
            if not self._may_send(row):
                continue
            hold = self._holds.get(row.topic)
            if hold is not None:
                hold.probe_id = row.id
            inflight[row.id] = now
            try:
                router.publish(row.topic, row.payload, row.qos, row.retain, row)
            except BaseException:
                del inflight[row.id]
                raise

    def _answered(self, row: OutboxRow, reason: ReasonCode) -> None:
        """The broker's answer to ``row`` (in paho's callback: must not raise)."""
        try:
            self._inflight.pop(row.id, None)
            if reason.is_failure:
                self._refused(row, PublishRefusedError(row.topic, reason))
            else:
                self._accepted(row)
            had_pending = bool(self._pending)
            self._pump()
            if had_pending and not self._pending:
                self._wake.set()  # read-ahead used up: read the next rows
        except Exception as exc:
            self._failure = self._failure or exc
            self._wake.set()

    def _accepted(self, row: OutboxRow) -> None:
        self.published += 1
        hold = self._holds.get(row.topic)
        if hold is not None and row.id == hold.probe_id:
            del self._holds[row.topic]  # the broker takes this topic again
            # Its later rows were skipped: send them now, in order.
            self._rewind(min(hold.first_id, row.id + 1))
            log.info("broker accepts the refused topic again", topic=row.topic, row=row.id)
        self._acked.add(row.id)
        self._to_delete.append(row.id)
        self._delete_wake.set()
        if len(self._to_delete) >= self._delete_batch:
            self._batch_full.set()
        self._progress.set()

    def _check_timeouts(self) -> None:
        """A publish unanswered for ``publish_timeout_s`` ends the connection (as aiomqtt's
        ``publish(timeout=...)`` did): the next one resends it."""
        if self._inflight:
            oldest = next(iter(self._inflight.values()))
            if asyncio.get_running_loop().time() - oldest >= self._timeout:
                raise aiomqtt.MqttError("Operation timed out")

    def _may_send(self, row: OutboxRow) -> bool:
        if row.id in self._acked or row.id in self._inflight:
            return False
        hold = self._holds.get(row.topic)
        if hold is None:
            return True
        # A held topic sends nothing but its probe, once per retry.
        return hold.probing and hold.probe_id is None and row.id == hold.first_id

    def _release_due_holds(self) -> None:
        """Arm the probes that are due (each rewinds the reading to its row)."""
        now = asyncio.get_running_loop().time()
        for hold in self._holds.values():
            if not hold.probing and hold.retry_at <= now:
                hold.probing, hold.probe_id, hold.retry_at = True, None, math.inf
                self._rewind(hold.first_id)

    def _rewind(self, row_id: int) -> None:
        """Read the outbox again from ``row_id`` (skipped rows, probes): the read-ahead
        (rows after the cursor) is dropped and read again."""
        self._cursor = min(self._cursor, row_id - 1)
        self._pending.clear()
        self._reads += 1
        self._wake.set()

    def _idle_wait(self) -> float:
        now = asyncio.get_running_loop().time()
        next_probe = min((h.retry_at for h in self._holds.values()), default=math.inf)
        deadline = next_probe
        if self._inflight:
            deadline = min(deadline, next(iter(self._inflight.values())) + self._timeout)
        return max(0.0, min(self._poll_s, deadline - now))

    def _refused(self, row: OutboxRow, exc: PublishRefusedError) -> None:
        """Keep the row; hold its topic and schedule a probe after a backoff."""
        self.refused += 1
        now = asyncio.get_running_loop().time()
        hold = self._holds.get(row.topic)
        if hold is None:
            hold = _Hold(first_id=row.id, attempt=0, retry_at=now + self._refused_backoff.delay(0))
            self._holds[row.topic] = hold
        elif row.id == hold.probe_id:  # the probe was refused again
            hold.attempt += 1
            hold.probing, hold.probe_id = False, None
            hold.first_id = min(hold.first_id, row.id)
            hold.retry_at = now + self._refused_backoff.delay(hold.attempt)
        else:  # another row of the topic that was in flight before the hold
            hold.first_id = min(hold.first_id, row.id)
        retry_in_s = round(max(0.0, hold.retry_at - now), 3) if hold.retry_at < math.inf else None
        if row.topic not in self._refusal_logged:
            self._refusal_logged.add(row.topic)
            log.error(
                "broker refused a publish: the row stays in the outbox and the topic is retried",
                topic=row.topic,
                reason=str(exc.reason),
                reason_code=f"0x{exc.code:02X}",
                row=row.id,
                retry_in_s=retry_in_s,
            )
        else:
            log.debug(
                "broker refused a publish again",
                topic=row.topic, reason_code=f"0x{exc.code:02X}", row=row.id,
                retry_in_s=retry_in_s,
            )  # fmt: skip
        self._wake.set()  # the publisher recomputes when to wake for the probe
        self._progress.set()

    async def _deleter(self) -> None:
        while True:
            await self._delete_wake.wait()
            # Deletes are not urgent: wait for a full batch or a short pause, so the journal
            # thread does one DELETE transaction per batch, not one per PUBACK.
            if len(self._to_delete) < self._delete_batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._delete_pause_s):
                        await self._batch_full.wait()
            self._delete_wake.clear()
            self._batch_full.clear()
            await self.flush()

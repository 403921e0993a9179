"""The outbox drainer: journal outbox rows -> QoS1 publishes -> delete after PUBACK.

One :class:`OutboxDrainer` lives as long as the :class:`~acquisition.mqtt_link.MqttLink`;
:meth:`OutboxDrainer.run` runs once per broker connection. Rows are read in id order and
published with up to ``window`` publishes in flight. Each publish is its own task and the
tasks are created in id order, so paho writes them to the socket in id order and the
broker sees them in order. A row is deleted only after its PUBACK (aiomqtt's QoS1
``publish`` returns when PUBACK arrives); deletes are batched by a second task. When the
connection dies the session's TaskGroup cancels everything; the next session starts again
from the oldest undeleted row, so a message may be delivered twice (same payload, same
document id) but never lost. Rows acknowledged but not yet deleted are remembered across
sessions and not resent.

The outbox's data types live here too (re-exported by :mod:`acquisition.journal`), with
:class:`OutboxTail`, the journal's in-memory mirror of freshly committed rows.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt

if TYPE_CHECKING:
    from acquisition.journal import Journal

__all__ = ["OutboxDrainer", "OutboxMessage", "OutboxRow", "OutboxTail"]


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
    ``limit``) are read from SQLite.
    """

    def __init__(self, floor: int, limit: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._floor = floor
        self._limit = limit
        self._ids: list[int] = []  # ascending: AUTOINCREMENT ids only grow
        self._rows: dict[int, OutboxRow] = {}

    def add(self, rows: Sequence[OutboxRow]) -> None:
        with self._lock:
            for row in rows:
                self._ids.append(row.id)
                self._rows[row.id] = row
            if len(self._ids) > self._limit:
                self._floor = self._ids[-1]
                self._ids.clear()
                self._rows.clear()

    def remove(self, ids: Sequence[int]) -> None:
        with self._lock:
            for row_id in ids:
                if self._rows.pop(row_id, None) is not None:
                    del self._ids[bisect.bisect_left(self._ids, row_id)]

    def after(self, after_id: int, limit: int) -> list[OutboxRow] | None:
        """The rows, or None if they must be read from SQLite."""
        with self._lock:
            if after_id < self._floor:
                return None
            start = bisect.bisect_right(self._ids, after_id)
            return [self._rows[i] for i in self._ids[start : start + limit]]




class OutboxDrainer:
    """Publishes the journal's outbox over whichever client is connected."""

    def __init__(
        self,
        journal: Journal,
        *,
        window: int,
        publish_timeout_s: float = 30.0,
        poll_s: float = 1.0,
        delete_pause_s: float = 0.02,
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
        self.published = 0  # rows acknowledged by the broker, over the link's lifetime

    def notify(self) -> None:
        """New outbox rows were committed: wake the publisher."""
        self._wake.set()

    async def run(self, client: aiomqtt.Client) -> None:
        """Drain over ``client`` until cancelled or the connection fails (MqttError)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deleter(), name="outbox-deleter")
            await self._publisher(client, tg)

    async def wait_drained(self) -> None:
        """Return once every outbox row has been acknowledged and deleted."""
        while True:
            self._progress.clear()
            await self.flush()
            if await self._journal.outbox_size() == 0:
                return
            self.notify()
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

    async def _publisher(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        slots = asyncio.Semaphore(self._window)
        cursor = 0  # a new connection resends from the oldest undeleted row
        batch = max(64, self._window * 4)
        while True:
            self._wake.clear()
            rows = await self._journal.outbox_after(cursor, batch)
            if not rows:
                self._progress.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
                continue
            for row in rows:
                cursor = row.id
                if row.id in self._acked:
                    continue
                await slots.acquire()
                tg.create_task(self._publish(client, row, slots), name=f"outbox-publish-{row.id}")

    async def _publish(
        self, client: aiomqtt.Client, row: OutboxRow, slots: asyncio.Semaphore
    ) -> None:
        try:
            await client.publish(
                row.topic, row.payload, qos=row.qos, retain=row.retain, timeout=self._timeout
            )
        finally:
            slots.release()
        self.published += 1
        self._acked.add(row.id)
        self._to_delete.append(row.id)
        self._delete_wake.set()
        if len(self._to_delete) >= self._delete_batch:
            self._batch_full.set()
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

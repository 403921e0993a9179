"""The journal's one SQLite thread, with group commit.

Every journal operation is a job ``fn(conn) -> result`` run on one dedicated thread that owns
the connection, strictly in submission order. Jobs that queue up while the thread is busy
run together in ONE transaction, each inside its own SAVEPOINT: a job that raises is rolled
back alone (its caller gets the exception), the others commit. A burst of appends then
costs one COMMIT instead of one each, and one wake-up of the event loop per batch.

Side effects that must only happen once data is on disk (exposing new outbox rows to the
drainer) are registered by a job with :meth:`JournalWorker.after_commit`; they run after the
COMMIT, and are dropped with a job that is rolled back. If the COMMIT itself fails, every
job of the batch fails with that error and none of their side effects run.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MAX_BATCH", "JournalWorker"]

MAX_BATCH = 256
_T = TypeVar("_T")
_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
_STOP = None


class JournalWorker:
    """One thread, one connection, jobs in order, consecutive jobs in one transaction."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str = "journal") -> None:
        self._connect = connect
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._post: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._opened: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # transactions committed (for tests and benchmarks)
        self.jobs_done = 0

    async def start(self) -> None:
        """Start the thread and open the connection on it; raise what opening raised."""
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.create_future()
        self._thread.start()
        await self._opened

    async def call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` on the thread, after every job submitted before it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((fn, loop, fut))
        return await fut

    def after_commit(self, effect: Callable[[], None]) -> None:
        """From inside a job: run ``effect`` on the thread once the job is committed."""
        self._post.append(effect)

    async def stop(self) -> None:
        """Finish the queued jobs, close the connection, end the thread."""
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # -- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        assert self._loop is not None and self._opened is not None
        opened: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
        try:
            conn = self._connect()
        except BaseException as exc:
            opened = [(self._opened, None, exc)]
            self._loop.call_soon_threadsafe(_settle, opened)
            return
        opened = [(self._opened, None, None)]
        self._loop.call_soon_threadsafe(_settle, opened)
        try:
            while (batch := self._take()) is not None:
                self._run(conn, batch)
        finally:
            conn.close()

    def _take(self) -> list[_Job] | None:
        first = self._jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(_STOP)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _run(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        self._post.clear()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._answer(batch, [(None, exc)] * len(batch))
            return
        for fn, _, _ in batch:
            mark = len(self._post)
            conn.execute("SAVEPOINT job")
            try:
                result = fn(conn)
            except BaseException as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                del self._post[mark:]
                outcomes.append((None, exc))
                continue
            conn.execute("RELEASE job")
            outcomes.append((result, None))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._answer(batch, [(None, exc)] * len(batch))
            return
        self.batches += 1
        self.jobs_done += len(batch)
        for effect in self._post:
            effect()
        self._answer(batch, outcomes)

    @staticmethod
    def _answer(batch: list[_Job], outcomes: list[tuple[Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, loop, fut), (result, exc) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, result, exc))
        for loop, items in by_loop.items():  # one wake-up per loop and batch
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.cancelled():
            continue  # the caller stopped waiting; the job ran (or failed) all the same
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

"""The journal's one SQLite thread, with group commit.

Every journal operation is a job ``fn(conn) -> result`` run on one dedicated thread that owns
the connection, strictly in submission order. :meth:`JournalWorker.submit` queues the job at
once (synchronously), so the order of ``submit`` calls is the order on disk. Jobs that queue
up while the thread is busy run together in ONE transaction, each inside its own SAVEPOINT:
a job that raises is rolled back alone (its caller gets the exception), the others commit.
A burst of appends then costs one COMMIT instead of one each, and one wake-up of the event
loop per batch.

A job may carry a ``group`` attribute: a function ``group(conn, jobs) -> results`` that does
the work of several consecutive jobs carrying the same function at once (the journal's
appends: one ``executemany`` instead of a handful of statements each). The group runs in
one savepoint; if it declines (returns None) or raises, that savepoint is rolled back and
the jobs run one by one as above, so a group only ever does what its jobs, run in order,
would have done, and a failing job still fails alone.

Side effects that must only happen once data is on disk (exposing new outbox rows to the
drainer) are registered by a job with :meth:`JournalWorker.after_commit`; they run after the
COMMIT and are dropped with a job that is rolled back. If SQLite aborts the whole
transaction (disk full, I/O error: a job's error leaves no transaction open) or the COMMIT
fails, every job of the batch fails with that error and no side effect runs.

If the thread dies anyway, every queued and future job fails with :class:`WorkerDead`;
no caller waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

__all__ = ["MAX_BATCH", "JournalWorker", "WorkerDead"]

log = structlog.get_logger(__name__)
MAX_BATCH = 256
_T = TypeVar("_T")
_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
_Outcome = tuple[Any, BaseException | None]
_STOP = None


class WorkerDead(sqlite3.OperationalError):
    """The journal thread is gone (closed, or it failed); nothing more can be written."""


class JournalWorker:
    """One thread, one connection, jobs in order, consecutive jobs in one transaction."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str = "journal") -> None:
        self._connect = connect
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._post: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._opened: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead: WorkerDead | None = None
        self._lock = threading.Lock()  # orders "is it dead?" against queueing a job
        self.batches = 0  # transactions committed (for tests and benchmarks)
        self.jobs_done = 0

    async def start(self) -> None:
        """Start the thread and open the connection on it; raise what opening raised."""
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.create_future()
        self._thread.start()
        await self._opened

    def submit(self, fn: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        """Queue ``fn(conn)`` now, after every job submitted before; its future result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        with self._lock:
            if self._dead is not None:
                fut.set_exception(self._dead)
            else:
                self._jobs.put((fn, loop, fut))
        return fut

    def after_commit(self, effect: Callable[[], None]) -> None:
        """From inside a job: run ``effect`` on the thread once the job is committed."""
        self._post.append(effect)

    async def stop(self) -> None:
        """Finish the jobs queued so far, close the connection, end the thread."""
        with self._lock:
            if self._dead is None:
                self._jobs.put(_STOP)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # -- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        assert self._loop is not None and self._opened is not None
        try:
            conn = self._connect()
        except BaseException as exc:
            self._die(WorkerDead(f"cannot open the journal: {exc}"))
            _reply(self._loop, [(self._opened, None, exc)])
            return
        _reply(self._loop, [(self._opened, None, None)])
        batch: list[_Job] = []
        try:
            while (taken := self._take()) is not None:
                batch = taken
                self._run(conn, batch)
                batch = []
            self._die(WorkerDead("the journal is closed"))
        except BaseException as exc:  # a bug or a broken connection: fail loudly, not silently
            log.exception("journal thread failed")
            dead = WorkerDead(f"the journal thread failed: {exc}")
            self._answer(batch, [(None, dead)] * len(batch))
            self._die(dead)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _die(self, dead: WorkerDead) -> None:
        """No more jobs: fail every one still queued, and every later submit."""
        with self._lock:
            self._dead = dead
        leftovers: list[_Job] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftovers.append(job)
        self._answer(leftovers, [(None, dead)] * len(leftovers))

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
        self._post.clear()
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            i = 0
            while i < len(batch):
                group = getattr(batch[i][0], "group", None)
                end = i + 1
                while group is not None and end < len(batch):
                    if getattr(batch[end][0], "group", None) is not group:
                        break
                    end += 1
                if end - i > 1 and self._run_group(conn, group, batch[i:end], outcomes):
                    i = end
                    continue
                for fn, _, _ in batch[i:end]:
                    outcomes.append(self._run_job(conn, fn))
                    if not conn.in_transaction:  # SQLite aborted the whole transaction
                        _aborted(outcomes[-1][1])
                i = end
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._answer(batch, [(None, exc)] * len(batch))
            return
        self.batches += 1
        self.jobs_done += len(batch)
        for effect in self._post:
            try:
                effect()
            except Exception:  # an in-memory mirror; the data itself is committed
                log.exception("journal after-commit effect failed")
        self._answer(batch, outcomes)

    def _run_job(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]
    ) -> _Outcome:
        mark = len(self._post)
        conn.execute("SAVEPOINT job")
        try:
            result = fn(conn)
        except Exception as exc:
            del self._post[mark:]
            if conn.in_transaction:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            return None, exc
        conn.execute("RELEASE job")
        return result, None

    def _run_group(
        self, conn: sqlite3.Connection, group: Any, jobs: list[_Job], outcomes: list[_Outcome]
    ) -> bool:
        """Run consecutive jobs sharing a ``group`` function in one savepoint, as
        ``group(conn, fns) -> results``; False (nothing done) if it declines (returns None)
        or raises: then they run one by one, each in its own savepoint, as ever."""
        mark = len(self._post)
        conn.execute("SAVEPOINT grp")
        try:
            results = group(conn, [fn for fn, _, _ in jobs])
        except Exception as exc:
            results = None
            if not conn.in_transaction:  # SQLite aborted the whole transaction
                _aborted(exc)
        if results is None:
            del self._post[mark:]
            conn.execute("ROLLBACK TO grp")
            conn.execute("RELEASE grp")
            return False
        conn.execute("RELEASE grp")
        outcomes.extend((result, None) for result in results)
        return True

    @staticmethod
    def _answer(batch: list[_Job], outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, loop, fut), (result, exc) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, result, exc))
        for loop, items in by_loop.items():  # one wake-up per loop and batch
            _reply(loop, items)


def _aborted(cause: BaseException | None) -> None:
    raise cause or sqlite3.OperationalError("transaction aborted")


def _reply(loop: asyncio.AbstractEventLoop, items: list[Any]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():
            continue  # the caller stopped waiting; the job ran (or failed) all the same
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

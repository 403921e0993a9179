"""Group commit: jobs in order, many per transaction, a failing one rolled back alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acquisition.journal.worker import JournalWorker, WorkerDead


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    return conn


async def test_queued_jobs_commit_together_in_order_and_a_bad_one_alone(tmp_path: Path) -> None:
    worker = JournalWorker(lambda: _connect(tmp_path / "w.sqlite3"))
    await worker.start()
    effects: list[int] = []

    def insert(n: int) -> Callable[[sqlite3.Connection], int]:
        def job(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t (n) VALUES (?)", (n,))
            worker.after_commit(lambda: effects.append(n))
            return n

        return job

    try:
        calls = [worker.submit(insert(n)) for n in range(1, 101)]
        calls.insert(50, worker.submit(insert(7)))  # duplicate key: fails, alone
        results = await asyncio.gather(*calls, return_exceptions=True)
        rows = await worker.submit(
            lambda c: [r[0] for r in c.execute("SELECT n FROM t ORDER BY n")]
        )
    finally:
        await worker.stop()
    assert [r for r in results if isinstance(r, Exception)] != []
    assert isinstance(results[50], sqlite3.IntegrityError)
    assert rows == list(range(1, 101))
    assert effects == list(range(1, 101))  # the failed job's effect was dropped
    assert worker.batches < worker.jobs_done  # jobs queued behind each other shared commits


async def test_a_failed_open_is_raised(tmp_path: Path) -> None:
    def broken() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    worker = JournalWorker(broken)
    with pytest.raises(sqlite3.OperationalError):
        await worker.start()


class _Boom(BaseException):
    """Not an Exception: the kind of failure that would kill a thread."""


async def test_a_dead_thread_fails_every_waiting_and_later_caller(tmp_path: Path) -> None:
    worker = JournalWorker(lambda: _connect(tmp_path / "w.sqlite3"))
    await worker.start()

    def boom(conn: sqlite3.Connection) -> None:
        raise _Boom

    first = worker.submit(boom)
    queued = worker.submit(lambda c: 1)
    results = await asyncio.wait_for(asyncio.gather(first, queued, return_exceptions=True), 5)
    assert all(isinstance(r, WorkerDead) for r in results), results
    with pytest.raises(WorkerDead):
        await asyncio.wait_for(worker.submit(lambda c: 2), 5)
    await worker.stop()


async def test_a_transaction_sqlite_aborts_fails_its_batch_and_the_thread_goes_on(
    tmp_path: Path,
) -> None:
    worker = JournalWorker(lambda: _connect(tmp_path / "w.sqlite3"))
    await worker.start()
    try:
        await worker.submit(lambda c: c.execute("CREATE TABLE blobs (b BLOB)"))
        pages = await worker.submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await worker.submit(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))

        def too_big(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO blobs VALUES (?)", (b"x" * 1_000_000,))

        small = worker.submit(lambda c: c.execute("INSERT INTO t (n) VALUES (1)"))
        big = worker.submit(too_big)
        results = await asyncio.wait_for(asyncio.gather(small, big, return_exceptions=True), 5)
        assert isinstance(results[1], sqlite3.Error)
        # Whatever SQLite did to the batch, nobody hangs and the thread still works.
        assert await asyncio.wait_for(worker.submit(lambda c: 41 + 1), 5) == 42
    finally:
        await worker.stop()


async def test_jobs_queued_before_stop_still_run(tmp_path: Path) -> None:
    worker = JournalWorker(lambda: _connect(tmp_path / "w.sqlite3"))
    await worker.start()
    queued = worker.submit(lambda c: c.execute("INSERT INTO t (n) VALUES (5)").rowcount)
    await worker.stop()
    assert await queued == 1
    with pytest.raises(WorkerDead):
        await worker.submit(lambda c: 1)


async def test_a_group_does_its_jobs_at_once_and_falls_back_to_one_by_one(tmp_path: Path) -> None:
    """Consecutive jobs carrying the same ``group`` run through it in one savepoint; if it
    declines or raises, its writes and effects are undone and the jobs run one by one."""
    worker = JournalWorker(lambda: _connect(tmp_path / "g.sqlite3"))
    await worker.start()
    effects: list[str] = []
    grouped: list[list[int]] = []
    mode = {"group": "ok"}

    class Insert:
        def __init__(self, n: int) -> None:
            self.n = n

        def __call__(self, conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t (n) VALUES (?)", (self.n,))
            worker.after_commit(lambda: effects.append(f"one {self.n}"))
            return self.n

        @staticmethod
        def group(conn: sqlite3.Connection, jobs: list[Insert]) -> list[int] | None:
            ns = [j.n for j in jobs]
            conn.executemany("INSERT INTO t (n) VALUES (?)", [(n,) for n in ns])
            worker.after_commit(lambda: effects.append(f"group {ns}"))
            if mode["group"] == "decline":
                return None
            grouped.append(ns)
            return ns  # raises IntegrityError first if an n is taken

    try:
        blocker = threading.Event()

        async def queued_together(ns: tuple[int, ...]) -> list[Any]:
            # Hold the thread so the jobs queue up behind each other and share a batch.
            hold = worker.submit(lambda c: blocker.wait(10))
            calls = [worker.submit(Insert(n)) for n in ns]
            blocker.set()
            await hold
            blocker.clear()
            return await asyncio.gather(*calls, return_exceptions=True)

        assert await queued_together((1, 2, 3)) == [1, 2, 3]
        results = await queued_together((4, 2, 5))  # 2 is taken
        mode["group"] = "decline"
        assert await queued_together((6, 7)) == [6, 7]
        rows = await worker.submit(lambda c: [r[0] for r in c.execute("SELECT n FROM t")])
    finally:
        await worker.stop()
    assert results[0] == 4 and isinstance(results[1], sqlite3.IntegrityError) and results[2] == 5
    assert sorted(rows) == [1, 2, 3, 4, 5, 6, 7]
    # Effects only of what committed: no effect of a group that raised or declined.
    assert "group [4, 2, 5]" not in effects and "group [6, 7]" not in effects
    assert {"one 4", "one 5", "one 6", "one 7"} <= set(effects)
    assert grouped == [[1, 2, 3]] and "group [1, 2, 3]" in effects

"""Group commit: jobs in order, many per transaction, a failing one rolled back alone."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from acquisition.journal_worker import JournalWorker


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
        calls = [worker.call(insert(n)) for n in range(1, 101)]
        calls.insert(50, worker.call(insert(7)))  # duplicate key: fails, alone
        results = await asyncio.gather(*calls, return_exceptions=True)
        rows = await worker.call(lambda c: [r[0] for r in c.execute("SELECT n FROM t ORDER BY n")])
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

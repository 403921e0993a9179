"""Appends queued behind each other run as one group (journal/writes.py, Append.group): the
same rows, ids and run record as one by one, and a failing append still fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from acquisition.errors import JournalError
from acquisition.journal import Journal, OutboxMessage

T0 = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
EVENTS, STATE = "assay/lab1/runs/r1/events", "assay/lab1/runs/r1/state"


def _outbox(seq: int) -> list[OutboxMessage]:
    """The event, and every third document the retained state (as RunRecorder throttles)."""
    out = [OutboxMessage(EVENTS, f"doc {seq}".encode())]
    if seq % 3 == 0:
        out.append(OutboxMessage(STATE, f"state {seq}".encode(), retain=True))
    return out


def _append(journal: Journal, seq: int, doc_id: str | None = None) -> asyncio.Future[None]:
    return journal.submit_append(
        "r1", seq, doc_id or f"d{seq}", "data", f"doc {seq}".encode(), outbox=_outbox(seq),
        state="running" if seq % 2 else None, state_payload=f"s{seq}".encode(),
    )  # fmt: skip


async def _everything(journal: Journal) -> dict[str, Any]:
    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        return {
            "documents": conn.execute("SELECT * FROM documents ORDER BY run, seq").fetchall(),
            "outbox": conn.execute("SELECT * FROM outbox ORDER BY id").fetchall(),
            "runs": conn.execute("SELECT run, state, last_seq, state_payload FROM runs").fetchall(),
            "sequence": conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
            .fetchall(),
        }  # fmt: skip

    return await journal.worker.submit(read)


async def test_appends_queued_together_write_what_appends_one_by_one_write(
    tmp_path: Path,
) -> None:
    grouped = await Journal.open(tmp_path / "grouped.sqlite3")
    single = await Journal.open(tmp_path / "single.sqlite3")
    try:
        for journal in (grouped, single):
            await journal.create_run("r1", "p", {}, T0)
            await journal.enqueue([OutboxMessage("x", b"before")])
            await journal.outbox_delete([r.id for r in await journal.outbox_after(0, 10)])
        await asyncio.gather(*[_append(grouped, seq) for seq in range(1, 301)])
        for seq in range(1, 301):
            await _append(single, seq)
        assert grouped.worker.batches < 50 < single.worker.batches  # groups really ran
        a, b = await _everything(grouped), await _everything(single)
        assert a == b
        assert a["outbox"][0][0] == 2, "the deleted row's id is not given again"
        assert a["sequence"] == [(a["outbox"][-1][0],)]
        # The in-memory mirror the drainer reads agrees with SQLite.
        mirrored = await grouped.outbox_after(0, 1000)
        assert [(r.id, r.topic, r.payload, r.qos, r.retain) for r in mirrored] == [
            (row[0], row[1], row[2], row[3], bool(row[4])) for row in a["outbox"]
        ]
    finally:
        await grouped.close()
        await single.close()


async def test_a_failing_append_in_a_group_fails_alone(tmp_journal: Journal) -> None:
    await tmp_journal.create_run("r1", "p", {}, T0)
    calls = [_append(tmp_journal, seq) for seq in range(1, 11)]
    calls.append(_append(tmp_journal, 11, doc_id="d5"))  # a duplicate id: fails
    calls += [_append(tmp_journal, seq) for seq in range(11, 21)]
    calls.append(_append(tmp_journal, 23))  # a gap: fails
    calls += [_append(tmp_journal, seq) for seq in range(21, 31)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = [i for i, r in enumerate(results) if r is not None]
    assert failed == [10, 21]
    assert isinstance(results[10], JournalError) and "duplicate document id" in str(results[10])
    assert isinstance(results[21], JournalError) and "does not follow" in str(results[21])
    assert await tmp_journal.documents("r1") == [f"doc {s}".encode() for s in range(1, 31)]
    rows = await tmp_journal.outbox_after(0, 1000)
    want = [(m.topic, m.payload) for seq in range(1, 31) for m in _outbox(seq)]
    assert [(r.topic, r.payload) for r in rows] == want
    ids = [r.id for r in rows]
    assert ids == sorted(set(ids))
    run = await tmp_journal.get_run("r1")
    assert run is not None and (run.last_seq, run.state_payload) == (30, b"s30")


async def test_appends_of_two_runs_interleaved_all_commit(tmp_journal: Journal) -> None:
    for run in ("r1", "r2"):
        await tmp_journal.create_run(run, "p", {}, T0)
    calls = [
        tmp_journal.submit_append(run, seq, f"{run}-{seq}", "data", b"x", outbox=_outbox(seq))
        for seq in range(1, 51)
        for run in ("r1", "r2")
    ]
    assert await asyncio.gather(*calls) == [None] * 100
    for run in ("r1", "r2"):
        record = await tmp_journal.get_run(run)
        assert record is not None and record.last_seq == 50


async def test_a_run_that_does_not_exist_fails_each_of_its_appends(tmp_journal: Journal) -> None:
    calls = [tmp_journal.submit_append("nope", seq, f"n{seq}", "data", b"x") for seq in range(1, 4)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, JournalError) and "does not exist" in str(r) for r in results)
    assert await tmp_journal.outbox_size() == 0


@pytest.mark.parametrize("reopen", [False, True])
async def test_ids_keep_growing_across_deletes_and_reopen(tmp_path: Path, reopen: bool) -> None:
    path = tmp_path / "j.sqlite3"
    journal = await Journal.open(path)
    try:
        await journal.create_run("r1", "p", {}, T0)
        await asyncio.gather(*[_append(journal, seq) for seq in range(1, 41)])
        first = [r.id for r in await journal.outbox_after(0, 1000)]
        await journal.outbox_delete(first)  # the outbox is empty: MAX(id) says nothing now
        if reopen:
            await journal.close()
            journal = await Journal.open(path)
        await asyncio.gather(*[_append(journal, seq) for seq in range(41, 81)])
        second = [r.id for r in await journal.outbox_after(0, 1000)]
    finally:
        await journal.close()
    assert min(second) == max(first) + 1
    assert second == sorted(set(second))


async def test_a_state_given_as_a_function_is_encoded_only_if_stored(
    tmp_journal: Journal,
) -> None:
    await tmp_journal.create_run("r1", "p", {}, T0)
    called: list[int] = []

    def state(seq: int) -> Callable[[], bytes]:
        def encode() -> bytes:
            called.append(seq)
            if seq == 25:
                raise ValueError("not a state")
            return f"state {seq}".encode()

        return encode

    gate = threading.Event()  # hold the thread: the 20 appends queue up behind each other
    held = tmp_journal.worker.submit(lambda c: gate.wait(10))
    calls = [
        tmp_journal.submit_append("r1", seq, f"d{seq}", "data", b"x", state_payload=state(seq))
        for seq in range(1, 21)
    ]
    gate.set()
    await held
    await asyncio.gather(*calls)
    assert called == [20], "one group, one state stored: only the newest is encoded"
    record = await tmp_journal.get_run("r1")
    assert record is not None and record.state_payload == b"state 20"
    calls = [
        tmp_journal.submit_append("r1", seq, f"d{seq}", "data", b"x", state_payload=state(seq))
        for seq in range(21, 26)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:4] == [None] * 4 and isinstance(results[4], ValueError)
    record = await tmp_journal.get_run("r1")
    assert record is not None and (record.last_seq, record.state_payload) == (24, b"state 24")

"""The SQLite journal: atomic appends, seq discipline, the outbox, crash durability."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acquisition.errors import JournalError
from acquisition.journal import SCHEMA_VERSION, Journal, OutboxMessage, OutboxRow
from acquisition.journal.outbox import OutboxTail

T0 = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def msg(n: int, topic: str = "assay/lab1/runs/r1/events") -> OutboxMessage:
    return OutboxMessage(topic, f"doc {n}".encode())


async def test_open_creates_dirs_wal_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "journal.sqlite3"
    journal = await Journal.open(path, synchronous="full")
    await journal.close()
    await journal.close()  # idempotent
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.close()


async def test_bad_synchronous_and_unopenable_path_raise_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="synchronous"):
        await Journal.open(tmp_path / "j.sqlite3", synchronous="off")
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(JournalError, match=r"dir\.sqlite3") as info:
        await Journal.open(tmp_path / "dir.sqlite3")
    assert isinstance(info.value.__cause__, sqlite3.Error)


async def test_closed_journal_raises(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite3")
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await journal.outbox_size()


async def test_create_run_twice_is_an_error(tmp_journal: Journal) -> None:
    await tmp_journal.create_run("r1", "competition", {"wells": 96}, T0)
    with pytest.raises(JournalError, match="already exists"):
        await tmp_journal.create_run("r1", "competition", {}, T0)
    run = await tmp_journal.get_run("r1")
    assert run is not None
    assert (run.protocol, run.state, run.last_seq, run.params) == (
        "competition",
        "queued",
        0,
        {"wells": 96},
    )
    assert run.created_at == T0 and run.state_payload is None
    assert await tmp_journal.get_run("nope") is None


async def test_seq_must_follow_last_seq(tmp_journal: Journal) -> None:
    await tmp_journal.create_run("r1", "p", {}, T0)
    with pytest.raises(JournalError, match="seq 2 does not follow last_seq 0"):
        await tmp_journal.append("r1", 2, "d2", "data", b"x")
    await tmp_journal.append("r1", 1, "d1", "start", b"one")
    with pytest.raises(JournalError, match="seq 1 does not follow"):
        await tmp_journal.append("r1", 1, "d1-again", "data", b"x")
    with pytest.raises(JournalError, match="seq 3 does not follow"):
        await tmp_journal.append("r1", 3, "d3", "data", b"x")
    with pytest.raises(JournalError, match="does not exist"):
        await tmp_journal.append("other", 1, "o1", "start", b"x")
    assert await tmp_journal.documents("r1") == [b"one"]


async def test_append_is_one_transaction_with_its_outbox(tmp_journal: Journal) -> None:
    await tmp_journal.create_run("r1", "p", {}, T0)
    await tmp_journal.append(
        "r1", 1, "d1", "start", b"doc1",
        outbox=[msg(1), OutboxMessage("assay/lab1/runs/r1/state", b"running", retain=True)],
        state="running", state_payload=b"running",
    )  # fmt: skip
    # A rejected append (duplicate document id) writes nothing: no document, no outbox row.
    with pytest.raises(JournalError, match="duplicate document id"):
        await tmp_journal.append("r1", 2, "d1", "data", b"dup", outbox=[msg(2)], state="paused")
    run = await tmp_journal.get_run("r1")
    assert run is not None
    assert (run.last_seq, run.state, run.state_payload) == (1, "running", b"running")
    assert run.updated_at >= run.created_at
    rows = await tmp_journal.outbox_after(0, 10)
    assert [(r.topic, r.payload, r.qos, r.retain) for r in rows] == [
        ("assay/lab1/runs/r1/events", b"doc 1", 1, False),
        ("assay/lab1/runs/r1/state", b"running", 1, True),
    ]
    # state is optional: last_seq moves, the state stays.
    await tmp_journal.append("r1", 2, "d2", "data", b"doc2", outbox=[msg(2)])
    run = await tmp_journal.get_run("r1")
    assert run is not None and (run.last_seq, run.state) == (2, "running")
    assert await tmp_journal.outbox_size() == 3


async def test_documents_ranges(tmp_journal: Journal) -> None:
    await tmp_journal.create_run("r1", "p", {}, T0)
    await tmp_journal.create_run("r2", "p", {}, T0)
    for seq in range(1, 11):
        await tmp_journal.append("r1", seq, f"r1-{seq}", "data", f"{seq}".encode())
    await tmp_journal.append("r2", 1, "r2-1", "start", b"other run")
    assert await tmp_journal.documents("r1") == [f"{s}".encode() for s in range(1, 11)]
    assert await tmp_journal.documents("r1", 4, 6) == [b"4", b"5", b"6"]
    assert await tmp_journal.documents("r1", 8) == [b"8", b"9", b"10"]
    assert await tmp_journal.documents("r1", 2, limit=2) == [b"2", b"3"]
    assert await tmp_journal.documents("r1", 11) == []
    assert await tmp_journal.documents("r2") == [b"other run"]


async def test_update_run_and_queries(tmp_journal: Journal) -> None:
    for i, state in enumerate(["running", "completed", "interrupted"]):
        await tmp_journal.create_run(f"r{i}", "p", {"i": i}, T0 + timedelta(minutes=i))
        await tmp_journal.update_run(
            f"r{i}", state=state, state_payload=state.encode(),
            outbox=[OutboxMessage(f"t/{i}", b"s", retain=True)],
        )  # fmt: skip
    with pytest.raises(JournalError, match="does not exist"):
        await tmp_journal.update_run("zz", state="running", state_payload=b"", outbox=[msg(9)])
    assert [r.run for r in await tmp_journal.list_runs()] == ["r2", "r1", "r0"]
    assert [r.run for r in await tmp_journal.list_runs(limit=2)] == ["r2", "r1"]
    active = await tmp_journal.runs_in_states({"running", "interrupted"})
    assert [(r.run, r.state, r.state_payload) for r in active] == [
        ("r0", "running", b"running"),
        ("r2", "interrupted", b"interrupted"),
    ]
    assert await tmp_journal.runs_in_states([]) == []
    assert [r.topic for r in await tmp_journal.outbox_after(0, 10)] == ["t/0", "t/1", "t/2"]


async def test_outbox_order_delete_and_ids_never_reused(tmp_journal: Journal) -> None:
    await tmp_journal.enqueue([msg(i) for i in range(10)])
    rows = await tmp_journal.outbox_after(0, 100)
    ids = [r.id for r in rows]
    assert ids == sorted(ids) and [r.payload for r in rows] == [
        f"doc {i}".encode() for i in range(10)
    ]
    assert [r.id for r in await tmp_journal.outbox_after(ids[3], 2)] == ids[4:6]
    await tmp_journal.outbox_delete([ids[0], ids[5], ids[9], 999_999])
    left = await tmp_journal.outbox_after(0, 100)
    assert [r.id for r in left] == [i for i in ids if i not in {ids[0], ids[5], ids[9]}]
    await tmp_journal.enqueue([msg(10)])
    newest = (await tmp_journal.outbox_after(ids[8], 10))[0]
    assert newest.id > ids[9], "a deleted id must never come back (the drainer's cursor)"
    await tmp_journal.outbox_delete([])
    assert await tmp_journal.outbox_size() == 8


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = await Journal.open(path)
    await journal.create_run("r1", "p", {"a": [1, 2]}, T0)
    await journal.append("r1", 1, "d1", "start", b"1", outbox=[msg(1)], state="running",
                         state_payload=b"st")  # fmt: skip
    await journal.close()
    journal = await Journal.open(path)
    try:
        run = await journal.get_run("r1")
        assert run is not None and (run.last_seq, run.state, run.params) == (
            1,
            "running",
            {"a": [1, 2]},
        )
        await journal.append("r1", 2, "d2", "data", b"2")
        assert await journal.documents("r1") == [b"1", b"2"]
        assert [r.payload for r in await journal.outbox_after(0, 10)] == [b"doc 1"]
    finally:
        await journal.close()


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from acquisition.journal import Journal, OutboxMessage

    async def main() -> None:
        journal = await Journal.open(Path(sys.argv[1]), synchronous="normal")
        await journal.create_run("r1", "p", {}, datetime.now(UTC))
        seq = 0
        while True:
            seq += 1
            await journal.append(
                "r1", seq, f"doc-{seq}", "data", b"x" * 200 + str(seq).encode(),
                outbox=[OutboxMessage("t/events", str(seq).encode())],
            )
            print(seq, flush=True)  # acknowledged: committed before this line

    asyncio.run(main())
    """
)


async def test_sigkill_mid_append_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    acknowledged = 0
    try:
        async with asyncio.timeout(60):
            while acknowledged < 300:
                line = await proc.stdout.readline()
                if not line:
                    err = await proc.stderr.read() if proc.stderr else b""
                    pytest.fail(f"writer died: {err.decode(errors='replace')}")
                acknowledged = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    journal = await Journal.open(path)
    try:
        run = await journal.get_run("r1")
        assert run is not None
        assert run.last_seq >= acknowledged
        docs = await journal.documents("r1")
        assert len(docs) == run.last_seq, "a gap-free prefix 1..last_seq"
        assert docs == [b"x" * 200 + str(s).encode() for s in range(1, run.last_seq + 1)]
        outbox = await journal.outbox_after(0, 100_000)
        assert [r.payload for r in outbox] == [str(s).encode() for s in range(1, run.last_seq + 1)]
        await journal.append("r1", run.last_seq + 1, "after-crash", "stop", b"ok")
    finally:
        await journal.close()


async def test_outbox_reads_agree_across_the_memory_mirror_and_sqlite(tmp_path: Path) -> None:
    """Rows from before open come from SQLite, newer ones from the mirror: one id order."""
    path = tmp_path / "j.sqlite3"
    journal = await Journal.open(path)
    await journal.enqueue([msg(i) for i in range(3)])
    await journal.close()
    journal = await Journal.open(path)
    try:
        await journal.enqueue([msg(i) for i in range(3, 6)])
        rows = await journal.outbox_after(0, 100)
        assert [r.payload for r in rows] == [f"doc {i}".encode() for i in range(6)]
        assert await journal.outbox_after(rows[1].id, 2) == rows[2:4]
        assert await journal.outbox_after(rows[3].id, 100) == rows[4:]
        await journal.outbox_delete([rows[4].id])
        assert await journal.outbox_after(rows[3].id, 100) == [rows[5]]
    finally:
        await journal.close()


def test_outbox_tail_sheds_to_sqlite_when_it_grows_past_its_limit() -> None:
    tail = OutboxTail(floor=10, limit=3)
    rows = [OutboxRow(i, "t", b"", 1, False) for i in range(11, 16)]
    tail.add(rows[:3])
    assert tail.after(10, 10) == rows[:3]
    assert tail.after(9, 10) is None, "rows at or below the floor are read from SQLite"
    tail.remove([12])
    assert tail.after(10, 10) == [rows[0], rows[2]]
    tail.add(rows[3:])  # 4 rows > limit: the mirror is dropped, its floor moves up
    assert tail.after(14, 10) is None
    assert tail.after(15, 10) == []


def test_outbox_tail_removes_the_oldest_rows_and_scattered_ones() -> None:
    tail = OutboxTail(floor=0)
    rows = [OutboxRow(i, "t", b"xx", 1, False) for i in range(1, 11)]
    tail.add(rows)
    tail.remove([2, 1, 3, 99])  # the oldest (any order), and an id it does not hold
    assert tail.after(0, 100) == rows[3:]
    tail.remove([5, 9, 4])  # not a prefix
    assert tail.after(0, 100) == [rows[5], rows[6], rows[7], rows[9]]
    assert tail.held_bytes == 2 * 4
    tail.remove([6, 7, 8, 10])
    assert tail.after(0, 100) == [] and tail.held_bytes == 0


def test_outbox_tail_sheds_to_sqlite_when_its_payloads_outgrow_its_bytes() -> None:
    """Few rows but large ones (sweep summaries, a broker away for hours): memory stays
    bounded by bytes too; what was shed is read from SQLite."""
    tail = OutboxTail(floor=0, limit=1000, max_bytes=1000)
    rows = [OutboxRow(i, "t", b"x" * 400, 1, False) for i in range(1, 5)]
    tail.add(rows[:2])
    assert tail.held_bytes == 800 and tail.after(0, 10) == rows[:2]
    tail.remove([1])
    assert tail.held_bytes == 400
    tail.add(rows[2:])  # 1200 bytes > 1000: dropped, floor moves to the newest id
    assert tail.held_bytes == 0
    assert tail.after(3, 10) is None and tail.after(4, 10) == []


async def test_documents_of_some_kinds_only(tmp_journal: Journal) -> None:
    await tmp_journal.create_run("rk", "p", {}, T0)
    for seq, kind in enumerate(["start", "data", "step", "data", "data", "stop"], start=1):
        await tmp_journal.append("rk", seq, f"k{seq}", kind, kind.encode())
    assert await tmp_journal.documents("rk", kinds=("start", "step")) == [b"start", b"step"]
    assert await tmp_journal.documents("rk", kinds=()) == []
    assert len(await tmp_journal.documents("rk")) == 6

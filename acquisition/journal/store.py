"""The run journal: SQLite in WAL mode, the source of truth for every run document.

Nothing is published that was not first written here, and the outbox row of a message is
deleted only after the broker acknowledged it. One :meth:`Journal.append` is one
transaction: the document, the run's ``last_seq`` (and state) and the outbox rows commit
together or not at all, so a daemon killed at any moment leaves a gap-free prefix of
documents whose outbox rows are all still there (``synchronous=normal`` survives a process
crash, ``full`` also a power cut).

All SQLite work runs on one dedicated thread that owns the connection
(:class:`~acquisition.journal.worker.JournalWorker`), in submission order; operations that
queue up behind each other commit together (group commit), each in its own savepoint, so
one that fails is rolled back alone. The event loop only awaits. ``sqlite3`` errors are
translated into :class:`~acquisition.errors.JournalError`. A caller cancelled while awaiting
a write does not undo it: the worker runs every job it was given.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from acquisition.errors import JournalError
from acquisition.journal.outbox import OutboxMessage, OutboxRow, OutboxTail
from acquisition.journal.worker import JournalWorker
from acquisition.journal.writes import Append, insert_outbox, now, transaction

__all__ = ["SCHEMA_VERSION", "Journal", "OutboxMessage", "OutboxRow", "RunRecord"]

SCHEMA_VERSION = 1
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run           TEXT PRIMARY KEY,
    protocol      TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    params        TEXT NOT NULL,
    state_payload BLOB
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);
CREATE TABLE IF NOT EXISTS documents (
    run     TEXT NOT NULL REFERENCES runs (run),
    seq     INTEGER NOT NULL,
    doc_id  TEXT NOT NULL UNIQUE,
    kind    TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    run     TEXT PRIMARY KEY REFERENCES runs (run),
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL
);
"""
_RUN_COLUMNS = "run, protocol, state, created_at, updated_at, last_seq, params, state_payload"


@dataclass(frozen=True)
class RunRecord:
    run: str
    protocol: str
    state: str
    created_at: datetime
    updated_at: datetime
    last_seq: int
    params: dict[str, Any]
    state_payload: bytes | None


def _record(row: tuple[Any, ...]) -> RunRecord:
    run, protocol, state, created, updated, last_seq, params, state_payload = row
    return RunRecord(
        run=run,
        protocol=protocol,
        state=state,
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        last_seq=int(last_seq),
        params=json.loads(params),
        state_payload=None if state_payload is None else bytes(state_payload),
    )


class Journal:
    """The SQLite journal. Open with ``await Journal.open(path)``; close with ``close()``."""

    def __init__(self, path: Path, worker: JournalWorker, floor: int) -> None:
        self.path = path
        self._worker = worker
        self._closed = False
        self._tail = OutboxTail(floor)

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "normal") -> Journal:
        """Open (creating parent directories and the schema) the journal at ``path``."""
        if synchronous not in ("normal", "full"):
            raise JournalError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        worker = JournalWorker(lambda: _connect(Path(path), synchronous), name="journal")
        try:
            await worker.start()
            floor = await worker.submit(
                lambda c: int(c.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0])
            )
        except BaseException as exc:
            await worker.stop()
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"{path}: {exc}") from exc
            raise
        return cls(Path(path), worker, floor)

    @property
    def worker(self) -> JournalWorker:
        return self._worker

    def _committed(self, rows: list[OutboxRow]) -> None:
        """On the journal thread, inside a job: mirror ``rows`` once they are committed."""
        if rows:
            self._worker.after_commit(partial(self._tail.add, rows))

    async def close(self) -> None:
        """Finish the work queued so far, close the connection, stop the thread. Idempotent."""
        self._closed = True
        await self._worker.stop()

    def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        """Queue ``fn`` on the journal thread now (call order is disk order)."""
        if self._closed:
            raise JournalError(f"{self.path}: the journal is closed")
        return self._worker.submit(fn)

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return await self._submit(fn)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: {exc}") from exc

    # -- runs and documents ----------------------------------------------------------

    async def create_run(
        self,
        run: str,
        protocol: str,
        params: dict[str, Any],
        created_at: datetime,
        *,
        state: str = "queued",
    ) -> None:
        """Insert a new run; JournalError if a run with that id exists."""
        params_json = json.dumps(params, sort_keys=True, default=str)
        ts = created_at.isoformat()

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if conn.execute("SELECT 1 FROM runs WHERE run = ?", (run,)).fetchone():
                    raise JournalError(f"run {run!r} already exists")
                conn.execute(
                    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, ?, NULL)",  # noqa: S608
                    (run, protocol, state, ts, ts, params_json),
                )

        await self._call(work)

    def submit_append(
        self,
        run: str,
        seq: int,
        doc_id: str,
        kind: str,
        payload: bytes,
        *,
        outbox: Sequence[OutboxMessage] = (),
        state: str | None = None,
        state_payload: bytes | Callable[[], bytes] | None = None,
    ) -> asyncio.Future[None]:
        """Queue the append of document ``seq`` now; the future completes once committed.

        Queued synchronously: whatever the caller submits next is written after it. A
        ``state_payload`` given as a function is called on the journal thread, and only if
        it is the state that ends up stored (appends that commit together store the newest);
        what it raises fails this append."""
        job = Append(
            self._committed, run, seq, doc_id, kind, payload, tuple(outbox), state, state_payload
        )
        return self._submit(job)

    async def append(
        self,
        run: str,
        seq: int,
        doc_id: str,
        kind: str,
        payload: bytes,
        *,
        outbox: Sequence[OutboxMessage] = (),
        state: str | None = None,
        state_payload: bytes | None = None,
    ) -> None:
        """Append document ``seq`` (= last_seq + 1) and its outbox rows in one transaction."""
        try:
            await self.submit_append(
                run, seq, doc_id, kind, payload,
                outbox=outbox, state=state, state_payload=state_payload,
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: {exc}") from exc

    async def update_run(
        self,
        run: str,
        *,
        state: str,
        state_payload: bytes,
        outbox: Sequence[OutboxMessage] = (),
    ) -> None:
        """Set a run's state (and its retained payload) and enqueue ``outbox`` atomically."""
        messages = tuple(outbox)

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                cur = conn.execute(
                    "UPDATE runs SET state = ?, state_payload = ?, updated_at = ? WHERE run = ?",
                    (state, state_payload, now(), run),
                )
                if cur.rowcount != 1:
                    raise JournalError(f"run {run!r} does not exist")
                rows = insert_outbox(conn, messages)
            self._worker.after_commit(partial(self._tail.add, rows))

        await self._call(work)

    async def documents(
        self, run: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None,
        *, kinds: Collection[str] | None = None,
    ) -> list[bytes]:  # fmt: skip
        """Document payloads of ``run`` with ``from_seq <= seq <= to_seq``, in seq order;
        ``kinds``: only documents of those kinds (read by SQLite, not decoded to be dropped)."""
        wanted = sorted(set(kinds)) if kinds is not None else []
        only = f" AND kind IN ({', '.join('?' * len(wanted))})" if kinds is not None else ""

        def work(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "SELECT payload FROM documents WHERE run = ? AND seq >= ? AND seq <= ?"  # noqa: S608
                f"{only} ORDER BY seq LIMIT ?",
                (run, from_seq, to_seq if to_seq is not None else 2**62, *wanted, limit or -1),
            ).fetchall()
            return [bytes(r[0]) for r in rows]

        return await self._call(work)

    async def get_run(self, run: str) -> RunRecord | None:
        def work(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run = ?",  # noqa: S608
                (run,),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._call(work)

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first."""

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs"  # noqa: S608
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_record(r) for r in rows]

        return await self._call(work)

    async def runs_in_states(self, states: Collection[str]) -> list[RunRecord]:
        """Runs whose state is one of ``states``, oldest first."""
        wanted = sorted(set(states))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({marks})"  # noqa: S608
                " ORDER BY created_at, rowid",
                wanted,
            ).fetchall()
            return [_record(r) for r in rows]

        return await self._call(work)

    async def runs_active_since(self, since: datetime) -> list[RunRecord]:
        """Runs that wrote anything at or after ``since`` (an aware time), oldest first."""

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE updated_at >= ?"  # noqa: S608
                " ORDER BY created_at, rowid",
                (since.astimezone(UTC).isoformat(),),
            ).fetchall()
            return [_record(r) for r in rows]

        return await self._call(work)

    # -- outbox ------------------------------------------------------------------------

    async def enqueue(self, messages: Sequence[OutboxMessage]) -> None:
        """Add messages to the outbox (one transaction), in order."""
        batch = tuple(messages)

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                rows = insert_outbox(conn, batch)
            self._worker.after_commit(partial(self._tail.add, rows))

        await self._call(work)

    async def outbox_after(self, after_id: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` outbox rows with ``id > after_id``, in id order."""
        if self._closed:
            raise JournalError(f"{self.path}: the journal is closed")
        cached = self._tail.after(after_id, limit)
        if cached is not None:
            return cached

        def work(conn: sqlite3.Connection) -> list[OutboxRow]:
            rows = conn.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
            return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

        return await self._call(work)

    async def outbox_delete(self, ids: Sequence[int]) -> None:
        """Delete acknowledged outbox rows (unknown ids are ignored)."""
        batch = [(i,) for i in ids]
        if not batch:
            return

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany("DELETE FROM outbox WHERE id = ?", batch)
            self._worker.after_commit(partial(self._tail.remove, list(ids)))

        await self._call(work)

    # -- analysis results ----------------------------------------------------------------

    async def put_result(
        self, run: str, payload: bytes, *, outbox: Sequence[OutboxMessage] = ()
    ) -> None:
        """Store (replace) a run's analysis result and queue its messages, atomically."""
        messages = tuple(outbox)

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO results (run, payload) VALUES (?, ?)"
                    " ON CONFLICT (run) DO UPDATE SET payload = excluded.payload",
                    (run, payload),
                )
                rows = insert_outbox(conn, messages)
            self._worker.after_commit(partial(self._tail.add, rows))

        await self._call(work)

    async def get_result(self, run: str) -> bytes | None:
        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT payload FROM results WHERE run = ?", (run,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._call(work)

    async def outbox_size(self) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

        return await self._call(work)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open the connection (on the worker thread) and create the schema."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"{path}: cannot create the directory: {exc.strerror}") from exc
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open: {exc}") from exc
    try:
        _initialise(conn, path, synchronous)
    except sqlite3.Error as exc:
        conn.close()
        raise JournalError(f"{path}: cannot initialise: {exc}") from exc
    except JournalError:
        conn.close()
        raise
    return conn


def _initialise(conn: sqlite3.Connection, path: Path, synchronous: str) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(f"{path}: WAL mode unavailable (got {mode})")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys=ON")
    with transaction(conn):
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise JournalError(
                f"{path}: schema version {row[0]}, this daemon reads {SCHEMA_VERSION}"
            )

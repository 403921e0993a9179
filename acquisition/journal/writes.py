"""The journal's writes as they run on its thread: transactions (a savepoint inside the
worker's batch), outbox inserts, and the document append, alone or grouped with the appends
queued behind it (see :class:`~acquisition.journal.worker.JournalWorker`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from acquisition.errors import JournalError
from acquisition.journal.outbox import OutboxMessage, OutboxRow

__all__ = ["Append", "insert_outbox", "now", "transaction"]


def now() -> str:
    return datetime.now(UTC).isoformat()


def insert_outbox(conn: sqlite3.Connection, outbox: Sequence[OutboxMessage]) -> list[OutboxRow]:
    rows = []
    for m in outbox:
        cur = conn.execute(
            "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
            (m.topic, m.payload, m.qos, int(m.retain)),
        )
        if cur.lastrowid is None:
            raise JournalError("SQLite returned no id for a new outbox row")
        rows.append(OutboxRow(cur.lastrowid, m.topic, m.payload, m.qos, m.retain))
    return rows


_NEXT_OUTBOX_ID = (
    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),"
    " COALESCE((SELECT MAX(id) FROM outbox), 0)) + 1"
)


@dataclass(slots=True)  # not frozen: its __init__ is per document, and cheaper so
class Append:
    """One document append, a job of the journal thread: alone (``__call__``) or with the
    appends queued right behind it (``group``: what they would do one by one, in a few
    statements)."""

    committed: Callable[[list[OutboxRow]], None]  # the journal's: mirror rows once committed
    run: str
    seq: int
    doc_id: str
    kind: str
    payload: bytes
    outbox: tuple[OutboxMessage, ...]
    state: str | None
    state_payload: bytes | Callable[[], bytes] | None  # a function: encoded if stored

    def __call__(self, conn: sqlite3.Connection) -> None:
        run, seq = self.run, self.seq
        with transaction(conn):
            row = conn.execute("SELECT last_seq FROM runs WHERE run = ?", (run,)).fetchone()
            if row is None:
                raise JournalError(f"run {run!r} does not exist")
            if seq != row[0] + 1:
                raise JournalError(f"run {run!r}: seq {seq} does not follow last_seq {row[0]}")
            try:
                conn.execute(
                    "INSERT INTO documents (run, seq, doc_id, kind, payload)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (run, seq, self.doc_id, self.kind, self.payload),
                )
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"run {run!r}: duplicate document id {self.doc_id!r}") from exc
            conn.execute(
                "UPDATE runs SET last_seq = ?, updated_at = ?,"
                " state = COALESCE(?, state), state_payload = COALESCE(?, state_payload)"
                " WHERE run = ?",
                (seq, now(), self.state, _encoded(self.state_payload), run),
            )
            rows = insert_outbox(conn, self.outbox)
        self.committed(rows)

    @staticmethod
    def group(conn: sqlite3.Connection, jobs: Sequence[Append]) -> list[None] | None:
        """Consecutive appends of one run, seqs in a row: the run updated once, documents and
        outbox rows inserted with ``executemany`` (outbox ids as AUTOINCREMENT would give
        them). None (run them one by one) for anything else; raises if one would fail (the
        worker then runs them one by one, and the failing one fails alone, as ever)."""
        first = jobs[0]
        run = first.run
        for k, job in enumerate(jobs):
            if job.run != run or job.seq != first.seq + k:
                return None
        state = next((j.state for j in reversed(jobs) if j.state is not None), None)
        state_payload = _encoded(
            next((j.state_payload for j in reversed(jobs) if j.state_payload is not None), None)
        )
        cur = conn.execute(
            "UPDATE runs SET last_seq = ?, updated_at = ?,"
            " state = COALESCE(?, state), state_payload = COALESCE(?, state_payload)"
            " WHERE run = ? AND last_seq = ?",
            (jobs[-1].seq, now(), state, state_payload, run, first.seq - 1),
        )
        if cur.rowcount != 1:
            raise JournalError(f"run {run!r}: missing, or seq {first.seq} does not follow")
        conn.executemany(
            "INSERT INTO documents (run, seq, doc_id, kind, payload) VALUES (?, ?, ?, ?, ?)",
            [(run, j.seq, j.doc_id, j.kind, j.payload) for j in jobs],
        )
        next_id = int(conn.execute(_NEXT_OUTBOX_ID).fetchone()[0])
        rows = [
            OutboxRow(next_id + k, m.topic, m.payload, m.qos, m.retain)
            for k, m in enumerate(m for j in jobs for m in j.outbox)
        ]
        if rows:
            conn.executemany(
                "INSERT INTO outbox (id, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                [(r.id, r.topic, r.payload, r.qos, int(r.retain)) for r in rows],
            )
        first.committed(rows)
        return [None] * len(jobs)


def _encoded(payload: bytes | Callable[[], bytes] | None) -> bytes | None:
    return payload() if callable(payload) else payload


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """All or nothing: a savepoint inside the worker's batch, else its own transaction."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT tx")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # SQLite may have aborted the whole transaction
                conn.execute("ROLLBACK TO tx")
                conn.execute("RELEASE tx")
            raise
        conn.execute("RELEASE tx")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

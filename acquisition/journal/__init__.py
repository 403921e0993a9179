"""The run journal: the local SQLite store that is the source of truth for every run
document (:mod:`.store`), its one writer thread with group commit (:mod:`.worker`), and the
outbox that publishes what is committed, in order, deleting each row only after its PUBACK
(:mod:`.outbox`); a run's documents read back typed (:mod:`.reading`).
docs/decisions/0001-journal-first-outbox.md says why."""

from acquisition.journal.reading import run_documents
from acquisition.journal.store import SCHEMA_VERSION, Journal, OutboxMessage, OutboxRow, RunRecord

__all__ = ["SCHEMA_VERSION", "Journal", "OutboxMessage", "OutboxRow", "RunRecord",
           "run_documents"]  # fmt: skip

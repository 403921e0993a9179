"""A run's documents read back as their typed models (:func:`acquisition.payloads.
read_document`), decoded on a worker thread: a long run's thousands of readings never
stall the event loop, and a document this version cannot read comes back as an
:class:`~acquisition.payloads.UnreadableDocument`, never as an exception."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from acquisition.payloads import ReadDocument, read_document

if TYPE_CHECKING:
    from acquisition.journal.store import Journal

__all__ = ["run_documents"]


def _read_all(payloads: Sequence[bytes]) -> list[ReadDocument]:
    return [read_document(p) for p in payloads]


async def run_documents(
    journal: Journal, run: str, *, kinds: Collection[str] | None = None
) -> list[ReadDocument]:
    """``run``'s documents in seq order (only those of ``kinds``, if given), typed."""
    payloads = await journal.documents(run, kinds=kinds)
    return await asyncio.to_thread(_read_all, payloads)

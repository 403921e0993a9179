"""RunRecorder on a real journal: seq never has a hole, even when a run is cancelled."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from acquisition.config import LabConfig
from acquisition.journal import Journal
from acquisition.payloads import Progress, WellReading
from acquisition.run_recorder import RunRecorder


def reading(i: int) -> WellReading:
    return WellReading(
        index=i, well=f"A{i + 1}", detector=1, counts=100, count_time_s=1.0, cpm=100.0,
        ccpm=100.0, counted_at=datetime.now(UTC),
    )  # fmt: skip


async def test_a_cancel_while_a_document_is_queued_still_writes_it(tmp_journal: Journal) -> None:
    config = LabConfig(node="rec")
    rec = await RunRecorder.create(config, tmp_journal, lambda: None, "count-plate", {})
    await rec.start(protocol={}, plate={}, instruments={}, simulated=True)
    # Cancel the write while it waits in the queue of the journal's one worker.
    task = asyncio.create_task(rec.data(reading(0), Progress(done=1, total=2)))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rec.flush()
    # Whatever the cancel hit, the recorder's seq and the journal's agree ...
    record = await tmp_journal.get_run(rec.run)
    assert record is not None and record.last_seq == rec.last_seq == 2
    # ... so the stop document that follows a cancellation can be written.
    await rec.stop("abort", "aborted", "aborted")
    docs = [json.loads(p) for p in await tmp_journal.documents(rec.run)]
    assert [d["seq"] for d in docs] == [1, 2, 3]
    assert [d["kind"] for d in docs] == ["start", "data", "stop"]
    assert rec.stopped


async def test_retained_state_names_the_seq_of_its_document(tmp_journal: Journal) -> None:
    config = LabConfig(node="rec")
    rec = await RunRecorder.create(config, tmp_journal, lambda: None, "count-plate", {})
    await rec.start(protocol={}, plate={}, instruments={}, simulated=True)
    record = await tmp_journal.get_run(rec.run)
    assert record is not None and record.state_payload is not None
    assert json.loads(record.state_payload)["last_seq"] == 1

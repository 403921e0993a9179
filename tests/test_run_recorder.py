"""RunRecorder on a real journal: seq never has a hole, even when a run is cancelled."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from acquisition.config import LabConfig
from acquisition.errors import JournalError
from acquisition.journal import Journal, run_documents
from acquisition.payloads import (
    DATA_STREAMS,
    DataDocument,
    DataStream,
    Progress,
    StartDocument,
    StopDocument,
    UnreadableDocument,
    WellReading,
    read_document,
    register_stream,
)
from acquisition.run_recorder import RunRecorder


def reading(i: int) -> WellReading:
    return WellReading(
        index=i, well=f"A{i + 1}", detector=1, counts=100, count_time_s=1.0, cpm=100.0,
        ccpm=100.0, counted_at=datetime.now(UTC),
    )  # fmt: skip


def _fail_once_at_seq(journal: Journal, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """The journal's first write of seq ``at`` fails on its thread (a disk I/O error)."""
    real = journal.submit_append
    failed: list[int] = []

    def failing(run: str, seq: int, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        if seq == at and not failed:
            failed.append(seq)

            def fail(conn: sqlite3.Connection) -> None:
                raise sqlite3.OperationalError("disk I/O error")

            return journal.worker.submit(fail)
        return real(run, seq, *args, **kwargs)

    monkeypatch.setattr(journal, "submit_append", failing)


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


async def test_after_a_failed_write_the_run_can_still_record_its_stop(
    tmp_journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = LabConfig(node="rec")
    rec = await RunRecorder.create(config, tmp_journal, lambda: None, "count-plate", {})
    await rec.start(protocol={}, plate={}, instruments={}, simulated=True)
    _fail_once_at_seq(tmp_journal, monkeypatch, 3)  # the first write of seq 3 fails, once
    await rec.data(reading(0), Progress(done=1, total=3))  # seq 2
    await rec.data(reading(1), Progress(done=2, total=3))  # seq 3: fails on the thread
    with pytest.raises(JournalError, match="disk I/O error"):
        await rec.flush()  # the failure is reported once ...
    await rec.stop("fail", "journal write failed", "failed")  # ... and the run can still end
    docs = [json.loads(p) for p in await tmp_journal.documents(rec.run)]
    assert [(d["seq"], d["kind"]) for d in docs] == [(1, "start"), (2, "data"), (3, "stop")]
    assert rec.stopped


async def test_no_retained_state_is_queued_before_the_document_it_names(
    tmp_journal: Journal,
) -> None:
    config = LabConfig(node="rec")
    rec = await RunRecorder.create(config, tmp_journal, lambda: None, "count-plate", {})
    await rec.start(protocol={}, plate={}, instruments={}, simulated=True)
    for i in range(5):
        await rec.data(reading(i), Progress(done=i + 1, total=5))
        await rec.republish_state()  # what a reconnect does, mid-count
    await rec.stop("success", "done", "completed")
    newest_event = 0
    for row in await tmp_journal.outbox_after(0, 1000):
        body = json.loads(row.payload)
        if row.retain:
            assert body["last_seq"] <= newest_event, "a state names a document not yet queued"
        else:
            newest_event = body["seq"]


async def test_a_file_the_run_wrote_is_recorded_by_reference_with_its_digest(
    tmp_journal: Journal, tmp_path: Path
) -> None:
    """Bulk data lives in files: the journal gets the file's path inside the data
    directory, its size and sha256, never its bytes; a file outside it is refused."""
    config = LabConfig(node="rec", journal={"path": tmp_path / "j.sqlite3"})
    data_dir = config.journal.data_directory
    assert data_dir == tmp_path / "data"
    (data_dir / "runs").mkdir(parents=True)
    body = b"\x89HDF\r\n" + bytes(range(256)) * 64
    (data_dir / "runs" / "sweeps.nwb").write_bytes(body)
    rec = await RunRecorder.create(config, tmp_journal, lambda: None, "patch", {})
    await rec.start(protocol={}, plate={}, instruments={}, simulated=True)
    doc = await rec.artifact(data_dir / "runs" / "sweeps.nwb", media_type="application/x-nwb",
                             holds="12 sweeps, 2 channels", step_index=3)  # fmt: skip
    assert (doc.path, doc.size_bytes) == ("runs/sweeps.nwb", len(body))
    assert doc.sha256 == hashlib.sha256(body).hexdigest()
    stored = [json.loads(p) for p in await tmp_journal.documents(rec.run)][-1]
    assert stored["kind"] == "artifact" and stored["path"] == "runs/sweeps.nwb"
    assert len(json.dumps(stored)) < 1000  # a reference, not the data
    (tmp_path / "elsewhere.nwb").write_bytes(b"x")
    with pytest.raises(ValueError, match="not inside the data directory"):
        await rec.artifact(tmp_path / "elsewhere.nwb", media_type="application/x-nwb",
                           holds="x")  # fmt: skip


async def test_a_reading_must_be_of_its_registered_stream(tmp_journal: Journal) -> None:
    rec = await RunRecorder.create(LabConfig(node="rec"), tmp_journal, lambda: None, "p", {})
    await rec.start(protocol={}, plate={}, instruments={}, simulated=True)
    with pytest.raises(ValueError, match="not a reading of stream 'temperature'"):
        await rec.data(reading(0), None, stream="temperature")
    with pytest.raises(ValueError, match="stream 'sweep'"):
        await rec.data(reading(0), None, stream="sweep")


@pytest.mark.parametrize("readings", [2, 1], ids=["a reading before it", "the stop itself"])
async def test_a_stop_whose_write_or_an_earlier_one_fails_leaves_the_run_stoppable(
    tmp_journal: Journal, monkeypatch: pytest.MonkeyPatch, readings: int
) -> None:
    """The stop that meets a failed write raises it without taking the state on; the
    run's end (``failed``) is then recorded, with the documents on disk counted."""
    rec = await RunRecorder.create(LabConfig(node="rec"), tmp_journal, lambda: None, "p", {})
    await rec.start(protocol={}, plate={}, instruments={}, simulated=True)
    _fail_once_at_seq(tmp_journal, monkeypatch, 3)  # the second reading, or the stop
    for i in range(readings):  # seq 2, 3
        await rec.data(reading(i), Progress(done=i + 1, total=2))
    with pytest.raises(JournalError, match="disk I/O error"):
        await rec.stop("success", "counted", "completed")
    assert rec.state == "running" and not rec.stopped
    await rec.stop("fail", "journal write failed", "failed")
    docs = [json.loads(p) for p in await tmp_journal.documents(rec.run)]
    assert [d["kind"] for d in docs] == ["start", "data", "stop"]
    assert docs[-1]["exit_status"] == "fail" and docs[-1]["counts"] == {"data": 1}
    record = await tmp_journal.get_run(rec.run)
    assert record is not None and record.state == "failed"


class SweepSummary(BaseModel):
    """A plug-in's reading (the patch-clamp rig's sweeps, next): not a shipped model."""

    sweep: int
    peak_pa: float


async def test_a_plug_in_streams_readings_are_recorded_and_read_back_typed(
    tmp_journal: Journal,
) -> None:
    register_stream(DataStream("sweep-test", SweepSummary, "a sweep's summary"))
    try:
        rec = await RunRecorder.create(LabConfig(node="rec"), tmp_journal, lambda: None, "p", {})
        await rec.start(protocol={}, plate=None, instruments={}, simulated=True)
        await rec.data(SweepSummary(sweep=1, peak_pa=-812.5), None, stream="sweep-test")
        await rec.data(reading(0), Progress(done=1, total=1))
        with pytest.raises(ValueError, match="not a reading of stream 'well'"):
            await rec.data(SweepSummary(sweep=2, peak_pa=0.0), None)
        await rec.stop("success", "done", "completed")
        docs = await run_documents(tmp_journal, rec.run)
        start, sweep, well, stop = docs
        assert isinstance(start, StartDocument) and start.plate is None
        assert isinstance(sweep, DataDocument) and sweep.reading == SweepSummary(
            sweep=1, peak_pa=-812.5)
        assert isinstance(well, DataDocument) and isinstance(well.reading, WellReading)
        assert isinstance(stop, StopDocument) and stop.counts == {"data": 2}
    finally:
        DATA_STREAMS.pop("sweep-test", None)
    # Without the plug-in its readings still read back, as the JSON objects they are.
    (_, sweep, _, _) = await run_documents(tmp_journal, rec.run)
    assert isinstance(sweep, DataDocument) and sweep.reading == {"sweep": 1, "peak_pa": -812.5}


def test_a_document_this_version_cannot_read_is_kept_with_why() -> None:
    damaged = read_document(b'{"kind": "data", "seq": 7, "stream": "well", "reading": {}}')
    assert isinstance(damaged, UnreadableDocument)
    assert (damaged.kind, damaged.seq) == ("data", 7) and "reading" in damaged.error
    assert isinstance(read_document(b"\xff"), UnreadableDocument)
    assert read_document(b"[1]") == UnreadableDocument({}, "not a JSON object")


async def test_document_ids_are_unique_across_runs_and_sort_within_one(
    tmp_journal: Journal,
) -> None:
    """Ids: a random prefix per recorder, then a counter (not uuid4 per document)."""
    cfg = LabConfig(node="lab1")
    runs: list[list[str]] = []
    for _ in range(2):
        recorder = await RunRecorder.create(cfg, tmp_journal, lambda: None, "p", {})
        for i in range(200):
            await recorder.data(reading(i % 12), Progress(done=i + 1, total=200))
        await recorder.flush()
        runs.append([json.loads(d)["id"] for d in await tmp_journal.documents(recorder.run)])
    ids = runs[0] + runs[1]
    assert len(ids) == len(set(ids)) == 400
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert runs[0] == sorted(runs[0]) and runs[0][0][:20] != runs[1][0][:20]


async def test_the_stored_state_follows_every_document_of_a_fast_count(
    tmp_journal: Journal,
) -> None:
    """During a fast count the retained state goes out throttled, but the state stored with
    the run (what run.get answers) is that of the newest document on disk, encoded by the
    journal only for the newest of the appends that commit together."""
    recorder = await RunRecorder.create(LabConfig(node="lab1"), tmp_journal, lambda: None, "p", {})
    for i in range(300):
        await recorder.data(
            reading(i % 12), Progress(done=i + 1, total=300), latest={"well": f"A{i % 12 + 1}"}
        )
        if i in (0, 150):
            await recorder.flush()
            record = await tmp_journal.get_run(recorder.run)
            assert record is not None and record.state_payload is not None
            stored = json.loads(record.state_payload)
            assert (stored["last_seq"], stored["progress"]["done"]) == (record.last_seq, i + 1)
    await recorder.flush()
    record = await tmp_journal.get_run(recorder.run)
    assert record is not None and record.state_payload is not None
    stored = json.loads(record.state_payload)
    assert stored["last_seq"] == record.last_seq == 300
    assert stored["progress"]["done"] == 300 and stored["latest"] == {"well": "A12"}
    assert stored == {**json.loads(recorder.state_payload()), "updated_at": stored["updated_at"]}


async def test_a_sweeps_summary_is_a_shipped_stream_read_back_typed(tmp_journal: Journal) -> None:
    from acquisition.payloads import SweepReading

    rec = await RunRecorder.create(LabConfig(node="rec"), tmp_journal, lambda: None, "p", {})
    await rec.start(protocol={}, plate=None, instruments={}, simulated=True)
    summary = SweepReading(sweep=1, step_index=2, started_at=datetime.now(UTC),
                           sample_rate_hz=20_000.0, samples=4000, stimulus="ramp -90 -> 20 mV",
                           solution="aCSF", holding_a=-40e-12, ra_ohm=10e6, rm_ohm=500e6,
                           cm_f=33e-12, trace=[-40e-12, -41e-12])  # fmt: skip
    await rec.data(summary, Progress(done=1, total=10, unit="sweeps"), stream="sweep")
    await rec.flush()
    (_, doc) = await run_documents(tmp_journal, rec.run)
    assert isinstance(doc, DataDocument) and doc.reading == summary
    with pytest.raises(ValueError, match="trace"):
        SweepReading.model_validate({**summary.model_dump(), "trace": [0.0] * 1001})

"""Crash recovery of protocol runs, with real processes: ``assay-sim bench``, ``assayd`` and a
real Mosquitto. The daemon is killed (SIGKILL) or stopped (SIGTERM) mid-step, started again on
the same config and journal, and the run is resumed (or aborted) over MQTT as the terminal
would. Each test runs on scaled time (``time_scale`` simulated seconds per real second) and
waits for points in the run by polling the daemon, never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from acquisition.errors import CommandError
from devtools.mosquitto import MosquittoBroker
from tests.crash_lab import (
    COUNT_ONLY,
    _counting,
    _kinds,
    _phases,
    _resume_and_complete,
    _wells,
    lab_stack,
)

pytestmark = pytest.mark.slow

# --------------------------------------------------------------- 1. SIGKILL mid-count


async def test_sigkill_mid_count_then_resume_counts_each_well_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=100.0) as lab:
        run = await lab.start(COUNT_ONLY)
        await lab.wait(run, _counting(24), "24 wells counted")
        await lab.restart(signal.SIGKILL)

        state = await lab.get(run)
        assert state["state"] == "interrupted", state
        assert f"assay run resume {run}" in state["message"]
        docs = lab.documents(run)
        assert not _kinds(docs, "stop")
        (interruption,) = _kinds(docs, "interruption")
        assert interruption["reason"] == "daemon restarted"
        detail = interruption["detail"]
        counted = _wells(docs)
        assert detail["wells_done"] == len(counted) and 24 <= len(counted) < 96, detail
        assert detail["step"] == "count" and detail["step_index"] == 1
        assert detail["last_completed_step"] is None

        docs = await _resume_and_complete(lab, run)
        assert _wells(docs)[: len(counted)] == counted  # the wells before are kept, not redone
        assert Counter(_phases(docs)) == {
            ("count", "started"): 1, ("count", "resumed"): 1, ("count", "finished"): 1,
        }  # fmt: skip


# ---------------------------------------------------------------- 3. SIGTERM mid-count


async def test_sigterm_mid_count_interrupts_then_resume_completes(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=100.0) as lab:
        run = await lab.start(COUNT_ONLY)
        await lab.wait(run, _counting(24), "24 wells counted")
        code = await lab.restart(signal.SIGTERM)
        assert code == 0, lab.daemon.tail()

        state = await lab.get(run)
        assert state["state"] == "interrupted", state
        assert f"assay run resume {run}" in state["message"]
        docs = lab.documents(run)
        assert not _kinds(docs, "stop")
        (interruption,) = _kinds(docs, "interruption")  # none more after the restart
        assert interruption["reason"] == "daemon shutting down"
        assert interruption["detail"]["step_index"] == 1
        assert interruption["detail"]["previous"] == "running"
        counted = _wells(docs)
        assert 24 <= len(counted) < 96

        docs = await _resume_and_complete(lab, run)
        assert _wells(docs)[: len(counted)] == counted


# ------------------------------------------------------------- 4. abort an interrupted run


async def test_abort_of_an_interrupted_run_writes_one_stop_document(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with lab_stack(tmp_path, broker, time_scale=100.0) as lab:
        run = await lab.start(COUNT_ONLY)
        await lab.wait(run, _counting(12), "12 wells counted")
        await lab.restart(signal.SIGKILL)
        assert (await lab.get(run))["state"] == "interrupted"
        counted = _wells(lab.documents(run))

        reply = await lab.client.request("run.abort", {"run": run})
        assert reply["run"] == run and reply["state"] == "aborted", reply
        assert (await lab.get(run))["state"] == "aborted"
        again = await lab.client.request("run.abort", {"run": run})  # harmless
        assert again["state"] == "aborted"
        with pytest.raises(CommandError, match="is aborted") as refused:
            await lab.client.request("run.resume", {"run": run})
        assert refused.value.code == "conflict"

        docs = lab.documents(run)
        assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
        stops = _kinds(docs, "stop")
        assert len(stops) == 1 and stops[0]["exit_status"] == "abort", stops
        assert docs[-1]["kind"] == "stop"
        assert _wells(docs) == counted  # nothing counted after the crash
        results = await lab.client.request("results", {"run": run})
        assert results["state"] == "aborted" and results["stop"]["exit_status"] == "abort"


async def test_a_run_killed_after_its_last_step_before_its_stop_completes_on_resume(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Every step finished, the stop document not yet written: the resumed run has no step
    left and ends completed (it used to stay interrupted, crashing on each resume)."""
    async with lab_stack(tmp_path, broker, time_scale=50.0) as lab:
        run = await lab.start(COUNT_ONLY)
        assert (await lab.wait_ended(run))["state"] == "completed"
        await asyncio.to_thread(lab.daemon.kill)
        # the journal as a SIGKILL between the last step's document and the stop leaves it
        with contextlib.closing(sqlite3.connect(lab.files.journal_path)) as conn, conn:
            conn.execute("DELETE FROM documents WHERE run = ? AND kind = 'stop'", (run,))
            conn.execute("UPDATE runs SET state = 'running', last_seq = last_seq - 1"
                         " WHERE run = ?", (run,))  # fmt: skip
        await asyncio.to_thread(lab.daemon.start)
        await lab.wait_connected()
        await lab.wait(run, lambda s: s["state"] == "interrupted", "interrupted")
        await lab.client.request("run.resume", {"run": run})
        final = await lab.wait_ended(run)
        assert final["state"] == "completed", (final, lab.daemon.tail())
        stops = _kinds(lab.documents(run), "stop")
        assert [s["exit_status"] for s in stops] == ["success"], stops

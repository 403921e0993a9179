"""A journal written before issue 10 (commit d630eec, tests/data/journal-d630eec) opens with
today's daemon: its runs are listed, replayed and shown with their results; a count-plate
run a crash left open ends as it did then; an open protocol run can still be ended."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from acquisition.errors import CommandError
from devtools.mosquitto import MosquittoBroker
from devtools.virtual_lab import VirtualLab, virtual_lab
from tests.e2e import terminal_env

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data" / "journal-d630eec"
PROTOCOL_RUN, COUNT_RUN, OPEN_COUNT, OPEN_PROTOCOL = (
    "20261202-174134-571481", "20261202-174137-9f6c4f", "20261202-174137-479ebf",
    "20261202-174138-9dd544",
)  # fmt: skip


def _journal(tmp_path: Path, name: str) -> Path:
    out = tmp_path / "old-journal.sqlite3"
    out.write_bytes(gzip.decompress((DATA / f"{name}.sqlite3.gz").read_bytes()))
    return out


async def _assay(lab: VirtualLab, *args: str) -> subprocess.CompletedProcess[str]:
    """The terminal, in its own process (the daemon runs on this test's loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "assay"), "--config", str(lab.files.config_path),
         *args],
        capture_output=True, text=True, timeout=60, check=False,
        env=terminal_env(),
    )  # fmt: skip


async def test_the_runs_of_an_old_journal_are_listed_replayed_and_shown(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    journal = _journal(tmp_path, "completed")
    async with virtual_lab(tmp_path / "lab", broker.port, journal_path=journal) as lab:
        runs = {r["run"]: r for r in await lab.client.request("runs")}
        assert set(runs) == {PROTOCOL_RUN, COUNT_RUN, OPEN_COUNT}
        # The count-plate run the crash left open ends as an interrupted count-plate run
        # did: an interruption and a stop (it has no protocol definition to resume from).
        assert runs[OPEN_COUNT]["state"] == "interrupted"
        docs = await lab.documents(OPEN_COUNT)
        assert [d["kind"] for d in docs[-2:]] == ["interruption", "stop"]
        assert docs[-1]["exit_status"] == "interrupted"
        for verb in ("run.resume", "run.abort"):  # neither pretends to do something
            with pytest.raises(CommandError, match="has ended") as refused:
                await lab.client.request(verb, {"run": OPEN_COUNT})
            assert refused.value.code == "conflict"
        for run, steps in ((PROTOCOL_RUN, 5), (COUNT_RUN, 1)):
            replay = await lab.client.request("replay", {"run": run})
            assert replay["count"] == runs[run]["last_seq"], replay
            results: dict[str, Any] = await lab.client.request("results", {"run": run})
            assert results["state"] == "completed" and len(results["wells"]) == 96
            assert results["analysis"]["run"] == run, "the stored result is shown"
            shown = await _assay(lab, "results", run)
            assert shown.returncode == 0, shown.stderr
            assert "96 wells; stop: success" in shown.stdout
            assert "one-site-fit-ki" in shown.stdout
            watched = await _assay(lab, "run", "watch", run)
            assert watched.returncode == 0, watched.stderr
            assert f"run {run}: completed" in watched.stdout, watched.stdout
            assert steps <= watched.stdout.count(" finished"), watched.stdout
        listed = await _assay(lab, "runs")
        assert all(run in listed.stdout for run in runs), listed.stdout


async def test_an_old_protocol_run_left_open_is_interrupted_and_can_be_ended(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    journal = _journal(tmp_path, "open-protocol")
    async with virtual_lab(tmp_path / "lab", broker.port, journal_path=journal) as lab:
        state = await lab.state(OPEN_PROTOCOL)
        assert state["state"] == "interrupted" and "assay run resume" in state["message"]
        docs = await lab.documents(OPEN_PROTOCOL)
        assert docs[-1]["kind"] == "interruption" and docs[-1]["detail"]["step"] == "count"
        assert docs[-1]["detail"]["wells_done"] >= 30
        reply = await lab.client.request("run.abort", {"run": OPEN_PROTOCOL})
        assert reply["state"] == "aborted", reply
        stop = (await lab.documents(OPEN_PROTOCOL))[-1]
        assert stop["kind"] == "stop" and stop["exit_status"] == "abort"
        assert json.loads(json.dumps(stop))["counts"]["data"] >= 30

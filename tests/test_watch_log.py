"""``assay run watch`` when its output is not a terminal: plain, flushed lines from the run's
first document on, with progress milestones (every 10%, or a minute of wall time).

End to end on the virtual lab (bench, daemon and terminal on one virtual clock over real
wires and a real Mosquitto), then the milestone rules on their own with a fake wall clock.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from acquisition.cli.client import DaemonClient
from acquisition.cli.watch import watch_run
from acquisition.cli.watch_log import RunLog, stamp
from acquisition.run_recorder import RunRecorder
from devtools.mosquitto import MosquittoBroker
from devtools.virtual_lab import VirtualLab, virtual_lab

PLATE = "competition-progesterone"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
DECILES = [f"{p}% " for p in range(10, 101, 10)]


class Log(io.StringIO):
    """A file that is no terminal, counting flushes and what was written at each."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())
        super().flush()


def _lines(log: Log) -> list[str]:
    return log.getvalue().splitlines()


def _milestones(lines: list[str], step: str) -> list[str]:
    """The percentages logged for ``step`` (e.g. ``step 6/7 count``), in order."""
    found = [re.search(rf"{re.escape(step)}: (\d+)% ", line) for line in lines]
    return [f"{m[1]}% " for m in found if m]


async def _watch(lab: VirtualLab, run: str, log: Log) -> int:
    console = Console(file=log, width=80)
    assert not console.is_terminal
    async with DaemonClient(lab.config, timeout_s=10.0) as client:
        return await watch_run(client, console, run)


def _counted(n: int) -> Any:
    def at(rec: RunRecorder) -> bool:
        return rec.step == "count" and rec.progress is not None and rec.progress.done >= n

    return at


@pytest.fixture
async def lab(tmp_path: Path, broker: MosquittoBroker) -> Any:
    async with virtual_lab(tmp_path, broker.port) as the_lab:
        yield the_lab


async def test_a_watch_to_a_file_logs_the_whole_run_and_a_late_one_its_history(
    lab: VirtualLab,
) -> None:
    run = await lab.start("competition-binding", plate_map=PLATE)
    early_log, late_log = Log(), Log()
    early = asyncio.create_task(_watch(lab, run, early_log))
    # Once the count is under way, the incubation is in the file already: written as it went.
    await lab.freeze_when(run, _counted(30))
    async with asyncio.timeout(10):  # real time for the watch to take what was published
        while not any("count: 30%" in line for line in _lines(early_log)):
            await asyncio.sleep(0.05)
    assert any("incubate finished" in line for line in _lines(early_log)), early_log.getvalue()
    late = asyncio.create_task(_watch(lab, run, late_log))  # its history: seq 1 to now
    async with asyncio.timeout(10):
        while not any("count: 30%" in line for line in _lines(late_log)):
            await asyncio.sleep(0.05)
    lab.thaw()
    async with asyncio.timeout(60):
        assert await early == 0, early_log.getvalue()
        assert await late == 0, late_log.getvalue()

    for log in (early_log, late_log):
        lines = _lines(log)
        text = log.getvalue()
        assert all(STAMP.match(line) for line in lines), text
        assert "\x1b" not in text  # no ANSI, no live display
        assert len(log.flushed) >= len(lines)  # flushed line by line
        # (a watch begun before the instruments were leased says "queued" first)
        started = [i for i, line in enumerate(lines) if f"run {run} started: " in line]
        assert started == [0] or (started == [1] and lines[0].endswith(": queued")), text
        assert re.search(r"started: competition-binding, plate P\w+, 7 steps$", lines[started[0]])
        body = [STAMP.sub("", line) for line in lines]
        first_prompt = next(i for i, t in enumerate(body) if t.startswith("operator (prompt"))
        assert "put the assay plate in the incubator" in body[first_prompt]
        assert f"`assay run answer {run} --prompt" in body[first_prompt]  # how, from elsewhere
        order = [
            "step 1/7 prompt started", "answered by virtual-operator: done",
            "step 2/7 incubate started", "step 2/7 incubate finished",
            "step 4/7 harvest started", "step 4/7 harvest finished",
            "move the filter mat to the counter",
            "step 6/7 count started", "step 6/7 count finished (96 wells)",
            f"run {run}: completed",
        ]  # fmt: skip
        where = [next(i for i, t in enumerate(body) if phrase in t) for phrase in order]
        assert where == sorted(where), text
        assert first_prompt < where[2]
        # Milestones, each once: the 90 min incubation with its temperature, the 96 wells.
        assert _milestones(body, "step 2/7 incubate") == DECILES, text
        assert _milestones(body, "step 6/7 count") == DECILES, text
        assert "step 2/7 incubate: 50% (0:45:00/1:30:00), ETA 0:45:00, 37." in text
        assert "(setpoint 37.0 C)" in text
        assert "step 6/7 count: 50% (48/96 wells)" in text
        incubating = [t for t in body if "incubate:" in t]
        assert all(" C (setpoint 37.0 C)" in t for t in incubating), incubating
        assert len(lines) < 80, text  # milestones, not a line per well or sample
    # The late watch began mid-count: what it printed for 10-30% came from the history.
    late_body = [STAMP.sub("", line) for line in _lines(late_log)]
    assert any(t.startswith("step 6/7 count: 30% (29/96 wells)") for t in late_body)


# --------------------------------------------------------------------- the rules alone


class WallClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _doc(seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "ts": f"2025-01-01T10:{seq // 60 % 60:02d}:{seq % 60:02d}Z",
            **fields}  # fmt: skip


def _well(seq: int, index: int) -> dict[str, Any]:
    return _doc(seq, "data", stream="well", reading={"index": index, "well": "A1"})


def _start(wells: int) -> dict[str, Any]:
    return _doc(1, "start", protocol={"name": "count-plate", "steps": [{"name": "count"}]},
                plate={"plate_id": "P1", "wells": [f"W{i}" for i in range(wells)]})  # fmt: skip


def test_a_long_history_gives_ten_milestones_not_a_line_per_well() -> None:
    out = io.StringIO()
    log = RunLog(out, "R1", clock=WallClock())
    log.document(_start(1000), live=False)
    log.document(_doc(2, "step", step="count", phase="started", detail={"wells": 1000}),
                 live=False)  # fmt: skip
    for i in range(1000):
        log.document(_well(3 + i, i), live=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + 10, lines
    assert lines[2].endswith("step count: 10% (100/1000 wells)")
    assert lines[-1].endswith("step count: 100% (1000/1000 wells)")
    assert lines[0] == "2025-01-01T10:00:01Z run R1 started: count-plate, plate P1, 1 steps"


def test_live_progress_is_logged_at_least_once_a_minute_while_it_changes() -> None:
    out, wall = io.StringIO(), WallClock()
    log = RunLog(out, "R1", clock=wall)
    log.document(_start(1000), live=True)
    log.document(_doc(2, "step", step="count", phase="started", detail={"wells": 1000}),
                 live=True)  # fmt: skip
    for i, t in [(0, 0.0), (1, 30.0), (2, 61.0), (3, 90.0), (4, 200.0)]:
        wall.now = t
        log.document(_well(3 + i, i), live=True)
    wall.now = 300.0  # a minute and more, but nothing new: nothing said
    log.state({"step": "count", "steps_total": 1, "updated_at": "2025-01-01T11:00:00Z",
               "progress": {"done": 5, "total": 1000, "unit": "wells", "eta_s": 3600}})
    wall.now = 400.0
    log.state({"step": "count", "updated_at": "2025-01-01T11:00:01Z",
               "progress": {"done": 6, "total": 1000, "unit": "wells", "eta_s": 3590}})
    progress = [line for line in out.getvalue().splitlines() if "%" in line]
    assert [line.split(" ", 1)[1] for line in progress] == [
        "step count: 0% (3/1000 wells)",  # 61 s after the first well
        "step count: 0% (5/1000 wells)",  # 200 s
        "step count: 0% (6/1000 wells), ETA 0:59:50",  # 400 s, from the state
    ]


def test_a_stabilising_incubation_is_logged_by_its_temperature() -> None:
    out, wall = io.StringIO(), WallClock()
    log = RunLog(out, "R1", clock=wall)
    # 30 s after a line is too soon; 70 s after it, at the same temperature, is no news.
    for t, temp in [(0, 30.0), (70, 33.0), (100, 34.0), (140, 33.0)]:
        wall.now = t
        log.state({"step": "incubate", "step_index": 2, "steps_total": 7, "updated_at": None,
                   "progress": {"done": 0, "total": 5400, "unit": "s", "eta_s": 5400},
                   "latest": {"temperature_c": temp, "setpoint_c": 37.0}})  # fmt: skip
    assert out.getvalue().split(" ", 1)[1] == (
        "step 2/7 incubate: 0% (0:00:00/1:30:00), ETA 1:30:00, 33.0 C (setpoint 37.0 C)\n"
    )


def test_stamps_are_short_utc_iso() -> None:
    assert stamp("2025-01-01T10:19:27.249559+02:00") == "2025-01-01T08:19:27Z"
    assert stamp("2025-01-01T10:19:27Z") == "2025-01-01T10:19:27Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp(None))

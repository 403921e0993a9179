"""The run engine's own cost: the shipped competition-binding assay end to end, on a virtual clock.

    .venv/bin/python bench/orchestrator.py [--runs 3]

Starts its own Mosquitto, then per run a fresh ``devtools.virtual_lab`` (simulated bench,
daemon and a terminal client in one event loop, on a ``VirtualClock`` with autojump, talking
over the real wires and the real broker) and runs the shipped protocol ``competition-binding``
with the plate map ``competition-progesterone``: prompt, 90 min incubation at 37 C, prompt,
harvest, prompt, 96-well 3H count, one-site Ki fit. The virtual operator answers the prompts.

Per run:

- wall: real time from the ``run.start`` request to the terminal seeing ``completed`` (polling
  ``run.get`` every 10 ms over MQTT). Target: under 5 s. Lab start-up (bench, daemon,
  instruments connected) is printed apart and is not part of it.
- simulated: ``clock.monotonic()`` covered by the same interval (hours of assay time);
  jumps: how many times autojump moved the clock (``VirtualClock.jumps``). Every jump waits
  for ``idle_s`` (3 ms) of real quiet first, so jumps x 3 ms is a floor under the wall time.
- docs: documents the run wrote to the journal (start, steps, data, prompts, stop);
  Ki: the fit's estimate with its 95% CI, and the simulator's true Ki.

Per step (all runs pooled): the wall time of each step, from its ``started`` document's
``ts`` to its ``finished`` one (the ts are wall clock, UTC). Prompt steps are pure
orchestration here (the virtual operator moves the plate over the bench's control channel
and answers). The engine's own overhead between steps is the gap from one step's
``finished`` document to the next step's ``started`` one, and the edges: start document ->
first step, last step -> stop document; "engine overhead per run" sums those gaps and the
prompt steps. Two terminal edges are shown apart (not in that sum): the ``run.start``
request -> the start document, and the stop document -> the terminal seeing ``completed``
(which includes up to 10 ms of polling). Medians, in ms.

Memory: ``ru_maxrss`` (peak resident set of the whole process, including the simulated bench
in the same process) before the first run and after the last; then one more run under
``tracemalloc`` (not timed: tracing slows Python down) for the Python heap's peak during a
run. Nothing is asserted; figures are printed. About 30 s in all with 3 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from devtools.mosquitto import MosquittoBroker
from devtools.virtual_lab import virtual_lab
from drivers.clock import VirtualClock

PROTOCOL = "competition-binding"
PLATE_MAP = "competition-progesterone"
ENDED = {"completed", "failed", "aborted"}
TERMINAL_EDGES = ("run.start -> start doc", "stop doc -> terminal sees")
Times = dict[str, list[float]]  # name -> wall ms
IDLE_S = 0.003  # devtools.virtual_lab's default: real quiet before each autojump


@dataclass
class RunFigures:
    state: str
    setup_s: float
    wall_s: float
    simulated_s: float
    jumps: int
    documents: int
    ki: dict[str, Any] | None
    true_ki_m: float | None
    step_ms: Times = field(default_factory=dict)
    gap_ms: Times = field(default_factory=dict)


def _ts(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(doc["ts"]))


def _ms(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() * 1000.0


def _step_times(docs: list[dict[str, Any]]) -> tuple[Times, Times]:
    """Wall ms of each step (started -> finished) and of the engine's gaps between them."""
    steps: Times = defaultdict(list)
    gaps: Times = defaultdict(list)
    started: dict[int, datetime] = {}
    last_finished: tuple[str, datetime] | None = None
    start = next(d for d in docs if d["kind"] == "start")
    for doc in docs:
        if doc["kind"] == "step":
            index = int(doc["detail"]["index"])
            if doc["phase"] == "started":
                started[index] = _ts(doc)
                if last_finished is None:
                    gaps["start doc -> first step"].append(_ms(_ts(start), _ts(doc)))
                else:
                    gaps[f"{last_finished[0]} -> {doc['step']}"].append(
                        _ms(last_finished[1], _ts(doc))
                    )
            elif doc["phase"] == "finished" and index in started:
                steps[doc["step"]].append(_ms(started[index], _ts(doc)))
                last_finished = (doc["step"], _ts(doc))
        elif doc["kind"] == "stop" and last_finished is not None:
            gaps["last step -> stop doc"].append(_ms(last_finished[1], _ts(doc)))
    return steps, gaps


async def _one_run(broker_port: int, workdir: Path) -> RunFigures:
    t0 = time.perf_counter()
    clock = VirtualClock(autojump=True, idle_s=IDLE_S)
    async with virtual_lab(workdir, broker_port, clock=clock) as lab:
        setup_s = time.perf_counter() - t0
        sim0, jumps0 = clock.monotonic(), clock.jumps
        asked_at, w0 = datetime.now(UTC), time.perf_counter()
        run = await lab.start(PROTOCOL, plate_map=PLATE_MAP)
        final = await lab.wait_state(run, ENDED, timeout_s=120.0)
        wall_s, seen_at = time.perf_counter() - w0, datetime.now(UTC)
        simulated_s, jumps = clock.monotonic() - sim0, clock.jumps - jumps0
        docs = await lab.documents(run)
        ki: dict[str, Any] | None = None
        true_ki: float | None = None
        if final["state"] == "completed":
            result = await lab.client.request("results", {"run": run})
            ki = next((p for p in result["analysis"]["derived"] if p["name"] == "Ki"), None)
            truth = (await lab.sim("truth"))["truth"]
            true_ki = truth["ki_nm"]["progesterone"] * 1e-9
    steps, gaps = _step_times(docs)
    first, last = _ts(docs[0]), _ts(docs[-1])
    gaps = {TERMINAL_EDGES[0]: [_ms(asked_at, first)], **gaps,
            TERMINAL_EDGES[1]: [_ms(last, seen_at)]}  # fmt: skip
    return RunFigures(final["state"], setup_s, wall_s, simulated_s, jumps, len(docs), ki,
                      true_ki, steps, gaps)  # fmt: skip


def _nm(molar: float | None) -> str:
    return "n/a" if molar is None else f"{molar * 1e9:.2f}"


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _table(title: str, rows: Times) -> None:
    print(f"\n{title:<28} {'n':>3} {'median ms':>10} {'min':>9} {'max':>9}")
    for name, values in rows.items():
        print(f"{name:<28} {len(values):>3} {statistics.median(values):>10.1f} "
              f"{min(values):>9.1f} {max(values):>9.1f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    # the daemon logs every step to stderr; keep the bench's output to its figures
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    print(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
          f"Python {platform.python_version()} ({sys.platform})")  # fmt: skip
    print(f"protocol {PROTOCOL}, plate map {PLATE_MAP}, {args.runs} runs, one lab each\n")
    figures: list[RunFigures] = []
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        rss_before = _maxrss_mb()
        print(f"{'run':>3} {'state':>9} {'lab up s':>8} {'wall s':>7} {'simulated':>10} "
              f"{'jumps':>6} {'x idle s':>8} {'docs':>5}  Ki nM [95% CI]  (true)")  # fmt: skip
        for i in range(args.runs):
            f = asyncio.run(_one_run(broker.port, Path(tmp) / f"run{i}"))
            figures.append(f)
            ki = (f"{_nm(f.ki['estimate'])} [{_nm(f.ki['ci_low'])}, {_nm(f.ki['ci_high'])}]"
                  if f.ki else "n/a")  # fmt: skip
            print(f"{i + 1:>3} {f.state:>9} {f.setup_s:>8.2f} {f.wall_s:>7.2f} "
                  f"{f.simulated_s / 3600:>8.2f} h {f.jumps:>6} {f.jumps * IDLE_S:>8.2f} "
                  f"{f.documents:>5}  {ki}  ({_nm(f.true_ki_m)})")  # fmt: skip
        rss_after = _maxrss_mb()
        tracemalloc.start()
        traced = asyncio.run(_one_run(broker.port, Path(tmp) / "traced"))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    walls = [f.wall_s for f in figures]
    print(f"\nwall run.start -> completed: median {statistics.median(walls):.2f} s, "
          f"max {max(walls):.2f} s (target < 5 s)")  # fmt: skip
    steps: Times = defaultdict(list)
    gaps: Times = defaultdict(list)
    for f in figures:
        for k, v in f.step_ms.items():
            steps[k] += v
        for k, v in f.gap_ms.items():
            gaps[k] += v
    _table("step (started -> finished)", steps)
    _table("engine gap (doc -> doc)", gaps)
    per_run_gap = [sum(sum(v) for k, v in f.gap_ms.items() if k not in TERMINAL_EDGES)
                   for f in figures]  # fmt: skip
    prompts = [sum(f.step_ms.get("prompt", [])) for f in figures]
    print(f"\nengine overhead per run: gaps {statistics.median(per_run_gap):.1f} ms + prompts "
          f"{statistics.median(prompts):.1f} ms (medians) of {statistics.median(walls) * 1000:.0f}"
          " ms wall")  # fmt: skip
    print(f"\nmemory: ru_maxrss {rss_before:.1f} MiB before the runs, {rss_after:.1f} MiB after "
          f"{args.runs}; tracemalloc peak during one run {peak / 2**20:.1f} MiB "
          f"(that run: {traced.state}, {traced.wall_s:.2f} s wall under tracing)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

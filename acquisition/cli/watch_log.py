"""``assay run watch`` when its output is not a terminal: one plain line per event.

A log file or a CI job cannot show a live bar, and rich's live display writes nothing useful
there. So the watch writes lines, each flushed as it is written and starting with a short
UTC timestamp (the event's own, so that a replayed history reads as a timeline): the run's
start, each step started/finished/skipped/paused/resumed, each prompt and its answer, each
interruption, state changes, and progress milestones.

A milestone is printed each time a step's progress crosses another 10% of its total, and
at most once a minute of wall time in between while the progress (or the incubator's
temperature) changes, with done/total, the unit, the ETA and the temperature when known.
Documents that happened before the watch began (its history, replayed from seq 1) give
milestones only, never a line per well or per temperature sample.

Progress comes from two places: the run documents (a counted well, a temperature sample),
which are complete and in order, and the retained run state (the only source for a
harvest's or a wait's progress). The state is used only once the documents up to its
``last_seq`` have been seen, so that milestones never run ahead of what they summarise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from acquisition.cli.render import hms, sweep_text

__all__ = ["RunLog", "stamp"]

StepKey = int | str  # the step's 1-based index, or its name when no index is known


def stamp(ts: object = None) -> str:
    """``2025-01-01T10:19:27Z``: the ISO timestamp ``ts`` (or now) to the second, in UTC."""
    when: datetime | None = None
    if isinstance(ts, str):
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:
            when = None
    if when is None:
        when = datetime.now(UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Seen:
    """One observation of a step's progress."""

    done: int
    total: int
    unit: str
    eta_s: float | None


@dataclass
class _Milestones:
    """What was last printed for one step's progress."""

    decile: int = 0
    done: int | None = None
    temperature: float | None = None
    printed_at: float | None = None  # wall clock


class RunLog:
    """Plain lines for one run, written to ``out`` and flushed one by one."""

    def __init__(
        self,
        out: IO[str],
        run: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 60.0,
    ) -> None:
        self.out = out
        self.run = run
        self._clock = clock
        self._every_s = every_s
        self.steps_total: int | None = None
        self._step: tuple[StepKey, str] | None = None  # the step the documents are in
        self._durations: dict[int, float] = {}  # timed steps' totals, from the protocol
        self._wells_total = 96
        self._totals: dict[StepKey, int] = {}  # from the state or the step's document
        self._eta: dict[StepKey, tuple[int, float]] = {}  # the state's (done, eta_s)
        self._marks: dict[StepKey, _Milestones] = {}

    def line(self, text: str, ts: object = None) -> None:
        self.out.write(f"{stamp(ts)} {text}\n")
        self.out.flush()

    # ------------------------------------------------------------------ documents

    def document(self, doc: dict[str, Any], *, live: bool) -> None:
        """A start, step or data document (``live``: not part of the replayed history)."""
        kind, ts = doc.get("kind"), doc.get("ts")
        if kind == "start":
            self._on_start(doc)
        elif kind == "step":
            self._on_step(doc)
        elif kind == "data":
            self._on_data(doc, live=live, ts=ts)
        elif kind == "artifact":
            size = doc.get("size_bytes")
            mb = f", {size / 1e6:.1f} MB" if isinstance(size, int) else ""
            self.line(f"file: {doc.get('path')} ({doc.get('holds')}{mb})", ts)

    def _on_start(self, doc: dict[str, Any]) -> None:
        protocol = doc.get("protocol") or {}
        plate = doc.get("plate") or {}
        definition = protocol.get("definition")
        steps = (definition or {}).get("steps") or protocol.get("steps") or []
        self.steps_total = len(steps) or None
        if isinstance(plate.get("wells"), list):
            self._wells_total = len(plate["wells"])
        if isinstance(definition, dict):
            self._durations = _timed_steps(definition)
        where = f", plate {plate['plate_id']}" if plate.get("plate_id") else ""
        count = f", {self.steps_total} steps" if self.steps_total else ""
        self.line(f"run {self.run} started: {protocol.get('name', '?')}{where}{count}", doc["ts"])

    def _on_step(self, doc: dict[str, Any]) -> None:
        detail = doc.get("detail") or {}
        name, phase = str(doc.get("step")), str(doc.get("phase"))
        index = detail.get("index")
        key: StepKey = index if isinstance(index, int) else name
        if phase in ("started", "resumed"):
            self._step = (key, name)
            if isinstance(detail.get("wells"), int) and phase == "started":
                self._totals[key] = detail["wells"]  # a count-plate run says how many
        extra = ""
        if phase == "finished" and isinstance(detail.get("wells"), int):
            extra = f" ({detail['wells']} wells)"
        if phase == "finished" and isinstance(detail.get("sweeps"), int):
            extra = f" ({detail['sweeps']} sweeps)"
        if detail.get("clogged_wells"):
            extra += f" (clogged wells: {', '.join(map(str, detail['clogged_wells']))})"
        self.line(f"{self._label(key, name)} {phase}{extra}", doc.get("ts"))

    def _on_data(self, doc: dict[str, Any], *, live: bool, ts: object) -> None:
        reading = doc.get("reading") or {}
        if doc.get("stream") == "temperature":
            index = reading.get("step_index")
            key: StepKey = index if isinstance(index, int) else "incubate"
            total = self._totals.get(key) or round(self._durations.get(int(index or 0), 0))
            done = min(total, math.floor(float(reading.get("elapsed_s", 0))))
            self._observe(
                key, "incubate", _Seen(done, total, "s", total - done if total else None),
                temperature=(reading.get("temperature_c"), reading.get("setpoint_c")),
                live=live, ts=ts,
            )  # fmt: skip
            return
        if doc.get("stream") == "sweep":  # the run state shows the count; a QC failure is news
            if reading.get("qc"):
                self.line(f"sweep {reading.get('sweep')}: {'; '.join(map(str, reading['qc']))}",
                          ts)  # fmt: skip
            return
        if self._step is None or not isinstance(reading.get("index"), int):
            return
        key, name = self._step
        total = self._totals.get(key, self._wells_total)
        done = reading["index"] + 1
        self._observe(key, name, _Seen(done, total, "wells", self._eta_at(key, done, total)),
                      live=live, ts=ts)  # fmt: skip

    def _eta_at(self, key: StepKey, done: int, total: int) -> float | None:
        """The ETA at ``done``: the last state's, scaled to the wells left since (the state
        is throttled, the wells are not)."""
        if key not in self._eta:
            return None
        then, eta_s = self._eta[key]
        return eta_s * (total - done) / (total - then) if total > then else 0.0

    # ------------------------------------------------------------------ the run state

    def state(self, state: dict[str, Any]) -> None:
        """A retained run state whose documents have all been seen: its progress."""
        if state.get("steps_total"):
            self.steps_total = int(state["steps_total"])
        prog = state.get("progress") or {}
        if not prog or not prog.get("total"):
            return
        index, name = state.get("step_index"), str(state.get("step") or "step")
        key: StepKey = index if isinstance(index, int) else name
        self._totals[key] = int(prog["total"])
        if prog.get("eta_s") is not None:
            self._eta[key] = (int(prog.get("done", 0)), float(prog["eta_s"]))
        latest = state.get("latest") or {}
        temperature = (latest.get("temperature_c"), latest.get("setpoint_c"))
        seen = _Seen(int(prog.get("done", 0)), int(prog["total"]), str(prog.get("unit", "wells")),
                     prog.get("eta_s"))  # fmt: skip
        note = sweep_text(latest) if "sweep" in latest else None
        self._observe(key, name, seen, temperature=temperature, live=True,
                      ts=state.get("updated_at"), note=note)  # fmt: skip

    # ------------------------------------------------------------------ milestones

    def _observe(
        self, key: StepKey, name: str, seen: _Seen, *,
        temperature: tuple[Any, Any] = (None, None), live: bool, ts: object,
        note: str | None = None,
    ) -> None:  # fmt: skip
        done, total = seen.done, seen.total
        if total <= 0:
            return
        marks = self._marks.setdefault(key, _Milestones())
        now = self._clock()
        if marks.printed_at is None:
            marks.printed_at = now  # the first minute counts from the first sign of progress
        temp = float(temperature[0]) if isinstance(temperature[0], int | float) else None
        decile = min(10, math.floor(10 * done / total))
        changed = done != marks.done or temp != marks.temperature
        if marks.done is not None and done < marks.done and decile <= marks.decile:
            return  # an older view (a state behind the documents): nothing new
        due = live and changed and now - marks.printed_at >= self._every_s
        if decile <= marks.decile and not due:
            return
        marks.decile, marks.done, marks.temperature = max(decile, marks.decile), done, temp
        marks.printed_at = now
        amount = f"{hms(done)}/{hms(total)}" if seen.unit == "s" else f"{done}/{total} {seen.unit}"
        text = f"{self._label(key, name)}: {math.floor(100 * done / total)}% ({amount})"
        if seen.eta_s is not None:
            text += f", ETA {hms(seen.eta_s)}"
        if temp is not None:
            setpoint = temperature[1]
            text += f", {temp:.1f} C"
            if isinstance(setpoint, int | float):
                text += f" (setpoint {setpoint:.1f} C)"
        if note:
            text += f"; {note}"
        self.line(text, ts)

    def _label(self, key: StepKey, name: str) -> str:
        if isinstance(key, int):
            of = f"/{self.steps_total}" if self.steps_total else ""
            return f"step {key}{of} {name}"
        return f"step {name}"


def _timed_steps(definition: dict[str, Any]) -> dict[int, float]:
    """Step index -> planned seconds of the timed steps (incubations) in a start
    document's protocol."""
    from acquisition.protocols import ProtocolFileError, protocol_from_data
    from acquisition.steps import step_type

    try:
        protocol = protocol_from_data(definition)
    except (ProtocolFileError, ValueError, TypeError):
        return {}  # milestones then wait for the run state to give the total
    out: dict[int, float] = {}
    for i, step in enumerate(protocol.steps, start=1):
        timed = step_type(step.type).timed_s
        if timed is not None:
            out[i] = timed(step)
    return out

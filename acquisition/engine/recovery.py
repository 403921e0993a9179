"""Where an interrupted protocol run stands, read back from its own documents.

The journal is the only memory that survives a daemon crash, so everything a resume needs
is in the run's documents: the start document holds the protocol and the plate map as they
were run; step documents (``detail.index``) say which steps started and finished; data
documents say which wells were counted and how far the incubation timer got. Pure code:
documents in, :class:`ResumePoint` out.

What a resume does with each kind of step (:func:`decide`):

- count: goes on from the next uncounted well (the operator asked for the resume);
- harvest, if it had started: never re-run by itself; the run reads the harvester once the
  instruments are held and says which case it is (:func:`~.harvest.assess_harvest`);
- incubate, if it had started: goes on with the elapsed time kept only if the last
  temperature sample is recent (the gap is within the step's grace period), else the
  operator chooses;
- prompt, wait, analyze: done again (a wait restarts its timer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from acquisition.engine.context import StepProgress
from acquisition.protocols import IncubateStep, Protocol

__all__ = ["ResumePoint", "decide", "read_run"]


@dataclass
class ResumePoint:
    protocol_definition: dict[str, Any]
    protocol_source: str
    plate: dict[str, Any]
    instruments: dict[str, str]  # kind -> id
    next_index: int  # 1-based number of the first step not finished
    progress: dict[int, StepProgress] = field(default_factory=dict)
    completed: list[int] = field(default_factory=list)


def read_run(documents: Sequence[Mapping[str, Any]]) -> ResumePoint:
    """ValueError if the documents are not those of a protocol run."""
    start = next((d for d in documents if d.get("kind") == "start"), None)
    if start is None or "definition" not in start.get("protocol", {}):
        raise ValueError("not a protocol run (no protocol definition in its start document)")
    proto = start["protocol"]
    point = ResumePoint(
        protocol_definition=dict(proto["definition"]),
        protocol_source=str(proto.get("source", "")),
        plate=dict(start.get("plate", {})),
        instruments={
            str(v["kind"]): str(k) for k, v in start.get("instruments", {}).items()
        },
        next_index=1,
    )
    current: int | None = None
    for doc in documents:
        kind = doc.get("kind")
        if kind == "step":
            index = int(doc.get("detail", {}).get("index", 0))
            if index < 1:
                continue
            phase = doc.get("phase")
            prog = point.progress.setdefault(index, StepProgress())
            if phase in ("started", "resumed"):
                current = index
                prog.started = True
                prog.before = {k: v for k, v in doc.get("detail", {}).items() if k != "index"}
            elif phase in ("finished", "skipped"):
                point.completed.append(index)
                current = None
        elif kind == "data" and current is not None:
            prog = point.progress.setdefault(current, StepProgress())
            reading = doc.get("reading", {})
            stream = doc.get("stream", "well")
            if stream == "well":
                well = str(reading.get("well"))
                if well not in prog.counted:
                    prog.counted.append(well)
            elif stream == "temperature" and "sampled_at" in reading:
                prog.elapsed_s = max(prog.elapsed_s, float(reading.get("elapsed_s", 0.0)))
                prog.last_sample_at = datetime.fromisoformat(str(reading["sampled_at"]))
    done = set(point.completed)
    point.next_index = next(
        (i for i in range(1, len(proto["definition"].get("steps", [])) + 2) if i not in done),
        1,
    )
    return point


def decide(
    protocol: Protocol, point: ResumePoint, now: datetime, time_scale: float
) -> str | None:
    """None if step ``point.next_index`` may simply go on; else what the operator is told
    before choosing retry / skip / abort. ``time_scale``: simulated seconds per real one."""
    index = point.next_index
    if index > len(protocol.steps):
        return None
    step = protocol.steps[index - 1]
    prog = point.progress.get(index)
    if prog is None or not prog.started:
        return None
    if isinstance(step, IncubateStep):
        if prog.last_sample_at is None:
            return None  # it had not reached temperature yet: stabilising again is harmless
        gap_s = (now - prog.last_sample_at).total_seconds() * time_scale
        if gap_s <= step.grace_s:
            return None
        return (
            f"step {index} (incubate) was interrupted for {gap_s:.0f} s (grace "
            f"{step.grace_s:g} s) after {prog.elapsed_s:.0f} of {step.duration_s:.0f} s: the "
            "temperature in between is unknown. retry = go on timing the rest, skip = "
            "end the incubation here, abort = end the run"
        )
    return None

"""Where an interrupted protocol run stands, read back from its own documents.

The journal is the only memory that survives a daemon crash, so everything a resume needs
is in the run's documents: the start document holds the protocol and the plate map as they
were run; step documents (``detail.index``) say which steps started and finished; data
documents say which wells were counted and how far the incubation timer got. Pure code:
documents in, :class:`ResumePoint` out.

What a resume does with a started step is its type's to say (:func:`decide`,
:class:`~acquisition.steps.StepType`): a step with an assessment (the harvest) is never
re-run by itself, the run reads its instrument once held and says which case it is; a
step with a resume policy (the incubation: is the temperature known over the gap?) may put
a question to the operator; any other goes on from its progress as its data documents
rebuilt it (a count from the next uncounted well) or is simply done again (a prompt, a
wait, the analysis). Data documents are folded into the progress by the step type's
``rebuild``; one it does not know (a stream of a newer version) is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from acquisition.protocols import Protocol
from acquisition.steps import step_types
from acquisition.steps.context import StepProgress

__all__ = ["ResumePoint", "decide", "read_run"]

log = structlog.get_logger("acquisition.engine")


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
        plate=dict(start.get("plate") or {}),  # a run with no plate has none
        instruments={  # role -> id (a run before roles had names: its kind was its role)
            str(v.get("role") or v.get("kind")): str(k)
            for k, v in (start.get("instruments") or {}).items()
            if isinstance(v, dict) and (v.get("role") or v.get("kind"))
        },
        next_index=1,
    )
    current: int | None = None
    steps = proto["definition"].get("steps", [])
    types = step_types()
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
        elif kind == "data" and current is not None and current <= len(steps):
            entry = types.get(str(steps[current - 1].get("type")))
            if entry is not None and entry.rebuild is not None:
                prog = point.progress.setdefault(current, StepProgress())
                try:
                    entry.rebuild(prog, doc)
                except (KeyError, TypeError, ValueError, AttributeError):
                    # a reading this version cannot read: left out, never fatal to the run
                    log.warning("reading left out of the resume", seq=doc.get("seq"),
                                stream=doc.get("stream"))  # fmt: skip
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
    policy = step_types()[step.type].resume
    if prog is None or not prog.started or policy is None:
        return None
    question = policy(step, prog, now, time_scale)
    return None if question is None else f"step {index} ({step.type}) {question}"

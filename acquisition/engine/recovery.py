"""Where an interrupted protocol run stands, read back from its own documents.

The journal is the only memory that survives a daemon crash, so everything a resume needs
is in the run's documents: the start document holds the protocol and the plate map as they
were run; step documents (``detail.index``) say which steps started and finished; data
documents say which wells were counted and how far the incubation timer got. Pure code:
typed documents in (:func:`acquisition.journal.run_documents`), :class:`ResumePoint` out.

What a resume does with a started step is its type's to say (:func:`decide`,
:class:`~acquisition.steps.StepType`): a step with an assessment (the harvest) is never
re-run by itself, the run reads its instrument once held and says which case it is; a
step with a resume policy (the incubation: is the temperature known over the gap?) may put
a question to the operator; any other goes on from its progress as its data documents
rebuilt it (a count from the next uncounted well) or is simply done again (a prompt, a
wait, the analysis). Data documents are folded into the progress by the step type's
``rebuild`` (which dispatches on the reading's model); a reading this version cannot read
(a stream of a newer version, a damaged one) is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from acquisition.payloads import (
    DataDocument,
    ReadDocument,
    StartDocument,
    StepDocument,
    UnreadableDocument,
)
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
    instruments: dict[str, str]  # role -> id
    next_index: int  # 1-based number of the first step not finished
    progress: dict[int, StepProgress] = field(default_factory=dict)
    completed: list[int] = field(default_factory=list)
    label: str | None = None


def read_run(documents: Sequence[ReadDocument]) -> ResumePoint:
    """Where the run stands, from its documents read back typed
    (:func:`acquisition.journal.run_documents`). ValueError if they are not those of a
    protocol run; TypeError naming the document if one the resume depends on (the start, a
    step) cannot be read. A reading that cannot be read is left out (a stream of a newer
    version, a plug-in not loaded, a damaged one): never fatal to the run."""
    start = next((d for d in documents if isinstance(d, StartDocument)), None)
    if start is None:
        _refuse_unreadable(d for d in documents if d.kind == "start")
    if start is None or "definition" not in start.protocol:
        raise ValueError("not a protocol run (no protocol definition in its start document)")
    definition = dict(start.protocol["definition"])
    point = ResumePoint(
        protocol_definition=definition,
        protocol_source=str(start.protocol.get("source", "")),
        plate=dict(start.plate or {}),  # a run with no plate has none
        instruments={  # role -> id (a run before roles had names: its kind was its role)
            str(v.get("role") or v.get("kind")): str(k)
            for k, v in start.instruments.items()
            if isinstance(v, dict) and (v.get("role") or v.get("kind"))
        },
        next_index=1,
        label=str(start.protocol["label"]) if start.protocol.get("label") else None,
    )
    current: int | None = None
    steps = definition.get("steps", [])
    types = step_types()
    for doc in documents:
        if isinstance(doc, UnreadableDocument):
            if doc.kind != "data":
                _refuse_unreadable([doc])
            log.warning("reading left out of the resume", seq=doc.seq, error=doc.error)
        elif isinstance(doc, StepDocument):
            index = doc.detail.get("index", 0)
            if not isinstance(index, int) or index < 1:
                continue  # a step of a run before steps were numbered
            prog = point.progress.setdefault(index, StepProgress())
            if doc.phase in ("started", "resumed"):
                current = index
                prog.started = True
                prog.before = {k: v for k, v in doc.detail.items() if k != "index"}
            elif doc.phase in ("finished", "skipped"):
                point.completed.append(index)
                current = None
        elif isinstance(doc, DataDocument) and current is not None and current <= len(steps):
            entry = types.get(str(steps[current - 1].get("type")))
            if entry is not None and entry.rebuild is not None:
                try:
                    entry.rebuild(point.progress.setdefault(current, StepProgress()), doc)
                except (KeyError, TypeError, ValueError, AttributeError):
                    # a plug-in's rebuild that cannot take this reading: left out, not fatal
                    log.warning("reading left out of the resume", seq=doc.seq,
                                stream=doc.stream)  # fmt: skip
    done = set(point.completed)
    point.next_index = next((i for i in range(1, len(steps) + 2) if i not in done), 1)
    return point


def _refuse_unreadable(docs: Iterable[ReadDocument]) -> None:
    for doc in docs:
        if isinstance(doc, UnreadableDocument):
            raise TypeError(f"document seq {doc.seq} ({doc.kind}) cannot be read: {doc.error}")


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

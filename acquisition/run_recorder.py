"""One run's documents and retained state, written to the journal before anything is sent.

Every call appends one run document (``seq`` = previous + 1) and, in the same SQLite
transaction, queues the event and the new retained run state in the outbox. The MQTT link
drains the outbox; nothing reaches the broker that is not already on disk.

Writes are pipelined: a data document is handed to the journal's single worker (which
commits in order) and the run goes on to the next well without waiting for the commit, up
to :data:`MAX_PENDING_WRITES` in flight. Each write is its own task, so cancelling the run
(abort, shutdown) never drops one that was handed over. :meth:`RunRecorder.flush` waits for
them all; ``start`` and ``stop`` flush, so a run's outcome is on disk before it is reported,
and a journal failure surfaces at the next call.

The retained run state goes out with every document except data documents arriving faster
than one per :data:`STATE_INTERVAL_S`: those refresh it at most that often (the newest
state follows by itself), which halves the traffic of a fast count. Every data document is
still sent, each with its seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from acquisition.config import LabConfig
from acquisition.errors import JournalError
from acquisition.journal import Journal, OutboxMessage, RunRecord
from acquisition.payloads import (
    DATA_STREAMS,
    ArtifactDocument,
    DataDocument,
    ExitStatus,
    InterruptionDocument,
    Progress,
    PromptDocument,
    PromptState,
    RunState,
    RunStateName,
    StartDocument,
    StepDocument,
    StopDocument,
)
from acquisition.run_states import check_transition
from drivers.clock import Clock, MonotonicClock

__all__ = ["MAX_PENDING_WRITES", "STATE_INTERVAL_S", "RunRecorder", "new_run_id", "utcnow"]

MAX_PENDING_WRITES = 64
STATE_INTERVAL_S = 0.2


def utcnow() -> datetime:
    return datetime.now(UTC)


def _document_ids() -> Callable[[], str]:
    """A source of document ids: 32 hex digits, 80 random bits drawn from ``os.urandom`` once
    per recorder, then a 48-bit counter. Unique as long as two recorders never draw the same
    80 bits; one run's ids sort in order, so the journal's unique index on them grows at one
    end instead of at a random page per document (``uuid4`` also made a system call per
    document, handing the GIL to the journal thread)."""
    prefix = os.urandom(10).hex()
    counter = itertools.count(1)

    def next_id() -> str:
        return f"{prefix}{next(counter):012x}"

    return next_id


def new_run_id(now: datetime | None = None) -> str:
    """Sortable, unique, and short enough to type: ``20261126-142800-3f9a1c``."""
    stamp = (now or utcnow()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


class RunRecorder:
    """Appends a run's documents in order and keeps its retained state current."""

    def __init__(
        self,
        config: LabConfig,
        journal: Journal,
        notify: Callable[[], None],
        record: RunRecord,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._journal = journal
        self._notify = notify
        self.run = record.run
        self.protocol = record.protocol
        self.created_at = record.created_at
        self.last_seq = record.last_seq  # the newest document on disk
        self._next_seq = record.last_seq + 1
        self._writes: list[asyncio.Future[None]] = []
        self._failure: BaseException | None = None
        self._clock: Clock = clock or MonotonicClock()
        self._new_id = _document_ids()
        self._state_sent_at = -math.inf
        self._deferred_state: asyncio.Task[None] | None = None
        self.state: RunStateName = record.state  # type: ignore[assignment]
        self.step: str | None = None
        self.progress: Progress | None = None
        self.latest: dict[str, Any] | None = None
        self.message: str | None = None
        self.step_index: int | None = None
        self.steps_total: int | None = None
        self.prompt: PromptState | None = None
        self.counts: dict[str, int] = {}
        self._events_topic = config.topic("runs", self.run, "events")
        self._state_topic = config.topic("runs", self.run, "state")

    @classmethod
    async def resume(
        cls,
        config: LabConfig,
        journal: Journal,
        notify: Callable[[], None],
        record: RunRecord,
        *,
        clock: Clock | None = None,
    ) -> RunRecorder:
        """A recorder for a run already in the journal, its document counts restored."""
        recorder = cls(config, journal, notify, record, clock=clock)
        for payload in await journal.documents(record.run):
            kind = json.loads(payload).get("kind", "?")
            recorder.counts[kind] = recorder.counts.get(kind, 0) + 1
        if record.state_payload is not None:  # where the retained state left it
            last = json.loads(record.state_payload)
            recorder.step = last.get("step")
            recorder.step_index = last.get("step_index")
            recorder.steps_total = last.get("steps_total")
            recorder.message = last.get("message")
            if last.get("prompt"):
                recorder.prompt = PromptState.model_validate(last["prompt"])
        return recorder

    @classmethod
    async def create(
        cls,
        config: LabConfig,
        journal: Journal,
        notify: Callable[[], None],
        protocol: str,
        params: dict[str, Any],
        *,
        clock: Clock | None = None,
    ) -> RunRecorder:
        now = utcnow()
        run = new_run_id(now)
        await journal.create_run(run, protocol, params, now, state="queued")
        record = await journal.get_run(run)
        assert record is not None  # just created in the same journal
        recorder = cls(config, journal, notify, record, clock=clock)
        await recorder.set_state("queued")
        return recorder

    # -- retained state --------------------------------------------------------------

    def state_payload(self, last_seq: int | None = None) -> bytes:
        """The retained run state.

        By default ``last_seq`` is the newest document handed to the journal: the state goes
        through the same in-order journal, so by the time it is published those documents
        are on disk. Pass ``last_seq=recorder.last_seq`` for a state answered directly.
        """
        return _state_json(self._state_fields(last_seq))

    def _state_fields(self, last_seq: int | None = None) -> dict[str, Any]:
        """The retained run state's fields as of now (immutable values, or the caller's
        ``latest`` dict, which is replaced, never changed in place)."""
        return {
            "node": self._config.node,
            "run": self.run,
            "protocol": self.protocol,
            "state": self.state,
            "step": self.step,
            "progress": self.progress,
            "last_seq": self._next_seq - 1 if last_seq is None else last_seq,
            "latest": self.latest,
            "message": self.message,
            "step_index": self.step_index,
            "steps_total": self.steps_total,
            "prompt": self.prompt,
            "created_at": self.created_at,
            "updated_at": utcnow(),
        }

    def _state_message(self, payload: bytes) -> OutboxMessage:
        return OutboxMessage(self._state_topic, payload, qos=1, retain=True)

    async def set_state(
        self, state: RunStateName, *, step: str | None = None, message: str | None = None
    ) -> None:
        check_transition(self.run, self.state, state)
        self.state = state
        self.step = step if step is not None else self.step
        self.message = message
        payload = self.state_payload()
        await self._journal.update_run(
            self.run, state=state, state_payload=payload, outbox=[self._state_message(payload)]
        )
        self._notify()

    async def republish_state(self) -> None:
        """Queue the current retained state again (a restarted broker may have lost it)."""
        await self._journal.enqueue([self._state_message(self.state_payload())])
        self._notify()

    # -- documents -------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        return {
            "id": self._new_id(),
            "run": self.run,
            "node": self._config.node,
            "seq": self._next_seq,
            "ts": utcnow(),
        }

    async def _append(
        self,
        doc: StartDocument
        | StepDocument
        | DataDocument
        | InterruptionDocument
        | PromptDocument
        | ArtifactDocument
        | StopDocument,
        *,
        durable: bool = False,
        throttle_state: bool = False,
    ) -> None:
        """Hand one document to the journal; with ``durable``, return once all are on disk."""
        if self._failure is not None:
            await self._recover()
        payload = doc.model_dump_json(by_alias=True).encode()
        state_fields = self._state_fields(last_seq=doc.seq)
        state_payload: bytes | Callable[[], bytes]
        self._next_seq = doc.seq + 1
        outbox = [OutboxMessage(self._events_topic, payload, qos=1, retain=False)]
        now = self._clock.monotonic()
        if not throttle_state or now - self._state_sent_at >= STATE_INTERVAL_S:
            state_payload = _state_json(state_fields)
            outbox.append(self._state_message(state_payload))
            self._state_sent_at = now
            self._cancel_deferred_state()
        else:
            # Stored with the run (run.get answers it), not sent: the journal encodes it only
            # if it is the one that ends up stored (the newest of the appends that commit
            # together), on its own thread.
            state_payload = partial(_state_json, state_fields)
            if self._deferred_state is None:
                self._deferred_state = asyncio.create_task(
                    self._send_state_later(), name=f"state:{self.run}"
                )
        # Queued on the journal thread right now: whatever is submitted next (a state, the
        # next document) is written after it.
        write = self._journal.submit_append(
            self.run,
            doc.seq,
            doc.id,
            doc.kind,
            payload,
            outbox=outbox,
            state=self.state,
            state_payload=state_payload,
        )
        write.add_done_callback(partial(self._written, doc.seq, doc.kind))
        self._writes.append(write)
        if durable:
            await self.flush()
        elif len(self._writes) >= MAX_PENDING_WRITES:
            await asyncio.wait({self._writes[0]})

    async def _send_state_later(self) -> None:
        """Publish the newest state once the throttle interval has passed."""
        await self._clock.sleep(STATE_INTERVAL_S)
        self._deferred_state = None
        self._state_sent_at = self._clock.monotonic()
        if self._failure is None:
            with contextlib.suppress(JournalError):  # the next document reports it
                await self._journal.enqueue([self._state_message(self.state_payload())])
            self._notify()

    def _cancel_deferred_state(self) -> None:
        if self._deferred_state is not None:
            self._deferred_state.cancel()
            self._deferred_state = None

    async def flush(self) -> None:
        """Wait until every document handed over is on disk; JournalError if one failed.

        Not interrupted by a cancellation: the writes finish, then the cancellation goes on
        (it wins over a write failure, which the next call reports).
        """
        await self._settle()
        if self._failure is not None:
            await self._recover()

    async def _settle(self) -> None:
        """Wait for the writes handed over (each ends written or failed); a cancellation
        meanwhile is raised once they have."""
        cancelled = False
        while self._writes:
            try:
                await asyncio.wait(set(self._writes))
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _recover(self) -> None:
        """After a failed write: realign seq with the disk, then report the failure once.

        Every write queued after the failed one failed too (its seq no longer follows), so
        once they have all settled the next document takes ``last_seq + 1`` again and the
        run can still record its interruption and stop.
        """
        while self._writes:
            await asyncio.wait(set(self._writes))
        failure, self._failure = self._failure, None
        self._cancel_deferred_state()
        self._next_seq = self.last_seq + 1
        raise JournalError(f"run {self.run}: a journal write failed: {failure}")

    @property
    def stopped(self) -> bool:
        """True once the stop document is on disk."""
        return self.counts.get("stop", 0) > 0

    def _written(self, seq: int, kind: str, write: asyncio.Future[None]) -> None:
        self._writes.remove(write)
        exc = None if write.cancelled() else write.exception()
        if write.cancelled() or exc is not None:
            self._failure = self._failure or exc or asyncio.CancelledError()
            return
        self.last_seq = seq
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._notify()

    async def start(
        self,
        *,
        protocol: dict[str, Any],
        plate: dict[str, Any] | None,
        instruments: dict[str, Any],
        simulated: bool,
    ) -> None:
        check_transition(self.run, self.state, "running")
        self.state = "running"
        await self._append(
            StartDocument(
                **self._base(),
                protocol=protocol,
                plate=plate,
                instruments=instruments,
                config=self._config.redacted(),
                simulated=simulated,
            ),
            durable=True,
        )

    async def step_phase(
        self,
        step: str,
        phase: Literal["started", "finished", "resumed", "paused", "skipped"],
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.step = step
        await self._append(
            StepDocument(**self._base(), step=step, phase=phase, detail=detail or {})
        )

    async def data(
        self, reading: BaseModel, progress: Progress | None, *, stream: str = "well",
        latest: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """One reading of a registered ``stream`` (payloads.DATA_STREAMS); ``latest``: what
        the run state shows of it (the newest well)."""
        known = DATA_STREAMS.get(stream)
        if known is None or not isinstance(reading, known.reading):
            raise ValueError(f"a {type(reading).__name__} is not a reading of stream {stream!r}")
        self.progress = progress
        if latest is not None:
            self.latest = latest
        await self._append(DataDocument(**self._base(), stream=stream, reading=reading),
                           throttle_state=True)  # fmt: skip

    async def artifact(
        self, file: Path, *, media_type: str, holds: str, step_index: int | None = None
    ) -> ArtifactDocument:
        """A file the run wrote inside the daemon's data directory: its reference, size and
        sha256 (read on a worker thread) as an ``artifact`` document."""
        rel, size, digest = await asyncio.to_thread(
            _inside_with_size_and_sha256, self._config.journal.data_directory, file
        )
        doc = ArtifactDocument(
            **self._base(), path=rel, media_type=media_type,
            size_bytes=size, sha256=digest, holds=holds, step_index=step_index,
        )  # fmt: skip
        await self._append(doc)
        return doc

    async def prompt_event(
        self,
        prompt: PromptState,
        phase: Literal["asked", "answered", "timed-out", "withdrawn"],
        *,
        answer: str | None = None,
        by: str | None = None,
        note: str | None = None,
    ) -> None:
        """A prompt asked (the state then carries it), or answered, timed out or withdrawn
        (the run paused, aborted or stopped while it was open): cleared."""
        self.prompt = prompt if phase == "asked" else None
        await self._append(
            PromptDocument(
                **self._base(), prompt_id=prompt.id, phase=phase, prompt_kind=prompt.kind,
                text=prompt.text, options=list(prompt.options), answer=answer, by=by,
                note=note,
            )
        )  # fmt: skip

    async def interruption(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        self.message = reason
        await self._append(InterruptionDocument(**self._base(), reason=reason, detail=detail or {}))

    async def stop(self, exit_status: ExitStatus, reason: str, final: RunStateName) -> None:
        """The stop document, once every document handed over before it is on disk (its
        counts are of those). A write that failed before it raises JournalError first, the
        run's state untouched, so that the caller can still stop it (``failed``); so does
        a failure of the stop document's own write. A cancellation meanwhile is raised
        once the stop document is written."""
        check_transition(self.run, self.state, final)
        cancelled = False
        try:
            await self._settle()
        except asyncio.CancelledError:
            cancelled = True
        if self._failure is not None:
            await self._recover()  # raises: seq realigned with the disk, state as it was
        before = (self.state, self.message, self.progress)
        self.state = final
        self.message = reason
        if self.progress is not None:
            self.progress = self.progress.model_copy(update={"eta_s": 0.0})
        try:
            await self._append(
                StopDocument(
                    **self._base(),
                    exit_status=exit_status,
                    reason=reason,
                    counts={k: v for k, v in self.counts.items() if k == "data"},
                ),
                durable=True,
            )
        except BaseException:
            if not self.stopped:  # not on disk: the run is where it was
                self.state, self.message, self.progress = before
            raise
        if cancelled:
            raise asyncio.CancelledError


def _state_json(fields: dict[str, Any]) -> bytes:
    return RunState(**fields).model_dump_json(by_alias=True).encode()


def _inside_with_size_and_sha256(data_dir: Path, file: Path) -> tuple[str, int, str]:
    """``file``'s path relative to ``data_dir`` (ValueError if outside), size and sha256."""
    root, path = data_dir.resolve(), file.resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{file} is not inside the data directory {root}")
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return path.relative_to(root).as_posix(), size, digest.hexdigest()

"""One run's documents and retained state, written to the journal before anything is sent.

Every call appends one run document (``seq`` = previous + 1) and, in the same SQLite
transaction, queues the event and the new retained run state in the outbox. The MQTT link
drains the outbox; nothing reaches the broker that is not already on disk.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from acquisition.config import LabConfig
from acquisition.journal import Journal, OutboxMessage, RunRecord
from acquisition.payloads import (
    DataDocument,
    ExitStatus,
    InterruptionDocument,
    Progress,
    RunState,
    RunStateName,
    StartDocument,
    StepDocument,
    StopDocument,
    WellReading,
)

__all__ = ["RunRecorder", "new_run_id", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    ) -> None:
        self._config = config
        self._journal = journal
        self._notify = notify
        self.run = record.run
        self.protocol = record.protocol
        self.created_at = record.created_at
        self.last_seq = record.last_seq
        self.state: RunStateName = record.state  # type: ignore[assignment]
        self.step: str | None = None
        self.progress: Progress | None = None
        self.latest: dict[str, Any] | None = None
        self.message: str | None = None
        self.counts: dict[str, int] = {}
        self._events_topic = config.topic("runs", self.run, "events")
        self._state_topic = config.topic("runs", self.run, "state")

    @classmethod
    async def resume(
        cls, config: LabConfig, journal: Journal, notify: Callable[[], None], record: RunRecord
    ) -> RunRecorder:
        """A recorder for a run already in the journal, its document counts restored."""
        recorder = cls(config, journal, notify, record)
        for payload in await journal.documents(record.run):
            kind = json.loads(payload).get("kind", "?")
            recorder.counts[kind] = recorder.counts.get(kind, 0) + 1
        return recorder

    @classmethod
    async def create(
        cls,
        config: LabConfig,
        journal: Journal,
        notify: Callable[[], None],
        protocol: str,
        params: dict[str, Any],
    ) -> RunRecorder:
        now = utcnow()
        run = new_run_id(now)
        await journal.create_run(run, protocol, params, now, state="queued")
        record = await journal.get_run(run)
        assert record is not None  # just created in the same journal
        recorder = cls(config, journal, notify, record)
        await recorder.set_state("queued")
        return recorder

    # -- retained state --------------------------------------------------------------

    def state_payload(self, last_seq: int | None = None) -> bytes:
        """The retained run state; ``last_seq`` overrides while a document is being written."""
        return (
            RunState(
                node=self._config.node,
                run=self.run,
                protocol=self.protocol,
                state=self.state,
                step=self.step,
                progress=self.progress,
                last_seq=self.last_seq if last_seq is None else last_seq,
                latest=self.latest,
                message=self.message,
                created_at=self.created_at,
                updated_at=utcnow(),
            )
            .model_dump_json(by_alias=True)
            .encode()
        )

    def _state_message(self, payload: bytes) -> OutboxMessage:
        return OutboxMessage(self._state_topic, payload, qos=1, retain=True)

    async def set_state(
        self, state: RunStateName, *, step: str | None = None, message: str | None = None
    ) -> None:
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
            "id": uuid.uuid4().hex,
            "run": self.run,
            "node": self._config.node,
            "seq": self.last_seq + 1,
            "ts": utcnow(),
        }

    async def _append(
        self,
        doc: StartDocument | StepDocument | DataDocument | InterruptionDocument | StopDocument,
    ) -> None:
        """Write one document; ``last_seq`` moves only once it is on disk.

        The write is shielded: a run cancelled (abort, shutdown) while its document is queued
        for the journal's worker still gets that document written, so seq never has a hole
        and the stop document that follows the cancellation has the right seq.
        """
        payload = doc.model_dump_json(by_alias=True).encode()
        state_payload = self.state_payload(last_seq=doc.seq)
        write = asyncio.ensure_future(
            self._journal.append(
                self.run,
                doc.seq,
                doc.id,
                doc.kind,
                payload,
                outbox=[
                    OutboxMessage(self._events_topic, payload, qos=1, retain=False),
                    self._state_message(state_payload),
                ],
                state=self.state,
                state_payload=state_payload,
            )
        )
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await write  # finish what was started, then let the cancellation through
            self._written(doc.seq, doc.kind)
            raise
        self._written(doc.seq, doc.kind)

    @property
    def stopped(self) -> bool:
        """True once the stop document is on disk."""
        return self.counts.get("stop", 0) > 0

    def _written(self, seq: int, kind: str) -> None:
        self.last_seq = seq
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._notify()

    async def start(
        self,
        *,
        protocol: dict[str, Any],
        plate: dict[str, Any],
        instruments: dict[str, Any],
        simulated: bool,
    ) -> None:
        self.state = "running"
        await self._append(
            StartDocument(
                **self._base(),
                protocol=protocol,
                plate=plate,
                instruments=instruments,
                config=self._config.redacted(),
                simulated=simulated,
            )
        )

    async def step_phase(
        self,
        step: str,
        phase: Literal["started", "finished", "resumed"],
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.step = step
        await self._append(
            StepDocument(**self._base(), step=step, phase=phase, detail=detail or {})
        )

    async def data(self, reading: WellReading, progress: Progress) -> None:
        self.progress = progress
        self.latest = {"well": reading.well, "cpm": reading.cpm, "ccpm": reading.ccpm}
        await self._append(DataDocument(**self._base(), reading=reading))

    async def interruption(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        self.message = reason
        await self._append(InterruptionDocument(**self._base(), reason=reason, detail=detail or {}))

    async def stop(self, exit_status: ExitStatus, reason: str, final: RunStateName) -> None:
        self.state = final
        self.message = reason
        if self.progress is not None:
            self.progress = self.progress.model_copy(update={"eta_s": 0.0})
        await self._append(
            StopDocument(
                **self._base(),
                exit_status=exit_status,
                reason=reason,
                counts={k: v for k, v in self.counts.items() if k == "data"},
            )
        )

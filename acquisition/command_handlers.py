"""What each command verb does. Validation lives in :mod:`acquisition.commands`.

Handlers are idempotent where MQTT makes that matter: a QoS1 command may arrive twice
(the broker acks before we see it), so ``run.abort`` twice is harmless and ``replay`` only
re-sends documents consumers drop by id. ``run.start`` twice starts a second run only if the
instrument is free, which it is not while the first run holds it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

import structlog

from acquisition import __version__
from acquisition.commands import (
    CommandReply,
    ProtocolRunArgs,
    ReplayArgs,
    ReplyError,
    RunRef,
    RunsArgs,
    RunStartArgs,
    SimArgs,
    parse_command,
)
from acquisition.engine.services import ActiveEntry, Notifier, RunServices
from acquisition.errors import CommandError
from acquisition.instance import Identity
from acquisition.journal import OutboxMessage, RunRecord
from acquisition.run_recorder import RunRecorder, utcnow
from acquisition.sim_control import SimControl
from drivers.errors import InstrumentReplyError, LinkError

__all__ = ["CommandHandlers", "DaemonServices", "ReplyCache"]


class _Link(Notifier, Protocol):
    @property
    def connected(self) -> bool: ...


class _Active(ActiveEntry, Protocol):
    @property
    def recorder(self) -> RunRecorder: ...


class DaemonServices(RunServices, Protocol):
    """What the command handlers need of the daemon (acquisition.daemon.Daemon is one)."""

    @property
    def link(self) -> _Link: ...
    @property
    def active(self) -> Mapping[str, _Active]: ...
    @property
    def identity(self) -> Identity | None: ...
    @property
    def started_at(self) -> datetime: ...

    async def start_protocol_run(self, args: ProtocolRunArgs | RunStartArgs) -> RunRecorder: ...
    def abort_run(self, run: str) -> bool: ...

log = structlog.get_logger("acquisition.commands")
REPLAY_LIMIT = 100_000


def _run_summary(record: RunRecord) -> dict[str, Any]:
    return {
        "run": record.run,
        "protocol": record.protocol,
        "state": record.state,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "last_seq": record.last_seq,
    }


class ReplyCache:
    """Recent replies by (response topic, correlation data).

    MQTT QoS1 may deliver a command twice; the broker acks it before we see it. A command
    whose (ResponseTopic, CorrelationData) was answered in the last ``ttl_s`` seconds is not
    executed again: its first reply is sent again (a copy arriving while the first is still
    being handled waits for that reply: ``Daemon._inflight``). So a redelivered
    ``run.start`` does not start a second run, unless the copy arrives after a daemon
    restart (the cache is in memory).
    """

    def __init__(self, *, size: int = 512, ttl_s: float = 600.0) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, bytes], tuple[float, CommandReply]] = {}

    def get(self, key: tuple[str, bytes], now: float) -> CommandReply | None:
        hit = self._entries.get(key)
        if hit is None or now - hit[0] > self._ttl_s:
            return None
        return hit[1]

    def put(self, key: tuple[str, bytes], reply: CommandReply, now: float) -> None:
        self._entries[key] = (now, reply)
        while len(self._entries) > self._size:
            del self._entries[next(iter(self._entries))]


class CommandHandlers:
    def __init__(self, daemon: DaemonServices) -> None:
        self._d = daemon

    async def handle(self, payload: bytes) -> CommandReply:
        verb: str | None = None
        try:
            verb, args = parse_command(payload)
            result = await self._dispatch(verb, args)
            return CommandReply(ok=True, verb=verb, result=result)
        except CommandError as exc:
            log.info("command refused", verb=verb, code=exc.code, reason=exc.message)
            return CommandReply(
                ok=False, verb=verb, error=ReplyError(code=exc.code, message=exc.message)
            )
        except Exception as exc:  # a bug: answer and stay healthy
            log.exception("command failed", verb=verb)
            return CommandReply(
                ok=False, verb=verb, error=ReplyError(code="internal", message=str(exc))
            )

    async def _dispatch(self, verb: str, args: Any) -> Any:
        match verb:
            case "status":
                return await self.status()
            case "instruments":
                return [
                    s.model_dump(mode="json", by_alias=True) for s in self._d.instruments.states()
                ]
            case "runs":
                assert isinstance(args, RunsArgs)
                return [_run_summary(r) for r in await self._d.journal.list_runs(args.limit)]
            case "run.get":
                assert isinstance(args, RunRef)
                return json.loads(await self._state_payload(args.run))
            case "run.start":
                assert isinstance(args, ProtocolRunArgs | RunStartArgs)
                recorder = await self._d.start_protocol_run(args)
                return {"run": recorder.run, "state": recorder.state}
            case "run.abort":
                assert isinstance(args, RunRef)
                return await self.abort(args.run)
            case "run.pause" | "run.resume" | "run.answer" | "run.recover":
                from acquisition.engine.steering import engine_command

                return await engine_command(self._d, verb, args)
            case "results":
                assert isinstance(args, RunRef)
                return await self.results(args.run)
            case "replay":
                assert isinstance(args, ReplayArgs)
                return await self.replay(args)
            case "sim":
                assert isinstance(args, SimArgs)
                return await self.sim(args)
        raise CommandError("unknown_verb", f"unknown verb '{verb}'")  # pragma: no cover

    async def _record(self, run: str) -> RunRecord:
        record = await self._d.journal.get_run(run)
        if record is None:
            raise CommandError("not_found", f"no run '{run}'")
        return record

    async def _state_payload(self, run: str) -> bytes:
        # The state as last committed with the run's documents: its last_seq is on disk (a
        # replay can serve all of it) and it never says "completed" before the stop
        # document is written (a recorder's in-memory state runs ahead of its writes).
        record = await self._record(run)
        if record.state_payload is None:
            raise CommandError("not_found", f"run '{run}' has no state yet")
        return record.state_payload

    async def status(self) -> dict[str, Any]:
        d = self._d
        return {
            "node": d.config.node,
            "version": __version__,
            "pid": os.getpid(),
            "host": d.identity.host if d.identity else None,
            "instance": d.identity.instance if d.identity else None,
            "started_at": d.started_at.isoformat(),
            "uptime_s": round((utcnow() - d.started_at).total_seconds(), 1),
            "simulated": d.config.simulation.enabled,
            "broker": {"connected": d.link.connected},
            "journal": {
                "path": str(d.config.journal.path),
                "outbox": await d.journal.outbox_size(),
            },
            "instruments": [
                {"id": s.id, "kind": s.kind, "state": s.state, "connected": s.connected}
                for s in d.instruments.states()
            ],
            "active_runs": sorted(d.active),
        }

    async def abort(self, run: str) -> dict[str, Any]:
        record = await self._record(run)
        active = self._d.active.get(run)
        if active is not None and active.recorder.stopped:  # ended, its task finishing
            record = await self._record(run)
            if record.state == "aborted":
                return {"run": run, "state": "aborted"}
            raise CommandError("conflict", f"run '{run}' is not active (it is {record.state})")
        if self._d.abort_run(run):
            return {"run": run, "state": "aborting"}
        if record.state == "aborted":
            return {"run": run, "state": "aborted"}  # a repeated abort is not an error
        if record.state == "interrupted":
            from acquisition.engine.steering import abort_interrupted

            return await abort_interrupted(self._d, record)
        raise CommandError("conflict", f"run '{run}' is not active (it is {record.state})")

    async def results(self, run: str) -> dict[str, Any]:
        await self._record(run)  # not_found first
        docs = [json.loads(p) for p in await self._d.journal.documents(run)]
        record = await self._record(run)  # read after the documents: never older than them
        start = next((d for d in docs if d["kind"] == "start"), None)
        stop = next((d for d in docs if d["kind"] == "stop"), None)
        return {
            "run": run,
            "protocol": record.protocol,
            "state": record.state,
            "plate": start.get("plate") if start else None,
            "wells": [
                d["reading"]
                for d in docs
                if d["kind"] == "data" and d.get("stream", "well") == "well"
            ],
            "sweeps": _sweeps_of(docs),
            "artifacts": [{k: d.get(k) for k in ("path", "media_type", "size_bytes", "sha256",
                                                 "holds")}
                          for d in docs if d["kind"] == "artifact"],
            "stop": (
                {"exit_status": stop["exit_status"], "reason": stop["reason"]} if stop else None
            ),
            "last_seq": record.last_seq,
            "analysis": json.loads(analysis)
            if (analysis := await self._d.journal.get_result(run))
            else None,
        }

    async def sim(self, args: SimArgs) -> dict[str, Any]:
        """Forward one virtual-operator op to the simulated bench, over its control channel."""
        sim = self._d.config.simulation
        if not sim.enabled or sim.control_port is None:
            raise CommandError(
                "unavailable", "not a simulated bench (simulation.enabled / control_port)"
            )
        try:
            async with SimControl(sim.control_host, sim.control_port) as control:
                reply = await control.request(args.op, **args.args)
        except LinkError as exc:
            raise CommandError("unavailable", str(exc)) from exc
        except InstrumentReplyError as exc:
            raise CommandError("bad_request", str(exc)) from exc
        log.info("virtual operator", op=args.op)
        return {k: v for k, v in reply.items() if k != "ok"}

    async def replay(self, args: ReplayArgs) -> dict[str, Any]:
        record = await self._record(args.run)
        to_seq = min(args.to_seq or record.last_seq, record.last_seq)
        if args.from_seq > to_seq:
            return {"run": args.run, "from_seq": args.from_seq, "to_seq": to_seq, "count": 0}
        if to_seq - args.from_seq + 1 > REPLAY_LIMIT:
            raise CommandError("bad_request", f"replay at most {REPLAY_LIMIT} documents at once")
        payloads = await self._d.journal.documents(args.run, args.from_seq, to_seq)
        topic = self._d.config.topic("runs", args.run, "events")
        await self._d.journal.enqueue([OutboxMessage(topic, p, qos=1) for p in payloads])
        self._d.link.notify()
        log.info("replaying documents", run=args.run, from_seq=args.from_seq, to_seq=to_seq)
        return {
            "run": args.run,
            "from_seq": args.from_seq,
            "to_seq": to_seq,
            "count": len(payloads),
        }


def _sweeps_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A patch run's sweep summaries, without their traces but the last passing sweep's of
    each condition (an example to plot): the samples are in the run's NWB file."""
    sweeps = [d["reading"] for d in docs if d["kind"] == "data" and d.get("stream") == "sweep"]
    examples = {str(r.get("condition")): r["sweep"] for r in sweeps if not r.get("qc")}
    keep = set(examples.values())
    return [r if r["sweep"] in keep else {k: v for k, v in r.items() if k != "trace"}
            for r in sweeps]  # fmt: skip

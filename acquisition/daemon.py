"""``assayd``: the composition of journal, MQTT link, instruments and runs.

Structured concurrency: one TaskGroup owns the MQTT link, the instrument supervisors and
every active run. ``stop`` (SIGTERM) shuts down in order: runs are interrupted and their
counters stopped, their documents written; instruments are closed and their state
published; the outbox is drained; ``offline`` is published; the broker connection closes.

One daemon per journal and per node (:mod:`acquisition.instance`): before anything else
the daemon locks its journal, then checks the node's retained status (waiting for the
broker if need be); another daemon holding either makes ``run`` raise
:class:`~acquisition.errors.InstanceError` with nothing started. If another daemon of the
node takes over later, the link ends with that error: the daemon stops as it would at
SIGTERM, except that the broker is gone (the outbox waits for the next start, and the
status is the other daemon's), and ``run`` raises it once everything is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import datetime

import aiomqtt
import structlog

from acquisition import __version__
from acquisition.command_handlers import CommandHandlers, ReplyCache
from acquisition.commands import CommandReply, ProtocolRunArgs, RunStartArgs
from acquisition.config import LabConfig
from acquisition.engine.runner import ProtocolRun
from acquisition.engine.runs import interrupt_open_run, protocol_run_from_args, resumed_protocol_run
from acquisition.errors import CommandError, InstanceError
from acquisition.instance import Identity, JournalLock, claim_node, live_rival
from acquisition.instruments import InstrumentManager
from acquisition.journal import Journal
from acquisition.mqtt_link import MqttLink
from acquisition.payloads import DaemonStatus
from acquisition.run_recorder import RunRecorder, utcnow
from acquisition.run_states import OPEN
from drivers.clock import Clock, MonotonicClock, ScaledClock

__all__ = ["ActiveRun", "Daemon"]

log = structlog.get_logger("acquisition.daemon")


@dataclass
class ActiveRun:
    recorder: RunRecorder
    task: asyncio.Task[None]
    engine: ProtocolRun


class Daemon:
    """One lab's daemon. ``await Daemon(config).run(stop_event)``.

    ``takeover``: start even though the node's retained status says another daemon is
    online (a stale status after a crash or power cut on another PC); that daemon, if it
    is alive after all, stops.
    """

    def __init__(
        self, config: LabConfig, *, clock: Clock | None = None, takeover: bool = False
    ) -> None:
        self.config = config
        self._takeover = takeover
        # The run clock: what protocols time with and drivers wait on. Real time, or the
        # simulated bench's time scale, or (tests) a VirtualClock. The MQTT link, the
        # instrument status polls and the reply cache always run on real time.
        if clock is None:
            sim = config.simulation
            clock = ScaledClock(sim.time_scale) if sim.enabled else MonotonicClock()
        self.clock = clock
        self.wall: Clock = MonotonicClock()
        self._stopping = False  # set at SIGTERM: no run starts or resumes any more
        self._resuming: set[str] = set()  # runs being read back for a resume
        self.started_at: datetime = utcnow()
        self.identity: Identity | None = None  # set by run()
        self._taken_over: InstanceError | None = None
        self.active: dict[str, ActiveRun] = {}
        self._journal: Journal | None = None
        self._link: MqttLink | None = None
        self._instruments: InstrumentManager | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._handlers = CommandHandlers(self)
        self._replies = ReplyCache()
        # Commands being handled, by (ResponseTopic, CorrelationData): a QoS1 copy arriving
        # meanwhile waits for the first one's reply instead of running the command again.
        self._inflight: dict[tuple[str, bytes], asyncio.Future[CommandReply]] = {}
        self._reply_prefix = config.topic("replies") + "/"

    # -- accessors for the command handlers ----------------------------------------------

    @property
    def journal(self) -> Journal:
        assert self._journal is not None, "daemon not running"
        return self._journal

    @property
    def link(self) -> MqttLink:
        assert self._link is not None, "daemon not running"
        return self._link

    @property
    def instruments(self) -> InstrumentManager:
        assert self._instruments is not None, "daemon not running"
        return self._instruments

    # -- status payloads -------------------------------------------------------------------

    def _status(self, state: str, reason: str | None = None) -> bytes:
        me = self.identity
        return (
            DaemonStatus(
                node=self.config.node,
                state=state,
                version=__version__,
                pid=os.getpid(),
                started_at=self.started_at,
                ts=utcnow(),
                reason=reason,
                instance=me.instance if me else None,
                host=me.host if me else None,
                boot_id=me.boot_id if me else None,
            )
            .model_dump_json(by_alias=True, exclude_none=True)
            .encode()
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set. :class:`InstanceError` if another daemon holds the
        journal or is online as this node (nothing started), or took the node over."""
        cfg = self.config
        self.identity = me = await asyncio.to_thread(Identity.current, self.started_at)
        lock = await asyncio.to_thread(JournalLock.acquire, cfg.journal.path, me, cfg.node)
        try:
            # The journal is opened before the broker is asked about the node: a journal
            # SQLite cannot use is found at once, not after the broker can be reached.
            self._journal = await Journal.open(
                cfg.journal.path, synchronous=cfg.journal.synchronous
            )
            try:
                claimed = await claim_node(
                    cfg,
                    me,
                    online=lambda: self._status("online"),
                    takeover=self._takeover,
                    stopped=stop,
                )
            except BaseException:
                await self._journal.close()
                raise
            if claimed:
                await self._serve(stop)  # closes the journal
            else:
                log.info("daemon stopped before the broker could be reached")
                await self._journal.close()
        finally:
            lock.release()
        if self._taken_over is not None:
            raise self._taken_over

    def _live_rival(self, payload: bytes) -> str | None:
        assert self.identity is not None
        rival = live_rival(payload, self.identity)
        return rival.describe() if rival is not None else None

    async def _run_link(self, stop: asyncio.Event) -> None:
        try:
            await self.link.run()
        except InstanceError as exc:  # another daemon took the node: stop, as at SIGTERM
            self._taken_over = exc
            stop.set()

    async def _serve(self, stop: asyncio.Event) -> None:
        cfg = self.config
        assert self._journal is not None
        try:
            self._link = MqttLink(
                cfg,
                self._journal,
                on_command=self._on_command,
                status_online=lambda: self._status("online"),
                status_offline=lambda reason: self._status("offline", reason),
                on_connected=self._republish_retained,
                rival=self._live_rival,
                clock=self.wall,
            )
            self._instruments = InstrumentManager(
                cfg, self._journal, self._link.notify, self.clock, poll_clock=self.wall
            )
            await self._recover_interrupted_runs()
            log.info("daemon started", node=cfg.node, version=__version__)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                link_task = tg.create_task(self._run_link(stop), name="mqtt-link")
                inst_task = tg.create_task(self._instruments.run(), name="instruments")
                await stop.wait()
                log.info("daemon stopping")
                self._stopping = True
                await self._interrupt_active_runs()
                inst_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inst_task
                await self._instruments.close()
                await self._link.shutdown()
                link_task.cancel()
        finally:
            self._tg = None
            await self._journal.close()
            log.info("daemon stopped")

    async def _republish_retained(self) -> None:
        """On every (re)connect: a broker restarted without persistence lost retained states."""
        await self.instruments.republish_all()
        for active in list(self.active.values()):
            await active.recorder.republish_state()

    async def _recover_interrupted_runs(self) -> None:
        """Runs left open by a crash are marked interrupted; their data is kept."""
        open_runs = await self.journal.runs_in_states(set(OPEN))
        for record in open_runs:
            recorder = await RunRecorder.resume(
                self.config, self.journal, self.link.notify, record, clock=self.wall
            )
            with structlog.contextvars.bound_contextvars(run=record.run):
                log.warning("run was open when the daemon stopped; marking it interrupted")
                await interrupt_open_run(self.journal, recorder, record)

    async def _interrupt_active_runs(self) -> None:
        while self.active:  # a run launched meanwhile is interrupted too
            for active in list(self.active.values()):
                active.task.cancel()
            for run, active in list(self.active.items()):
                with contextlib.suppress(asyncio.CancelledError):
                    await active.task
                self.active.pop(run, None)

    # -- runs ------------------------------------------------------------------------------

    async def start_protocol_run(self, args: ProtocolRunArgs | RunStartArgs) -> RunRecorder:
        """Create a protocol run (queued until its instruments are free) and start it;
        :class:`RunStartArgs` run the shipped count-plate protocol."""
        self._check_running()
        engine = await protocol_run_from_args(self, args)
        self._launch(engine)
        return engine.recorder

    async def resume_run(self, run: str) -> RunRecorder:
        """Go on with a protocol run left ``interrupted`` by a daemon stop. One resume at a
        time per run: a second (or an abort) meanwhile is refused."""
        self._check_running()
        if run in self._resuming:
            raise CommandError("conflict", f"run '{run}' is being resumed")
        self._resuming.add(run)
        try:
            engine = await resumed_protocol_run(self, run)
            self._check_running()
            self._launch(engine)
        finally:
            self._resuming.discard(run)
        return engine.recorder

    def resuming(self, run: str) -> bool:
        return run in self._resuming

    def _check_running(self) -> None:
        if self._tg is None or self._stopping:
            raise CommandError("unavailable", "the daemon is shutting down")

    def _launch(self, engine: ProtocolRun) -> None:
        assert self._tg is not None
        recorder = engine.recorder
        if recorder.run in self.active:
            raise CommandError("conflict", f"run '{recorder.run}' is already running")

        async def _body() -> None:
            with structlog.contextvars.bound_contextvars(run=recorder.run):
                try:
                    await engine.run()
                    log.info("run ended", state=recorder.state)
                except Exception:  # a journal failure while ending it: keep the daemon up
                    log.exception("run ended with an error")
                finally:
                    self.active.pop(recorder.run, None)

        task = self._tg.create_task(_body(), name=f"run:{recorder.run}")
        self.active[recorder.run] = ActiveRun(recorder, task, engine)

    def abort_run(self, run: str) -> bool:
        """Ask an active run to abort; repeating it does nothing more. False if not active."""
        active = self.active.get(run)
        if active is None:
            return False
        active.engine.control.abort()
        return True

    # -- commands --------------------------------------------------------------------------

    async def _on_command(self, message: aiomqtt.Message) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        if response_topic is not None and not self._valid_reply_topic(response_topic):
            # Replies go only under {prefix}/{node}/replies/: a command must not make the
            # daemon publish into run streams or anywhere else.
            log.warning("command refused: response topic outside replies/", topic=response_topic)
            return
        key = (response_topic, bytes(correlation)) if response_topic and correlation else None
        cached = self._replies.get(key, self.wall.monotonic()) if key else None
        inflight = self._inflight.get(key) if key else None
        if cached is not None:
            log.info("duplicate command delivery; answering again", verb=cached.verb)
            reply = cached
        elif inflight is not None:  # a copy of a command still being handled: its reply
            log.info("duplicate command delivery while handling it; answering once done")
            try:
                reply = await asyncio.shield(inflight)
            except asyncio.CancelledError:
                if inflight.cancelled():  # the first copy was cut short: it answers nothing
                    return
                raise
        else:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            done: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
            if key is not None:
                self._inflight[key] = done
            try:
                reply = await self._handlers.handle(bytes(payload))
                if key is not None:
                    self._replies.put(key, reply, self.wall.monotonic())
                done.set_result(reply)
            finally:
                if not done.done():
                    done.cancel()
                if key is not None:
                    self._inflight.pop(key, None)
        if not response_topic:
            log.warning("command without a response topic", verb=reply.verb, ok=reply.ok)
            return
        await self.link.reply(response_topic, reply.to_json(), correlation_data=correlation)

    def _valid_reply_topic(self, topic: str) -> bool:
        return (
            topic.startswith(self._reply_prefix)
            and len(topic) > len(self._reply_prefix)
            and not any(c in topic for c in "#+\0")
        )

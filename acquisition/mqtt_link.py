"""The daemon's single MQTT connection (aiomqtt, MQTT v5).

:meth:`MqttLink.run` connects with jittered backoff and, per connection:

* sets a Last Will (``status_offline("connection lost")``, retained, QoS1) on
  ``{prefix}/{node}/status`` and publishes ``status_online()`` there on connect;
* with a ``rival`` callback, subscribes to that status topic first and publishes
  ``online`` only once the retained status is in hand: a status that ``rival`` says is
  another live daemon of the node, retained or arriving later, ends the link with
  :class:`~acquisition.errors.InstanceError` (no reconnect; a clean DISCONNECT, so our
  will does not overwrite the other's ``online``). So does a DISCONNECT with reason
  0x8E "Session taken over" (sent by MQTT v5 brokers, Mosquitto from 2.0.15; older ones
  just close the connection, which the status check then catches);
* subscribes to ``{prefix}/{node}/cmd`` (QoS1) and hands each command to ``on_command`` in
  its own task (bounded; a failing handler is logged and never kills the link);
* drains the journal's outbox (:class:`~acquisition.journal.outbox.OutboxDrainer`);
* consumes ``client.messages`` in the same TaskGroup, because a client that only publishes
  never notices a lost connection.

Input is bounded: the CONNECT carries a MaximumPacketSize of :data:`MAX_PACKET_BYTES`, so the
broker drops anything larger instead of sending it to us, and aiomqtt's inbound queue holds
at most :data:`MAX_QUEUED_INCOMING` messages while every command handler slot is busy
(aiomqtt drops and logs the rest). Connection arguments and TLS come from
:func:`acquisition.mqtt_params.client_kwargs`, the same builder the bench terminal uses.

A lost connection ends the TaskGroup; the link reconnects and the drainer resends from the
oldest undeleted row. The delays start over only after a connection that stayed up
``stable_s``; one that drops sooner makes the next delay grow
(:class:`~drivers.backoff.ReconnectBackoff`). :meth:`MqttLink.shutdown` drains the
outbox, publishes ``status_offline("shutdown")`` and disconnects cleanly (a clean
DISCONNECT suppresses the will). If ``run`` is cancelled instead, the link disconnects with
reason 0x04 ("disconnect with will message"), so subscribers still learn that the daemon is
gone.

Credentials never reach a log line; paho's own logger is capped at WARNING so raw packet
traces (topics, sizes, client ids) stay out of production logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from acquisition.config import LabConfig
from acquisition.errors import BrokerError, InstanceError
from acquisition.journal import Journal
from acquisition.journal.outbox import OutboxDrainer
from acquisition.mqtt_params import client_kwargs
from drivers.backoff import Backoff, ReconnectBackoff
from drivers.clock import Clock, MonotonicClock

__all__ = ["MAX_PACKET_BYTES", "MAX_QUEUED_INCOMING", "MqttLink", "broker_error"]

log = structlog.get_logger(__name__)
_PAHO_LOGGER = "acquisition.mqtt_link.paho"
# v3.1.1 CONNACK 4/5; v5 0x86 bad user name or password, 0x87 not authorized
_NOT_AUTHORISED = {4, 5, 0x86, 0x87}
_DISCONNECT_WITH_WILL = 0x04
_SESSION_TAKEN_OVER = 0x8E
MAX_PACKET_BYTES = 4 * 1024 * 1024
"""CONNECT MaximumPacketSize: the broker drops larger packets instead of sending them."""
MAX_QUEUED_INCOMING = 1000
"""aiomqtt's inbound queue bound (messages waiting for a free command handler slot)."""


class _GracefulStop(Exception):
    """Raised by the shutdown watcher to end a session after publishing 'offline'."""


class _Superseded(Exception):
    """Raised by the status check: another live daemon of our node is online."""


def broker_error(exc: BaseException, where: str) -> BrokerError:
    """A connect or connection error as the one-line BrokerError the logs show."""
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(exc, MqttConnectError) and code in _NOT_AUTHORISED:
        return BrokerError(
            f"broker {where} refused the connection: not authorised"
            " (check mqtt.username and mqtt.password)"
        )
    detail = str(exc) or type(exc).__name__
    if isinstance(exc.__cause__, BaseException) and str(exc.__cause__):
        detail = f"{detail} ({exc.__cause__})"
    return BrokerError(f"broker {where}: {detail}")


def _disconnect_reason(client: aiomqtt.Client) -> int | None:
    """The reason code the connection ended with (a broker's DISCONNECT), if known."""
    done = client._disconnected
    if not done.done() or done.cancelled():
        return None
    rc = getattr(done.exception(), "rc", None)
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def _leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first non-group exception in a (nested) exception group."""
    first: Exception | BaseExceptionGroup[Exception] = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class MqttLink:
    """One MQTT v5 connection for the daemon: status, commands, outbox, replies."""

    def __init__(
        self,
        config: LabConfig,
        journal: Journal,
        *,
        on_command: Callable[[aiomqtt.Message], Awaitable[None]],
        status_online: Callable[[], bytes],
        status_offline: Callable[[str], bytes],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        rival: Callable[[bytes], str | None] | None = None,
        clock: Clock | None = None,
        client_id: str | None = None,
        backoff: Backoff | None = None,
        refused_backoff: Backoff | None = None,
        max_concurrent_commands: int = 8,
        timeout_s: float = 10.0,
        stable_s: float = 10.0,
    ) -> None:
        self._config = config
        self._mqtt = config.mqtt
        self._on_command = on_command
        self._status_online = status_online
        self._status_offline = status_offline
        self._on_connected = on_connected
        self._rival = rival
        self._clock: Clock = clock or MonotonicClock()
        self.client_id = client_id or f"assayd-{config.node}"
        self._backoff = backoff or Backoff(base_s=0.1, factor=2.0, cap_s=5.0)
        self._stable_s = stable_s
        self._timeout_s = timeout_s
        self._status_topic = config.topic("status")
        self._cmd_topic = config.topic("cmd")
        self._where = f"{self._mqtt.host}:{self._mqtt.port}"
        self._drainer = OutboxDrainer(
            journal,
            window=self._mqtt.publish_window,
            publish_timeout_s=max(30.0, 2.0 * self._mqtt.keepalive_s),
            refused_backoff=refused_backoff,
        )
        self._command_slots = asyncio.Semaphore(max_concurrent_commands)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._shutdown_deadline = 0.0
        self._run_task: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._first_status: asyncio.Future[None] | None = None
        self._paho_logger = logging.getLogger(_PAHO_LOGGER)
        self._paho_logger.setLevel(logging.WARNING)
        self.last_error: str | None = None
        """The last connect or connection error (a BrokerError message), None once connected."""
        self.connect_attempts = 0

    # -- public surface ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def published(self) -> int:
        """Outbox rows acknowledged by the broker since the link was created."""
        return self._drainer.published

    @property
    def refused(self) -> int:
        """Outbox publishes the broker refused (PUBACK reason >= 0x80); the rows were kept."""
        return self._drainer.refused

    def notify(self) -> None:
        """The journal has new outbox rows: wake the drainer."""
        self._drainer.notify()

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        """True once connected; False if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def reply(
        self,
        topic: str,
        payload: bytes,
        *,
        correlation_data: bytes | None,
        expiry_s: int | None = 60,
    ) -> None:
        """Publish a command reply directly (QoS1, not journaled); drop it if disconnected."""
        client = self._client
        if client is None:
            log.warning("reply dropped: broker not connected", topic=topic)
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        try:
            await client.publish(topic, payload, qos=1, properties=props, timeout=self._timeout_s)
        except aiomqtt.MqttError as exc:
            log.warning("reply dropped", topic=topic, error=str(exc))

    async def run(self) -> None:
        """Keep the connection up until cancelled or :meth:`shutdown` completes.

        Broker trouble is retried forever; another daemon of the node (see the module
        docstring) ends ``run`` with :class:`InstanceError`; anything else (a JournalError
        from the outbox, an exception from ``status_online``) ends ``run`` with that
        exception.
        """
        if self._run_task is not None:
            raise RuntimeError("MqttLink.run() is already running")
        self._run_task = asyncio.current_task()
        self._finished.clear()
        delays = ReconnectBackoff(self._backoff, stable_s=self._stable_s)
        try:
            while not self._stop_requested.is_set():
                try:
                    lasted_s = await self._session()
                except ExceptionGroup as group:  # not MQTT: a JournalError or a callback bug
                    raise _leaf(group) from group
                if self._stop_requested.is_set():
                    break
                await self._clock.sleep(delays.next_delay(lasted_s))
        finally:
            handlers = list(self._handler_tasks)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            self._run_task = None
            self._finished.set()

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Drain the outbox (up to ``timeout_s``), publish 'offline', disconnect cleanly."""
        loop = asyncio.get_running_loop()
        self._shutdown_deadline = loop.time() + timeout_s
        self._stop_requested.set()
        task = self._run_task
        if task is None:
            return
        if not self.connected:
            task.cancel()  # nothing to drain without a broker
        try:
            async with asyncio.timeout(timeout_s + 2.0):
                await self._finished.wait()
        except TimeoutError:
            log.warning("broker link did not stop in time; cancelling it")
            task.cancel()
            await self._finished.wait()

    # -- one connection ----------------------------------------------------------------

    async def _session(self) -> float | None:
        """Connect, serve until the connection ends; how long it was ready (None: never)."""
        self.connect_attempts += 1
        try:  # reads certificate files when TLS is on: off the loop
            kwargs = await asyncio.to_thread(client_kwargs, self._mqtt)
        except (OSError, ssl.SSLError) as exc:
            self._failed(exc)
            return None
        client = self._make_client(kwargs)
        if not await self._connect(client):
            return None
        graceful = ready = False
        ready_at = 0.0
        superseded: str | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                # The consumer first: it is what notices a dead connection, even while
                # the status publish or the subscribes below are waiting for their ack.
                tg.create_task(self._consume(client), name="mqtt-consume")
                if self._rival is not None:
                    await self._subscribe_checking_status(client)
                else:
                    await client.subscribe(self._cmd_topic, qos=1)
                await client.publish(self._status_topic, self._status_online(), qos=1, retain=True)
                self._client = client
                self._connected.set()
                ready = True
                ready_at = self._clock.monotonic()
                self.last_error = None  # logged once ready: commands are subscribed
                log.info("broker connected", broker=self._where, client_id=self.client_id)
                if self._on_connected is not None:
                    tg.create_task(self._announce(), name="mqtt-on-connected")
                tg.create_task(self._drainer.run(client), name="mqtt-drain")
                tg.create_task(self._watch_shutdown(client), name="mqtt-shutdown")
        except* _GracefulStop:
            graceful = True
        except* _Superseded as group:
            superseded = (
                f"another assayd is online for node '{self._config.node}'"
                f" ({group.exceptions[0]}): it has taken this daemon's place on broker"
                f" {self._where}; stopping instead of reconnecting"
            )
        except* aiomqtt.MqttError as group:
            if superseded is not None:
                pass  # the connection went down with the takeover
            elif _disconnect_reason(client) == _SESSION_TAKEN_OVER:
                superseded = (
                    f"broker {self._where} handed this daemon's MQTT session (client id"
                    f" {self.client_id}) to another client (DISCONNECT 0x8E Session taken"
                    f" over): another assayd runs as node '{self._config.node}';"
                    " stopping instead of reconnecting"
                )
            elif ready:
                self._lost(group.exceptions[0])
            else:  # it died before it was ready: a failed attempt, not a lost link
                self._failed(group.exceptions[0])
        finally:
            self._client = None
            self._connected.clear()
            # After a takeover the status is the other daemon's: no will over it.
            await self._close(client, with_will=not graceful and superseded is None)
        if superseded is not None:
            log.error("node taken over by another daemon", broker=self._where, error=superseded)
            raise InstanceError(superseded)
        if graceful:
            log.info("broker disconnected", broker=self._where, reason="shutdown")
        return self._clock.monotonic() - ready_at if ready else None

    async def _subscribe_checking_status(self, client: aiomqtt.Client) -> None:
        """Subscribe to our status topic, then to commands; wait for the consumer to have
        checked the retained status (it raises _Superseded for a live rival).

        The broker sends a retained message while it handles the SUBSCRIBE, before it
        answers the next packet: once the commands' SUBACK is in, the retained status (if
        any) is queued, ahead of every command.
        """
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._first_status = first
        try:
            await client.subscribe(self._status_topic, qos=1)
            await client.subscribe(self._cmd_topic, qos=1)
            if not first.done() and len(client.messages) == 0:
                first.set_result(None)  # nothing retained, or the consumer took it already
            await first
        finally:
            self._first_status = None
            if first.done() and not first.cancelled():
                first.exception()  # retrieved: the consumer raises it too

    async def _connect(self, client: aiomqtt.Client) -> bool:
        attempt = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(attempt)
        except aiomqtt.MqttError as exc:
            self._failed(exc)
            return False
        except asyncio.CancelledError:
            # Let the attempt settle so nothing it opened (socket, paho's misc task) leaks.
            await asyncio.wait([attempt], timeout=self._timeout_s + 1.0)
            if not attempt.done():
                attempt.cancel()
            elif not attempt.cancelled() and attempt.exception() is None:
                await self._close(client, with_will=True)
            raise
        return True

    async def _close(self, client: aiomqtt.Client, *, with_will: bool) -> None:
        paho = client._client  # aiomqtt has no "disconnect with will message"
        if with_will:
            reason = ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL)
            paho.disconnect(reasoncode=reason)
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.__aexit__(None, None, None)
        done = client._disconnected
        if done.done() and not done.cancelled():
            done.exception()  # retrieved, so asyncio does not log it as never retrieved

    def _make_client(self, kwargs: dict[str, Any]) -> aiomqtt.Client:
        """A client from :func:`client_kwargs` (address, credentials, TLS) plus the daemon's
        own session settings; must be called in the running loop."""
        cfg = self._mqtt
        will = aiomqtt.Will(
            self._status_topic, self._status_offline("connection lost"), qos=1, retain=True
        )
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.MaximumPacketSize = MAX_PACKET_BYTES
        client = aiomqtt.Client(
            **kwargs,
            identifier=self.client_id,
            will=will,
            clean_start=True,
            timeout=self._timeout_s,
            max_inflight_messages=cfg.publish_window + 8,  # + status and replies
            max_queued_incoming_messages=MAX_QUEUED_INCOMING,
            properties=connect_props,
            logger=self._paho_logger,
        )
        client.pending_calls_threshold = cfg.publish_window + 64
        return client

    async def _announce(self) -> None:
        """Run the on_connected hook (e.g. re-queue retained states a restarted broker lost)."""
        assert self._on_connected is not None
        try:
            await self._on_connected()
        except Exception:  # a failing hook must not take the link down
            log.exception("on_connected hook failed")

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            # The first message of a session is the retained status, if there is one.
            first = self._first_status
            pending = first is not None and not first.done()
            if self._rival is not None and message.topic.matches(self._status_topic):
                payload = message.payload
                other = (
                    self._rival(bytes(payload)) if isinstance(payload, bytes | bytearray) else None
                )
                if other is not None:
                    if first is not None and pending:  # before 'online' can go out
                        first.set_exception(_Superseded(other))
                    raise _Superseded(other)
                if first is not None and pending:
                    first.set_result(None)
                continue
            if first is not None and pending:
                first.set_result(None)
            await self._command_slots.acquire()
            task = asyncio.create_task(self._handle(message), name="mqtt-command")
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)

    async def _handle(self, message: aiomqtt.Message) -> None:
        try:
            await self._on_command(message)
        except Exception:
            log.exception("command handler failed", topic=str(message.topic))
        finally:
            self._command_slots.release()

    async def _watch_shutdown(self, client: aiomqtt.Client) -> None:
        await self._stop_requested.wait()
        remaining = self._shutdown_deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self._drainer.wait_drained()
        except TimeoutError:
            log.warning("shutdown: outbox not fully drained; the rest is sent on next start")
        await client.publish(
            self._status_topic, self._status_offline("shutdown"), qos=1, retain=True
        )
        raise _GracefulStop

    # -- logging of transitions --------------------------------------------------------

    def _error(self, exc: BaseException) -> BrokerError:
        return broker_error(exc, self._where)

    def _failed(self, exc: BaseException) -> None:
        message = str(self._error(exc))
        if message != self.last_error:
            log.warning("broker connect failed", error=message, attempt=self.connect_attempts)
        else:
            log.debug("broker connect failed again", attempt=self.connect_attempts)
        self.last_error = message

    def _lost(self, exc: BaseException) -> None:
        self.last_error = str(self._error(exc))
        log.warning("broker lost", broker=self._where, error=self.last_error)

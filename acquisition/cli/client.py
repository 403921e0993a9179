"""The terminal's connection to the daemon: MQTT v5 request/response and subscriptions.

A request goes to ``{prefix}/{node}/cmd`` with a ResponseTopic private to this terminal and
a random CorrelationData; the reply with the same CorrelationData resolves the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from acquisition.config import LabConfig
from acquisition.errors import BrokerError, CommandError
from acquisition.mqtt_params import client_kwargs
from acquisition.puback import PublishRefusedError, publish_checked, watch_puback_reasons

__all__ = ["DaemonClient", "NoReplyError"]

COMMAND_EXPIRY_S = 30


class NoReplyError(CommandError):
    """The daemon did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__("no_reply", message)


class DaemonClient:
    """``async with DaemonClient(config) as c: await c.request("status")``."""

    def __init__(self, config: LabConfig, *, timeout_s: float = 5.0) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self._client_id = f"assay-cli-{uuid.uuid4().hex[:10]}"
        self._reply_topic = config.topic("replies", self._client_id)
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._queues: list[tuple[str, asyncio.Queue[aiomqtt.Message | None]]] = []
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lost: BrokerError | None = None
        """Set once the broker connection is gone; every wait then ends with it."""

    async def __aenter__(self) -> DaemonClient:
        client = aiomqtt.Client(identifier=self._client_id, **client_kwargs(self.config.mqtt))
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            where = f"{self.config.mqtt.host}:{self.config.mqtt.port}"
            raise BrokerError(f"cannot reach the MQTT broker at {where}: {exc}") from exc
        self._client = client
        self._puback = watch_puback_reasons(client)
        await client.subscribe(self._reply_topic, qos=1)
        self._reader = asyncio.create_task(self._read(), name="cli-mqtt-reader")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    @property
    def client(self) -> aiomqtt.Client:
        assert self._client is not None, "use DaemonClient as an async context manager"
        return self._client

    async def _read(self) -> None:
        try:
            async for message in self.client.messages:
                topic = str(message.topic)
                if topic == self._reply_topic:
                    self._resolve(message)
                    continue
                for pattern, queue in self._queues:
                    if message.topic.matches(pattern):
                        queue.put_nowait(message)
        except aiomqtt.MqttError as exc:
            where = f"{self.config.mqtt.host}:{self.config.mqtt.port}"
            self.lost = BrokerError(f"lost the MQTT broker at {where}: {exc}")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(self.lost)
            for _, queue in self._queues:
                queue.put_nowait(None)  # wakes a consumer, which then sees self.lost

    def _resolve(self, message: aiomqtt.Message) -> None:
        corr = getattr(message.properties, "CorrelationData", None)
        fut = self._pending.pop(bytes(corr), None) if corr else None
        if fut is None or fut.done():
            return
        try:
            assert isinstance(message.payload, bytes | bytearray)
            fut.set_result(json.loads(message.payload))
        except (ValueError, AssertionError) as exc:
            fut.set_exception(CommandError("bad_reply", f"unreadable reply: {exc}"))

    async def request(self, verb: str, args: dict[str, Any] | None = None) -> Any:
        """Send one command; return its result or raise CommandError with the reply's code."""
        if self.lost is not None:
            raise self.lost
        corr = uuid.uuid4().bytes
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self._reply_topic
        props.CorrelationData = corr
        props.MessageExpiryInterval = COMMAND_EXPIRY_S
        body = {"schema": "assay.command/1", "verb": verb, "args": args or {}}
        try:
            await publish_checked(
                self.client, self._puback, self.config.topic("cmd"), json.dumps(body).encode(),
                qos=1, properties=props,
            )  # fmt: skip
        except aiomqtt.MqttError as exc:
            self._pending.pop(corr, None)
            raise BrokerError(f"could not send '{verb}' to the broker: {exc}") from exc
        except PublishRefusedError as exc:  # an ACL: this account may not send commands
            self._pending.pop(corr, None)
            user = self.config.mqtt.username or "anonymous"
            raise CommandError(
                "not_authorized",
                f"the broker refused '{verb}' from user '{user}' ({exc.reason}): this account "
                "may only read (ask for an operator account)",
            ) from exc
        try:
            reply = await asyncio.wait_for(fut, self.timeout_s)
        except TimeoutError as exc:
            raise NoReplyError(
                f"daemon '{self.config.node}' did not answer '{verb}' within {self.timeout_s:g} s"
                " (is assayd running? try `assay status`)"
            ) from exc
        finally:
            self._pending.pop(corr, None)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise CommandError(str(err.get("code", "error")), str(err.get("message", reply)))
        return reply.get("result")

    @contextlib.asynccontextmanager
    async def subscription(
        self, *patterns: str
    ) -> AsyncIterator[asyncio.Queue[aiomqtt.Message | None]]:
        """Messages on any of ``patterns`` (retained ones first), in arrival order."""
        queue: asyncio.Queue[aiomqtt.Message | None] = asyncio.Queue()
        entries = [(p, queue) for p in patterns]
        self._queues.extend(entries)
        try:
            for pattern in patterns:
                await self.client.subscribe(pattern, qos=1)
            yield queue
        finally:
            for entry in entries:
                self._queues.remove(entry)
            for pattern in patterns:
                with contextlib.suppress(aiomqtt.MqttError):
                    await self.client.unsubscribe(pattern)

    async def retained(self, topic: str, wait_s: float = 0.5) -> dict[str, Any] | None:
        """The retained JSON on one topic, or None if there is none."""
        async with self.subscription(topic) as queue:
            try:
                msg = await asyncio.wait_for(queue.get(), wait_s)
            except TimeoutError:
                return None
        if msg is None:
            raise self.lost or BrokerError("lost the MQTT broker")
        assert isinstance(msg.payload, bytes | bytearray)
        data: dict[str, Any] = json.loads(msg.payload)
        return data

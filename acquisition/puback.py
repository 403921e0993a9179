"""Failure PUBACKs made visible: a QoS1 publish the broker refused raises.

aiomqtt 2.5.1 wakes a waiting ``publish()`` on any PUBACK, whatever its reason code, so a
publish the broker refused (0x87 "not authorized" from an ACL, 0x97 "quota exceeded", ...)
returns as if it had been delivered. :func:`watch_puback_reasons` (once per client) and
:func:`publish_checked` (per publish) turn that into :class:`PublishRefusedError`. The
outbox uses it to keep refused rows; the bench terminal to say "not authorized" at once
instead of waiting for a reply that will never come.

:class:`PubackRouter` is the outbox drainer's way to publish: straight on aiomqtt's paho
client, each answer handed to a callback as it is read from the socket, with no task,
event or timer per message (aiomqtt's ``publish`` costs about as much as the rest of the
durable pipeline together).

aiomqtt has no public API for a publish's reason code, so this reads two of its internals;
pyproject.toml pins the exact aiomqtt it was written for, and tests/test_puback_internals.py
fails, naming what moved, when another version or changed internals are installed.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiomqtt
import paho.mqtt.client as paho_client
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "PubackRouter",
    "PubackWatch",
    "PublishRefusedError",
    "publish_checked",
    "watch_puback_reasons",
]

_T = TypeVar("_T")


class PublishRefusedError(Exception):
    """The broker answered a QoS1 publish with a failure PUBACK (reason code >= 0x80).

    Not an :class:`aiomqtt.MqttError`: the connection is fine, only this message was refused.
    """

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        self.topic = topic
        self.reason = reason
        self.code: int = reason.value
        super().__init__(f"broker refused publish on {topic!r}: {reason} (0x{self.code:02X})")


@dataclass
class PubackWatch:
    """What :func:`watch_puback_reasons` tracks for one client."""

    watched: set[int] = field(default_factory=set)  # mids of publishes made under _MIDS
    refused: dict[int, ReasonCode] = field(default_factory=dict)  # watched mid -> reason


# Set by publish_checked in its own task; the paho publish wrapper appends the mid.
_MIDS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "puback_publish_mids", default=None
)


def watch_puback_reasons(client: aiomqtt.Client) -> PubackWatch:
    """Make failure PUBACK reason codes visible (a hack on aiomqtt 2.5.1 internals).

    Two attributes of the paho client aiomqtt owns (``client._client``) are wrapped, once
    per client, before its first publish:

    * ``publish``: aiomqtt calls it synchronously inside ``Client.publish``, so in the
      caller's task: the mid is appended to that task's :data:`_MIDS` list, if it set one.
    * ``on_publish`` (aiomqtt's ``_on_publish``): for a watched mid whose reason code is a
      failure, the reason is recorded *before* aiomqtt's callback wakes the caller, so
      :func:`publish_checked` finds it as soon as ``publish()`` returns.

    Publishes made without :data:`_MIDS` (status, replies) are not tracked.
    """
    paho = client._client
    watch = PubackWatch()
    aiomqtt_on_publish: Any = paho.on_publish  # aiomqtt's _on_publish (callback API v2)
    paho_publish = paho.publish

    def on_publish(
        c: Any, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        if mid in watch.watched and reason_code.is_failure:
            watch.refused[mid] = reason_code
        aiomqtt_on_publish(c, userdata, mid, reason_code, properties)

    def publish(*args: Any, **kwargs: Any) -> Any:
        info = paho_publish(*args, **kwargs)
        mids = _MIDS.get()
        if mids is not None:
            mids.append(info.mid)
            watch.watched.add(info.mid)
        return info

    paho.on_publish = on_publish
    setattr(paho, "publish", publish)  # noqa: B010 (mypy: cannot assign to a method)
    return watch


async def publish_checked(
    client: aiomqtt.Client,
    watch: PubackWatch,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    properties: Any = None,
    timeout_s: float | None = None,
) -> None:
    """Publish; return once the broker accepted it (a success PUBACK for QoS1).

    Raises :class:`PublishRefusedError` for a failure PUBACK, MqttError as aiomqtt does.
    """
    mids: list[int] = []
    token = _MIDS.set(mids)
    kwargs: dict[str, Any] = {"qos": qos, "retain": retain, "properties": properties}
    if timeout_s is not None:
        kwargs["timeout"] = timeout_s
    try:
        await client.publish(topic, payload, **kwargs)
    finally:
        _MIDS.reset(token)
        watch.watched.difference_update(mids)
        reasons = [r for mid in mids if (r := watch.refused.pop(mid, None)) is not None]
    if reasons:
        raise PublishRefusedError(topic, reasons[0])


class PubackRouter(Generic[_T]):
    """Publishes on the paho client inside an aiomqtt client and routes each publish's
    answer to ``on_answer(token, reason_code)`` (a hack on aiomqtt 2.5.1 internals, like
    :func:`watch_puback_reasons`; tests/test_puback_internals.py guards them).

    :meth:`publish` hands the message to paho at once (paho writes it to the socket from
    aiomqtt's writer callback, in call order) and returns; when the broker's PUBACK (QoS1;
    for QoS0 the socket write) is read, ``on_answer`` runs synchronously inside paho's
    ``on_publish`` callback on the event loop, with the token given to ``publish``. It must
    not raise (paho would take the connection down). Every other publish of the client
    (aiomqtt's own: status, replies) goes on to aiomqtt's callback untouched. After
    :meth:`close`, answers are dropped: a publish not answered within its connection's life
    counts as not acknowledged. One router per client, installed before the first publish.
    """

    def __init__(self, client: aiomqtt.Client, on_answer: Callable[[_T, ReasonCode], None]) -> None:
        self._paho = client._client
        self._on_answer = on_answer
        self._tokens: dict[int, _T] = {}
        self._early: list[tuple[Any, ...]] | None = None  # answers during paho's publish()
        self._closed = False
        self._aiomqtt_on_publish: Any = self._paho.on_publish  # aiomqtt's _on_publish (API v2)
        self._paho.on_publish = self._on_publish

    def _on_publish(
        self, c: Any, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        if mid in self._tokens:
            token = self._tokens.pop(mid)
            if not self._closed:
                self._on_answer(token, reason_code)
        elif self._early is not None:  # perhaps the one being published: sorted out after
            self._early.append((c, userdata, mid, reason_code, properties))
        else:
            self._aiomqtt_on_publish(c, userdata, mid, reason_code, properties)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, token: _T) -> None:
        """Hand one message to paho; ``on_answer(token, ...)`` follows. Raises
        :class:`aiomqtt.MqttCodeError` if paho refuses it (not connected), as aiomqtt does."""
        early: list[tuple[Any, ...]] = []
        self._early = early
        try:
            info = self._paho.publish(topic, payload, qos, retain)
        finally:
            self._early = None
        ours = None
        for answer in early:  # none unless paho answered inside publish() (QoS0 written)
            if answer[2] == info.mid and ours is None:
                ours = answer[3]
            else:
                self._aiomqtt_on_publish(*answer)
        if info.rc != paho_client.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if ours is None:
            self._tokens[info.mid] = token
        elif not self._closed:
            self._on_answer(token, ours)

    def close(self) -> None:
        """Drop every answer from now on (the connection is over)."""
        self._closed = True
        self._tokens.clear()

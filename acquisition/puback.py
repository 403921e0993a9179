"""Failure PUBACKs made visible: a QoS1 publish the broker refused raises.

aiomqtt 2.5.1 wakes a waiting ``publish()`` on any PUBACK, whatever its reason code, so a
publish the broker refused (0x87 "not authorized" from an ACL, 0x97 "quota exceeded", ...)
returns as if it had been delivered. :func:`watch_puback_reasons` (once per client) and
:func:`publish_checked` (per publish) turn that into :class:`PublishRefusedError`. The
outbox uses it to keep refused rows; the bench terminal to say "not authorized" at once
instead of waiting for a reply that will never come.

aiomqtt has no public API for a publish's reason code, so this reads two of its internals;
pyproject.toml pins the exact aiomqtt it was written for, and tests/test_puback_internals.py
fails, naming what moved, when another version or changed internals are installed.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["PubackWatch", "PublishRefusedError", "publish_checked", "watch_puback_reasons"]


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

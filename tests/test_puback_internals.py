"""acquisition/puback.py makes failure PUBACKs visible by wrapping two attributes of the paho
client inside aiomqtt 2.5.1 (aiomqtt has no public API for a publish's reason code). It is
written for exactly that version, which pyproject.toml pins; this test fails loudly, naming
what moved, if another aiomqtt is installed or the internals it touches change. Then read
puback.py against the new aiomqtt before changing the pin."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho

PINNED = "2.5.1"


def test_aiomqtt_is_the_version_puback_was_written_for() -> None:
    assert version("aiomqtt") == PINNED, (
        f"aiomqtt {version('aiomqtt')} installed; acquisition/puback.py was written for "
        f"{PINNED}'s internals: check them, then move the pin in pyproject.toml")


async def test_the_internals_puback_wraps_are_where_it_expects_them() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)  # never connected: only its parts are read
    inner = client._client
    assert isinstance(inner, paho.Client), "aiomqtt.Client._client is no longer paho's Client"
    # aiomqtt sets its own on_publish callback (callback API v2: five arguments) ...
    callback = inner.on_publish
    assert callback is not None and callback.__func__ is aiomqtt.Client._on_publish  # type: ignore[attr-defined]
    assert list(inspect.signature(callback).parameters) == [
        "client", "userdata", "mid", "reason_code", "properties"]
    # ... and calls paho's publish synchronously inside its own publish(), in the caller's
    # task, before awaiting the acknowledgement: the mid is taken there.
    source = inspect.getsource(aiomqtt.Client.publish)
    assert "self._client.publish(" in source
    assert source.index("self._client.publish(") < source.index("await ")


def test_what_the_outbox_router_calls_on_paho_is_where_it_expects_it() -> None:
    """PubackRouter (the outbox drainer's publish path) calls paho's publish(topic, payload,
    qos, retain) itself, reads the returned info's ``rc`` and ``mid``, and relies on paho
    calling ``on_publish`` for a PUBACK before it forgets the message."""
    params = list(inspect.signature(paho.Client.publish).parameters)
    assert params[:5] == ["self", "topic", "payload", "qos", "retain"]
    info = paho.MQTTMessageInfo(7)
    assert info.mid == 7 and hasattr(info, "rc")
    source = inspect.getsource(paho.Client._handle_pubackcomp)
    assert "_do_on_publish(" in source
    assert "on_publish(" in inspect.getsource(paho.Client._do_on_publish)

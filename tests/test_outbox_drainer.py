"""The outbox drainer against a scripted paho client (no broker): the window, id order, a
row deleted only after its PUBACK, refusals, the publish timeout and late answers.

The drainer publishes through :class:`~acquisition.puback.PubackRouter`, which replaces the
paho client's ``on_publish``; the fake here has just what the router touches (``publish``
returning an info with ``rc`` and ``mid``, ``on_publish`` called with a PUBACK's reason code),
so each test decides when and how the "broker" answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from acquisition.journal import Journal, OutboxMessage
from acquisition.journal.outbox import OutboxDrainer
from drivers.backoff import Backoff

A, B = "assay/lab1/runs/a/events", "assay/lab1/runs/b/events"


@dataclass
class _Info:
    mid: int
    rc: int = 0


@dataclass
class FakePaho:
    sent: list[tuple[int, str, bytes]] = field(default_factory=list)
    passed_on: list[int] = field(default_factory=list)  # answers aiomqtt's callback got
    on_publish: Any = None
    _mid: int = 0

    def __post_init__(self) -> None:
        self.on_publish = lambda c, u, mid, rc, p: self.passed_on.append(mid)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> _Info:
        self._mid += 1
        self.sent.append((self._mid, topic, payload))
        return _Info(self._mid)

    def answer(self, mid: int, code: int = 0) -> None:
        self.on_publish(self, None, mid, ReasonCode(PacketTypes.PUBACK, identifier=code), None)


class FakeClient:
    def __init__(self) -> None:
        self._client = FakePaho()


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.005)


async def _rows(journal: Journal, topic: str, n: int, first: int = 1) -> None:
    await journal.enqueue([OutboxMessage(topic, f"{first + i}".encode()) for i in range(n)])


def _payloads(paho: FakePaho) -> list[bytes]:
    return [payload for _, _, payload in paho.sent]


async def test_the_window_fills_in_id_order_and_each_puback_sends_the_next(
    tmp_journal: Journal,
) -> None:
    await _rows(tmp_journal, A, 40)
    drainer = OutboxDrainer(tmp_journal, window=4, delete_pause_s=0.001)
    client = FakeClient()
    paho = client._client
    task = asyncio.create_task(drainer.run(cast(aiomqtt.Client, client)))
    try:
        await _until(lambda: len(paho.sent) == 4)
        await asyncio.sleep(0.05)
        assert len(paho.sent) == 4, "never more than the window in flight"
        paho.answer(paho.sent[0][0])  # in paho's callback, the next row goes out at once
        assert len(paho.sent) == 5
        while len(paho.sent) < 40 or drainer.published < 40:
            answered = drainer.published
            paho.answer(paho.sent[answered][0])
            await asyncio.sleep(0)
        async with asyncio.timeout(5):
            await drainer.wait_drained()
        assert _payloads(paho) == [f"{i}".encode() for i in range(1, 41)]
        assert await tmp_journal.outbox_size() == 0
        assert paho.passed_on == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_rows_committed_later_are_sent_as_they_come(tmp_journal: Journal) -> None:
    drainer = OutboxDrainer(tmp_journal, window=8)
    client = FakeClient()
    paho = client._client
    task = asyncio.create_task(drainer.run(cast(aiomqtt.Client, client)))
    try:
        for k in range(5):
            await _rows(tmp_journal, A, 3, first=3 * k + 1)
            drainer.notify()
            await _until(lambda k=k: len(paho.sent) == 3 * (k + 1))  # type: ignore[misc]
            for mid, _, _ in paho.sent[-3:]:
                paho.answer(mid)
        assert _payloads(paho) == [f"{i}".encode() for i in range(1, 16)]
        async with asyncio.timeout(5):
            await drainer.wait_drained()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_unanswered_publish_ends_the_session_and_is_sent_again(
    tmp_journal: Journal,
) -> None:
    await _rows(tmp_journal, A, 3)
    drainer = OutboxDrainer(tmp_journal, window=8, publish_timeout_s=0.2, poll_s=0.05)
    first = FakeClient()
    with pytest.raises(ExceptionGroup) as raised:  # the link's `except* MqttError` takes it
        async with asyncio.timeout(5):
            await drainer.run(cast(aiomqtt.Client, first))
    timed_out = raised.value.subgroup(aiomqtt.MqttError)
    assert timed_out is not None and "timed out" in str(timed_out.exceptions[0])
    assert await tmp_journal.outbox_size() == 3
    # The broker's answer arriving after the session ended acknowledges nothing.
    first._client.answer(first._client.sent[0][0])
    assert drainer.published == 0
    second = FakeClient()
    task = asyncio.create_task(drainer.run(cast(aiomqtt.Client, second)))
    try:
        await _until(lambda: len(second._client.sent) == 3)
        assert _payloads(second._client) == _payloads(first._client) == [b"1", b"2", b"3"]
        for mid, _, _ in second._client.sent:
            second._client.answer(mid)
        async with asyncio.timeout(5):
            await drainer.wait_drained()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_refused_row_stays_its_topic_waits_and_the_probe_reopens_it(
    tmp_journal: Journal,
) -> None:
    await _rows(tmp_journal, A, 1)
    await _rows(tmp_journal, B, 1, first=101)
    await _rows(tmp_journal, A, 1, first=2)
    await _rows(tmp_journal, B, 1, first=102)
    backoff = Backoff(base_s=0.05, factor=2.0, cap_s=0.1)
    drainer = OutboxDrainer(tmp_journal, window=1, refused_backoff=backoff, poll_s=0.02)
    client = FakeClient()
    paho = client._client
    task = asyncio.create_task(drainer.run(cast(aiomqtt.Client, client)))
    try:
        await _until(lambda: len(paho.sent) == 1)
        paho.answer(paho.sent[0][0], code=0x87)  # A's first row: not authorized
        assert _payloads(paho) == [b"1", b"101"], "B flows while A is held"
        paho.answer(paho.sent[1][0])
        assert _payloads(paho) == [b"1", b"101", b"102"], "A's next row waits behind the hold"
        paho.answer(paho.sent[2][0])
        assert drainer.refused == 1 and drainer.published == 2
        await _until(lambda: len(paho.sent) == 4)  # after the backoff: the probe
        assert paho.sent[3][2] == b"1"
        paho.answer(paho.sent[3][0])  # accepted: the rest of the topic follows, in order
        await _until(lambda: len(paho.sent) == 5)
        paho.answer(paho.sent[4][0])
        a_rows = [p for _, topic, p in paho.sent if topic == A]
        b_rows = [p for _, topic, p in paho.sent if topic == B]
        assert a_rows == [b"1", b"1", b"2"], "the probe, then the rest of the topic, in order"
        assert b_rows == [b"101", b"102"]
        async with asyncio.timeout(5):
            await drainer.wait_drained()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_router_sorts_answers_given_inside_publish_and_passes_on_the_rest() -> None:
    """paho answers inside ``publish()`` only when it writes at once (QoS0 on an unregistered
    socket); the router then still hands the answer to its own token, and any other
    client's publish (aiomqtt's: status, replies) goes on to aiomqtt's callback."""
    from acquisition.puback import PubackRouter

    client = FakeClient()
    paho = client._client
    answers: list[tuple[str, int]] = []
    router: PubackRouter[str] = PubackRouter(
        cast(aiomqtt.Client, client), lambda token, rc: answers.append((token, rc.value))
    )
    publish = paho.publish

    def publish_and_answer_at_once(topic: str, payload: bytes, qos: int, retain: bool) -> _Info:
        info = publish(topic, payload, qos, retain)
        paho.answer(999)  # someone else's (aiomqtt's) publish, answered meanwhile
        paho.answer(info.mid)
        return info

    paho.publish = publish_and_answer_at_once  # type: ignore[method-assign]
    router.publish("t", b"x", 0, False, "first")
    paho.publish = publish  # type: ignore[method-assign]
    router.publish("t", b"y", 1, False, "second")
    paho.answer(77)
    assert answers == [("first", 0)] and paho.passed_on == [999, 77]
    paho.answer(paho.sent[-1][0], code=0x87)
    assert answers == [("first", 0), ("second", 0x87)]
    router.close()
    router.publish("t", b"z", 1, False, "third")
    paho.answer(paho.sent[-1][0])
    assert answers[-1][0] == "second", "answers after close are dropped"

"""MqttLink against a real Mosquitto: ordering, no loss across broker death, status, replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs

from acquisition.config import LabConfig
from acquisition.errors import JournalError
from acquisition.journal import Journal, OutboxMessage
from acquisition.mqtt_link import MAX_PACKET_BYTES, MAX_QUEUED_INCOMING, MqttLink
from acquisition.payloads import DaemonStatus
from devtools.mosquitto import MosquittoBroker
from drivers.backoff import Backoff
from drivers.clock import VirtualClock

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
WAIT_S = 60.0  # generous: 2 cores shared with other test runs


def status_payloads(cfg: LabConfig) -> tuple[Callable[[], bytes], Callable[[str], bytes]]:
    def online() -> bytes:
        return DaemonStatus(
            node=cfg.node, state="online", version="test", pid=os.getpid(), ts=datetime.now(UTC)
        ).model_dump_json(by_alias=True).encode()

    def offline(reason: str) -> bytes:
        return DaemonStatus(
            node=cfg.node, state="offline", version="test", ts=datetime.now(UTC), reason=reason
        ).model_dump_json(by_alias=True).encode()

    return online, offline


async def _ignore(_: aiomqtt.Message) -> None:
    return None


def make_link(
    cfg: LabConfig,
    journal: Journal,
    *,
    on_command: Callable[[aiomqtt.Message], Awaitable[None]] = _ignore,
    **kwargs: Any,
) -> MqttLink:
    online, offline = status_payloads(cfg)
    return MqttLink(
        cfg, journal, on_command=on_command, status_online=online, status_offline=offline, **kwargs
    )


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run(), name="link-run")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def subscriber(
    broker: MosquittoBroker, *topics: str, **kwargs: Any
) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, **kwargs
    ) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def collect(
    client: aiomqtt.Client, until: Callable[[aiomqtt.Message], bool], timeout_s: float = WAIT_S
) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            got.append(message)
            if until(message):
                return got
    raise AssertionError("the subscriber disconnected")


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.01)


def doc(run: str, seq: int) -> bytes:
    return json.dumps({"id": f"{run}-{seq}", "run": run, "seq": seq}).encode()


async def append_docs(
    journal: Journal, link: MqttLink, cfg: LabConfig, run: str, seqs: range
) -> str:
    topic = cfg.topic("runs", run, "events")
    for seq in seqs:
        payload = doc(run, seq)
        await journal.append(
            run, seq, f"{run}-{seq}", "data", payload, outbox=[OutboxMessage(topic, payload)]
        )
        link.notify()
    return topic


def payload_json(message: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(message.payload, bytes)
    data: dict[str, Any] = json.loads(message.payload)
    return data


async def test_500_documents_arrive_in_order_exactly_once(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_journal: Journal
) -> None:
    cfg = lab_config(broker)
    link = make_link(cfg, tmp_journal)
    events = cfg.topic("runs", "r1", "events")
    await tmp_journal.create_run("r1", "p", {}, T0)
    async with subscriber(broker, events) as sub, running(link):
        assert await link.wait_connected(WAIT_S)
        await append_docs(tmp_journal, link, cfg, "r1", range(1, 501))
        # A sentinel after the last document: anything duplicated would arrive before it.
        await tmp_journal.enqueue([OutboxMessage(events, b'{"sentinel": true}')])
        link.notify()
        got = await collect(sub, lambda m: "sentinel" in payload_json(m))
        await link.shutdown(timeout_s=WAIT_S)
    seqs = [payload_json(m)["seq"] for m in got[:-1]]
    assert seqs == list(range(1, 501))
    assert all(m.qos == 1 for m in got)
    assert await tmp_journal.outbox_size() == 0


async def test_outbox_rows_survive_a_dead_broker_and_go_out_after_restart(
    own_broker: Callable[..., MosquittoBroker],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
) -> None:
    b = own_broker()
    cfg = lab_config(b)
    clock = VirtualClock()  # the reconnect backoff waits until the test moves time
    link = make_link(cfg, tmp_journal, clock=clock)
    await tmp_journal.create_run("r1", "p", {}, T0)
    async with running(link):
        assert await link.wait_connected(WAIT_S)
        await b.akill()

        async def disconnected() -> bool:
            return not link.connected

        await eventually(disconnected)
        topic = await append_docs(tmp_journal, link, cfg, "r1", range(1, 21))
        assert await tmp_journal.outbox_size() == 20, "nothing leaves the outbox unacknowledged"
        assert link.last_error is not None and f"127.0.0.1:{b.port}" in link.last_error
        await b.astart()  # same port
        async with subscriber(b, topic) as sub:
            clock.advance(3600)
            assert await link.wait_connected(WAIT_S)
            got = await collect(sub, lambda m: payload_json(m)["seq"] == 20)
        await link.shutdown(timeout_s=WAIT_S)
    assert [payload_json(m)["seq"] for m in got] == list(range(1, 21))
    assert await tmp_journal.outbox_size() == 0


async def test_broker_sigkilled_mid_stream_loses_no_document(
    own_broker: Callable[..., MosquittoBroker],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 400
    b = own_broker(persistence=True)
    cfg = lab_config(b, publish_window=16)
    link = make_link(cfg, tmp_journal)
    topic = cfg.topic("runs", "r1", "events")
    received: dict[int, set[bytes]] = {}
    subscribed = asyncio.Event()
    sentinel_seen = asyncio.Event()
    killed = asyncio.Event()

    def on_message(message: aiomqtt.Message) -> None:
        data = payload_json(message)
        if "sentinel" in data:
            sentinel_seen.set()
            return
        assert isinstance(message.payload, bytes)
        received.setdefault(data["seq"], set()).add(message.payload)
        if data["seq"] == 60 and not killed.is_set():
            killed.set()

    async def persistent_subscriber() -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        while True:
            try:
                async with aiomqtt.Client(
                    b.host, b.port, identifier=unique("sub"), protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False, properties=props, timeout=5,
                ) as client:  # fmt: skip
                    await client.subscribe(topic, qos=1)
                    subscribed.set()
                    async for message in client.messages:
                        on_message(message)
            except aiomqtt.MqttError:
                subscribed.clear()
                await asyncio.sleep(0.05)  # reconnect pace of this test client

    await tmp_journal.create_run("r1", "p", {}, T0)
    # Half the documents wait in the outbox before the link starts, so the broker holds a
    # backlog for the subscriber when it dies; the other half are appended while it streams.
    await append_docs(tmp_journal, link, cfg, "r1", range(1, total // 2 + 1))
    async with asyncio.TaskGroup() as tg, running(link):
        sub_task = tg.create_task(persistent_subscriber())
        await asyncio.wait_for(subscribed.wait(), WAIT_S)
        producer = tg.create_task(
            append_docs(tmp_journal, link, cfg, "r1", range(total // 2 + 1, total + 1))
        )
        await asyncio.wait_for(killed.wait(), WAIT_S)
        await b.arestart(hard=True)  # SIGKILL mid-stream, then the same port again
        at_kill = (link.published, len(received))
        await producer
        await eventually(lambda: _empty(tmp_journal))
        await asyncio.wait_for(subscribed.wait(), WAIT_S)
        await tmp_journal.enqueue([OutboxMessage(topic, b'{"sentinel": true}')])
        link.notify()
        await asyncio.wait_for(sentinel_seen.wait(), WAIT_S)
        sub_task.cancel()
    for seq, payloads in received.items():
        assert payloads == {doc("r1", seq)}, "a duplicate must be the same document"
    missing = sorted(set(range(1, total + 1)) - set(received))
    if missing:
        # Mosquitto acknowledged these (PUBACK -> outbox row deleted) but died before
        # delivering them, and SIGKILL loses its unsaved in-memory state. The journal is the
        # source of truth: heal the gap from it, as a consumer does with `replay`.
        healed = await tmp_journal.documents("r1", missing[0], missing[-1])
        by_seq = {json.loads(p)["seq"]: p for p in healed}
        for seq in missing:
            received[seq] = {by_seq[seq]}
        with capsys.disabled():
            print(
                f"\n[healed from the journal] {len(missing)} documents acknowledged by Mosquitto"
                f" but lost in its SIGKILL: seq {missing[0]}..{missing[-1]}"
            )
    duplicates = sum(1 for seq in received if seq not in missing) and link.published - total
    with capsys.disabled():
        print(
            f"\n[broker SIGKILL] at the kill: {at_kill[0]} acked by the broker, {at_kill[1]}"
            f" delivered; {link.connect_attempts} link connects, {len(missing)} healed,"
            f" {max(0, duplicates)} resent by the outbox"
        )
    assert link.connect_attempts >= 2, "the link must have reconnected after the kill"
    assert sorted(received) == list(range(1, total + 1))
    assert link.published >= total


async def _empty(journal: Journal) -> bool:
    return await journal.outbox_size() == 0


async def test_status_is_retained_online_and_offline_on_graceful_shutdown(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_journal: Journal
) -> None:
    cfg = lab_config(broker)
    link = make_link(cfg, tmp_journal)
    status = cfg.topic("status")
    await tmp_journal.create_run("r1", "p", {}, T0)
    async with running(link) as task:
        assert await link.wait_connected(WAIT_S)
        async with subscriber(broker, status) as late:  # subscribes after: gets the retained one
            [online] = await collect(late, lambda m: True)
        assert online.retain and payload_json(online)["state"] == "online"
        async with subscriber(broker, status) as watcher:
            await collect(watcher, lambda m: True)  # the retained 'online'
            async with subscriber(broker, cfg.topic("runs", "r1", "events")) as docs:
                await append_docs(tmp_journal, link, cfg, "r1", range(1, 51))
                await link.shutdown(timeout_s=WAIT_S)
                assert task.done() and not task.cancelled(), "run() returns after shutdown"
                got = await collect(docs, lambda m: payload_json(m)["seq"] == 50)
            [offline] = await collect(watcher, lambda m: True)
            assert payload_json(offline)["state"] == "offline"
            assert payload_json(offline)["reason"] == "shutdown"
            # A clean DISCONNECT suppresses the will: nothing else arrives before a sentinel.
            await watcher.publish(status + "/sentinel", b"x", qos=1)
            await watcher.subscribe(status + "/sentinel", qos=1)
            await watcher.publish(status + "/sentinel", b"x", qos=1)
            after = await collect(watcher, lambda m: m.topic.matches(status + "/sentinel"))
            assert [m.topic.value for m in after] == [status + "/sentinel"]
    assert len(got) == 50 and await tmp_journal.outbox_size() == 0
    assert not link.connected
    async with subscriber(broker, status) as fresh:
        [retained] = await collect(fresh, lambda m: True)
    assert payload_json(retained)["reason"] == "shutdown"


_DAEMON = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from acquisition.config import JournalConfig, LabConfig, MqttConfig
    from acquisition.journal import Journal
    from acquisition.mqtt_link import MAX_PACKET_BYTES, MAX_QUEUED_INCOMING, MqttLink

    async def main() -> None:
        host, port, node, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
        cfg = LabConfig(node=node, mqtt=MqttConfig(host=host, port=port),
                        journal=JournalConfig(path=path))
        journal = await Journal.open(path)

        async def ignore(message): ...

        link = MqttLink(
            cfg, journal, on_command=ignore,
            status_online=lambda: json.dumps({"state": "online"}).encode(),
            status_offline=lambda why: json.dumps({"state": "offline", "reason": why}).encode(),
        )
        task = asyncio.create_task(link.run())
        await link.wait_connected()
        print("connected", flush=True)
        await task

    asyncio.run(main())
    """
)


async def test_last_will_marks_offline_when_the_daemon_process_dies(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_path: Path
) -> None:
    cfg = lab_config(broker)
    status = cfg.topic("status")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    async with subscriber(broker, status) as watcher:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _DAEMON, broker.host, str(broker.port), cfg.node,
            str(tmp_path / "daemon.sqlite3"), stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(WAIT_S):
                while (line := await proc.stdout.readline()) and line.strip() != b"connected":
                    pass  # structlog's default output (broker connected) goes to stdout too
            assert line.strip() == b"connected"
            [online] = await collect(watcher, lambda m: True)
            assert payload_json(online)["state"] == "online"
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        [will] = await collect(watcher, lambda m: True)
    assert payload_json(will) == {"state": "offline", "reason": "connection lost"}
    async with subscriber(broker, status) as fresh:
        [retained] = await collect(fresh, lambda m: True)
    assert retained.retain and payload_json(retained)["reason"] == "connection lost"


async def test_cancelled_link_disconnects_with_its_will(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_journal: Journal
) -> None:
    cfg = lab_config(broker)
    link = make_link(cfg, tmp_journal)
    async with subscriber(broker, cfg.topic("status")) as watcher:
        async with running(link):
            assert await link.wait_connected(WAIT_S)
            [online] = await collect(watcher, lambda m: True)
        [offline] = await collect(watcher, lambda m: True)
    assert payload_json(online)["state"] == "online"
    assert payload_json(offline)["reason"] == "connection lost"


async def test_reply_carries_correlation_data_and_expiry(
    broker: MosquittoBroker,
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
    unique: Callable[[str], str],
) -> None:
    cfg = lab_config(broker)
    link = make_link(cfg, tmp_journal)
    reply_topic = f"replies/{unique('cli')}"
    with capture_logs() as logs:
        await link.reply(reply_topic, b"lost", correlation_data=b"c0", expiry_s=30)
    assert any(e["event"] == "reply dropped: broker not connected" for e in logs)
    async with subscriber(broker, reply_topic) as cli, running(link):
        assert await link.wait_connected(WAIT_S)
        await link.reply(reply_topic, b'{"ok": true}', correlation_data=b"corr-1", expiry_s=30)
        await link.reply(reply_topic, b'{"ok": 2}', correlation_data=None, expiry_s=None)
        first, second = await collect(cli, lambda m: m.payload == b'{"ok": 2}')
    assert first.payload == b'{"ok": true}' and first.qos == 1
    assert first.properties is not None
    assert first.properties.CorrelationData == b"corr-1"
    assert 28 <= first.properties.MessageExpiryInterval <= 30
    assert second.properties is None or not hasattr(second.properties, "CorrelationData")
    assert await tmp_journal.outbox_size() == 0, "replies are not journaled"


async def test_commands_run_concurrently_and_a_failing_handler_does_not_kill_the_link(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_journal: Journal
) -> None:
    cfg = lab_config(broker)
    seen: list[bytes] = []
    release = asyncio.Event()
    done = asyncio.Event()

    async def on_command(message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        seen.append(message.payload)
        if message.payload == b"boom":
            raise RuntimeError("handler bug")
        if message.payload == b"slow":
            await release.wait()  # only the later 'fast' command can release it
            done.set()
        if message.payload == b"fast":
            release.set()

    link = make_link(cfg, tmp_journal, on_command=on_command)
    with capture_logs() as logs:
        async with subscriber(broker) as cli, running(link):
            assert await link.wait_connected(WAIT_S)
            for payload in (b"boom", b"slow", b"fast"):
                await cli.publish(cfg.topic("cmd"), payload, qos=1)
            await asyncio.wait_for(done.wait(), WAIT_S)
            assert link.connected
    assert seen == [b"boom", b"slow", b"fast"]
    failures = [e for e in logs if e["event"] == "command handler failed"]
    assert len(failures) == 1 and failures[0]["log_level"] == "error"


async def test_a_journal_failure_ends_run_with_the_journal_error(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_path: Path
) -> None:
    cfg = lab_config(broker)
    journal = await Journal.open(tmp_path / "j.sqlite3")
    link = make_link(cfg, journal)
    task = asyncio.create_task(link.run())
    assert await link.wait_connected(WAIT_S)
    await journal.close()
    link.notify()
    with pytest.raises(JournalError, match="closed"):
        await asyncio.wait_for(task, WAIT_S)
    assert not link.connected


def is_doc(run: str, seq: int) -> Callable[[aiomqtt.Message], bool]:
    return lambda m: (payload_json(m)["run"], payload_json(m)["seq"]) == (run, seq)


def _acl_for(node: str, *, denied_run: str | None) -> str:
    """assayd may use its status, cmd and run topics, except those of ``denied_run``."""
    lines = [
        "user assayd",
        f"topic readwrite assay/{node}/status",
        f"topic readwrite assay/{node}/cmd",
    ]
    lines += [f"topic readwrite assay/{node}/runs/{run}/#" for run in ("good", "bad")
              if run != denied_run]  # fmt: skip
    lines += ["", "user reader", "topic read assay/#", ""]
    return "\n".join(lines)


async def test_a_refused_publish_stays_in_the_outbox_and_other_topics_keep_flowing(
    own_broker: Callable[..., MosquittoBroker],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
    unique: Callable[[str], str],
) -> None:
    node = unique("acl")
    b = own_broker(users={"assayd": "pw-a", "reader": "pw-r"}, acl=_acl_for(node, denied_run="bad"))
    cfg = lab_config(b, node=node, username="assayd", password="pw-a", publish_window=4)
    fast = Backoff(base_s=0.05, factor=2.0, cap_s=0.2)
    link = make_link(cfg, tmp_journal, refused_backoff=fast)
    for run in ("bad", "good"):
        await tmp_journal.create_run(run, "p", {}, T0)
    good, bad = cfg.topic("runs", "good", "events"), cfg.topic("runs", "bad", "events")
    with capture_logs() as logs:
        async with (
            subscriber(b, good, bad, username="reader", password="pw-r") as sub,
            running(link),
        ):
            assert await link.wait_connected(WAIT_S), link.last_error
            # Refused rows first, so the allowed ones queue up behind them in id order.
            await append_docs(tmp_journal, link, cfg, "bad", range(1, 6))
            await append_docs(tmp_journal, link, cfg, "good", range(1, 11))
            await append_docs(tmp_journal, link, cfg, "bad", range(6, 9))
            got_good = await collect(sub, is_doc("good", 10))

            async def retried_twice() -> bool:
                return link.refused >= 8 + 2  # every bad row once, then probes

            await eventually(retried_twice)
            assert link.connected, "a refusal is not a connection failure"
            rows = await tmp_journal.outbox_after(0, 100)
            assert [r.topic for r in rows] == [bad] * 8, "refused rows are never deleted"
            assert [json.loads(r.payload)["seq"] for r in rows] == list(range(1, 9))
            assert await tmp_journal.outbox_size() == 8

            # The operator fixes the ACL (Mosquitto re-reads it on SIGHUP): the next probe
            # is accepted and the held rows follow, in order, exactly once.
            await asyncio.to_thread(b.reload, acl=_acl_for(node, denied_run=None))
            got_bad = await collect(sub, is_doc("bad", 8))
            await eventually(lambda: _empty(tmp_journal))
            await link.shutdown(timeout_s=WAIT_S)
    assert [payload_json(m)["seq"] for m in got_good] == list(range(1, 11))
    assert [(payload_json(m)["run"], payload_json(m)["seq"]) for m in got_bad] == [
        ("bad", seq) for seq in range(1, 9)
    ], "the refused topic's rows arrive in order, none twice"
    refusals = [e for e in logs if e["event"].startswith("broker refused a publish:")]
    assert len(refusals) == 1, "one error per topic per connection, not one per retry"
    assert refusals[0]["log_level"] == "error"
    assert refusals[0]["topic"] == bad and refusals[0]["reason_code"] == "0x87"
    assert "authori" in refusals[0]["reason"].lower()


async def test_commands_above_the_max_packet_size_never_reach_the_daemon(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_journal: Journal
) -> None:
    cfg = lab_config(broker)
    sizes: list[int] = []
    done = asyncio.Event()

    async def on_command(message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        sizes.append(len(message.payload))
        if message.payload == b"done":
            done.set()

    link = make_link(cfg, tmp_journal, on_command=on_command)
    async with subscriber(broker) as cli, running(link):
        assert await link.wait_connected(WAIT_S)
        assert link._client is not None
        assert link._client._queue.maxsize == MAX_QUEUED_INCOMING, "bounded inbound queue"
        for size in (MAX_PACKET_BYTES + 1024, 1024 * 1024):
            await cli.publish(cfg.topic("cmd"), b"x" * size, qos=1)
        await cli.publish(cfg.topic("cmd"), b"done", qos=1)
        await asyncio.wait_for(done.wait(), WAIT_S)
        assert link.connected
    # The broker dropped the oversized one (the daemon's CONNECT set MaximumPacketSize);
    # a 1 MiB command still arrives, for the command layer to answer "too_large".
    assert sizes == [1024 * 1024, 4]

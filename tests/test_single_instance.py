"""One daemon per node and per journal (issue 9).

With real processes (``assayd``, ``assay-sim bench``) and a real Mosquitto: a second
daemon of a node that is online refuses to start (exit 2, one line) and the first never
notices; with ``--takeover`` the first is told and stops (exit 2, no reconnect loop), its
run interrupted as at SIGTERM; a second daemon on one journal refuses (exit 2, naming the
first's pid). Plus the pure rules (stale status, the journal lock) in-process, and the
broker's DISCONNECT 0x8E "Session taken over", which the Mosquitto installed here (2.0.11)
does not send (it came with 2.0.15): a minimal fake broker sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from acquisition.cli.client import DaemonClient
from acquisition.config import LabConfig, load_config
from acquisition.errors import InstanceError
from acquisition.instance import (
    Identity,
    JournalLock,
    Rival,
    claim_node,
    live_rival,
    stale_reason,
)
from acquisition.journal import Journal
from acquisition.mqtt_link import MqttLink
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, LabFiles, SimBenchProcess, write_lab_config
from drivers.clock import VirtualClock

T0 = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
TIMEOUT_S = 30.0  # a safety net on a loaded machine, never the expected wait


def _me(**overrides: Any) -> Identity:
    fields: dict[str, Any] = {
        "instance": "i-me", "host": "pc1", "pid": 1000, "boot_id": "boot-1", "started_at": T0,
    }  # fmt: skip
    return Identity(**{**fields, **overrides})


def _status(state: str = "online", **fields: Any) -> bytes:
    base = {"schema": "assay.status/1", "node": "lab1", "state": state, "version": "0",
            "ts": T0.isoformat(), "instance": "i-other", "host": "pc1", "pid": 2000,
            "boot_id": "boot-1", "started_at": T0.isoformat()}  # fmt: skip
    return json.dumps({**base, **fields}).encode()


# ------------------------------------------------------------------ the pure rules


def test_an_online_status_of_another_instance_is_a_rival() -> None:
    me = _me()
    rival = live_rival(_status(host="pc2"), me)  # another PC: cannot be proven stale
    assert rival is not None and rival.pid == 2000 and rival.host == "pc2"
    assert "pid 2000 on host pc2" in rival.describe()
    assert live_rival(_status(pid=os.getpid(), host=me.host), _me(pid=1)) is not None
    # an older daemon's status, without an instance id, still counts
    old = json.dumps({"state": "online", "node": "lab1", "version": "0", "ts": "x"}).encode()
    assert live_rival(old, me) is not None


@pytest.mark.parametrize(
    "payload",
    [_status("offline"), _status(instance="i-me"), b"not json", b"[1]", b""],
    ids=["offline", "ourselves", "garbage", "not-an-object", "empty"],
)
def test_offline_our_own_or_unreadable_statuses_are_no_rival(payload: bytes) -> None:
    assert live_rival(payload, _me()) is None


def test_a_status_from_this_pc_whose_daemon_is_gone_is_stale() -> None:
    me = _me()
    other = Rival("i-other", "pc1", 2000, "boot-1", None)
    assert stale_reason(other, me, running=lambda pid: True) is None  # alive: a rival
    assert stale_reason(other, me, running=lambda pid: False) == "pid 2000 is not running"
    rebooted = Rival("i-other", "pc1", 2000, "boot-0", None)
    assert stale_reason(rebooted, me, running=lambda pid: True) == "this PC has rebooted since"
    reused = Rival("i-other", "pc1", 1000, "boot-1", None)
    assert stale_reason(reused, me, running=lambda pid: True) == "pid 1000 is this process now"
    elsewhere = Rival("i-other", "pc2", 2000, "boot-0", None)
    assert stale_reason(elsewhere, me, running=lambda pid: False) is None


def test_the_journal_lock_is_held_once_and_names_its_holder(tmp_path: Path) -> None:
    journal = tmp_path / "j" / "journal.sqlite3"
    first = JournalLock.acquire(journal, _me(pid=4321), "lab1")
    try:
        assert first.path == tmp_path / "j" / "journal.sqlite3.lock"
        with pytest.raises(InstanceError) as refused:
            JournalLock.acquire(journal, _me(pid=5555), "lab2")
        assert f"journal {journal} is in use by another assayd (pid 4321, node lab1" in str(
            refused.value
        )
    finally:
        first.release()
    second = JournalLock.acquire(journal, _me(pid=5555), "lab2")  # free again
    second.release()


async def test_the_start_up_check_waits_for_a_broker_that_refuses_until_stopped(
    own_broker: Callable[..., MosquittoBroker], lab_config: Callable[..., LabConfig]
) -> None:
    broker = own_broker(users={"assayd": "right"})
    cfg = lab_config(broker, username="assayd", password="wrong")
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(
            claim_node(cfg, _me(), online=_status, takeover=False, stopped=stop)
        )
        async with asyncio.timeout(TIMEOUT_S):
            while not logs:
                await asyncio.sleep(0.01)
        stop.set()
        assert await asyncio.wait_for(task, TIMEOUT_S) is False
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["error"] == (
        f"broker 127.0.0.1:{broker.port} refused the connection: not authorised"
        " (check mqtt.username and mqtt.password)"
    )
    assert "wrong" not in str(logs)


# --------------------------------------------------------- DISCONNECT 0x8E (fake broker)


async def _read_packet(reader: asyncio.StreamReader) -> int:
    """One MQTT packet; its type (high nibble of the first byte)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    await reader.readexactly(length)
    return first >> 4


async def test_a_session_taken_over_disconnect_stops_the_link_without_reconnecting(
    lab_config: Callable[..., LabConfig], tmp_journal: Journal
) -> None:
    """A v5 broker that hands the session to another client sends DISCONNECT 0x8E."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            assert await _read_packet(reader) == 1  # CONNECT
            writer.write(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # CONNACK, success
            while await _read_packet(reader) != 8:  # until the first SUBSCRIBE
                pass
            writer.write(bytes([0xE0, 0x02, 0x8E, 0x00]))  # DISCONNECT, Session taken over
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = lab_config(host="127.0.0.1", port=port)

    async def ignore(_: aiomqtt.Message) -> None:
        return None

    link = MqttLink(
        cfg, tmp_journal, on_command=ignore, status_online=_status,
        status_offline=lambda reason: _status("offline", reason=reason),
    )  # fmt: skip
    try:
        with pytest.raises(InstanceError, match="0x8E Session taken over") as stopped:
            await asyncio.wait_for(link.run(), TIMEOUT_S)
        assert "stopping instead of reconnecting" in str(stopped.value)
        assert connections == 1 and link.connect_attempts == 1
    finally:
        server.close()
        await server.wait_closed()


# ------------------------------------- a link dropped for another daemon (Mosquitto 2.0.11)


async def _ignore(_: aiomqtt.Message) -> None:
    return None


async def test_a_link_dropped_for_another_daemon_stops_at_the_reconnect_without_online(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig], tmp_journal: Journal
) -> None:
    """Mosquitto 2.0.11 closes the connection it hands to a newer client with the same id
    without a word; the link reconnects (taking the session back), reads the retained
    status, finds the other daemon's ``online`` and stops before publishing its own."""
    cfg = lab_config(broker)
    me = await asyncio.to_thread(Identity.current, T0)
    mine = {"node": cfg.node, "instance": me.instance, "host": me.host, "pid": me.pid}
    other = _status(node=cfg.node, instance="i-other", host="pc-2", pid=99)

    def rival(payload: bytes) -> str | None:
        found = live_rival(payload, me)
        return found.describe() if found is not None else None

    clock = VirtualClock()  # the reconnect waits until the test moves time
    link = MqttLink(
        cfg, tmp_journal, on_command=_ignore, status_online=lambda: _status(**mine),
        status_offline=lambda reason: _status("offline", reason=reason, **mine),
        rival=rival, clock=clock,
    )  # fmt: skip
    task = asyncio.create_task(link.run(), name="link-run")
    try:
        assert await link.wait_connected(TIMEOUT_S)
        impostor = aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5,
            identifier=link.client_id,
        )  # fmt: skip
        await impostor.__aenter__()
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while link.connected:
                    await asyncio.sleep(0.01)
            await impostor.publish(cfg.topic("status"), other, qos=1, retain=True)
            clock.advance(3600)  # the reconnect
            with pytest.raises(InstanceError, match="another assayd is online") as stopped:
                await asyncio.wait_for(task, TIMEOUT_S)
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await impostor.__aexit__(None, None, None)
        assert "assayd pid 99 on host pc-2" in str(stopped.value)
        assert link.connect_attempts == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, InstanceError):
            await task
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as reader:
        await reader.subscribe(cfg.topic("status"), qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            async for message in reader.messages:
                assert message.payload == other  # neither our online nor our will
                break


# ----------------------------------------------------------------- real processes


def _lab(workdir: Path, broker: MosquittoBroker, node: str, **kwargs: Any) -> LabFiles:
    return write_lab_config(workdir, broker_port=broker.port, node=node, kinds=(), **kwargs)


@contextlib.contextmanager
def _daemon(lab: LabFiles, *args: str) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(lab, *args)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _log_events(daemon: DaemonProcess) -> list[dict[str, Any]]:
    events = []
    for line in daemon.output().splitlines():
        with contextlib.suppress(ValueError):
            if isinstance(record := json.loads(line), dict):
                events.append(record)
    return events


def _count(daemon: DaemonProcess, event: str) -> int:
    return sum(1 for e in _log_events(daemon) if e.get("event") == event)


async def _retained_status(lab: LabFiles) -> dict[str, Any] | None:
    async with DaemonClient(load_config(lab.config_path)) as client:
        return await client.retained(client.config.topic("status"), wait_s=2.0)


def _node(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


@pytest.mark.slow
async def test_a_second_daemon_of_an_online_node_refuses_and_the_first_never_notices(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    node = _node("twin")
    first_lab = _lab(tmp_path / "first", broker, node)
    second_lab = _lab(tmp_path / "second", broker, node)  # its own journal
    with _daemon(first_lab) as first:
        status = await _retained_status(first_lab)
        assert status is not None and status["pid"] == first.pid, status
        second = DaemonProcess(second_lab)
        code = await asyncio.to_thread(second.run_to_exit, TIMEOUT_S)
        assert code == 2, second.output()
        lines = second.output().splitlines()
        assert len(lines) == 1, lines
        (line,) = lines
        assert line.startswith(f"assayd: node '{node}' is already online on broker"), line
        assert f"assayd pid {first.pid} on host {socket.gethostname()}" in line
        assert f"started {status['started_at']}" in line
        assert "--takeover" in line and "keepalive" in line
        # the first daemon: still online, its one connection never lost
        assert first.alive()
        assert await _retained_status(first_lab) == status
        assert _count(first, "broker connected") == 1
        assert _count(first, "broker lost") == 0, first.output()
        # nothing was started: its journal (opened first, to find a bad one at once) is empty
        with contextlib.closing(sqlite3.connect(second_lab.journal_path)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM documents").fetchone() == (0,)
            assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)


@pytest.mark.slow
async def test_takeover_stops_the_first_daemon_with_its_run_interrupted_and_no_reconnect(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    node = _node("takeover")
    first_lab = write_lab_config(
        tmp_path / "first", broker_port=broker.port, node=node, time_scale=1.0
    )
    second_lab = _lab(tmp_path / "second", broker, node)
    with SimBenchProcess(first_lab), _daemon(first_lab) as first:
        async with DaemonClient(load_config(first_lab.config_path), timeout_s=10.0) as client:
            deadline = time.monotonic() + TIMEOUT_S
            while True:  # the counter connected
                with contextlib.suppress(Exception):
                    if (await client.request("instruments"))[0]["connected"]:
                        break
                assert time.monotonic() < deadline, first.tail()
                await asyncio.sleep(0.02)
            started = await client.request("run.start", {"count_time_s": 600})
        run = started["run"]

        with _daemon(second_lab, "--takeover") as second:
            code = await asyncio.to_thread(first.wait_exit, TIMEOUT_S)
            assert code == 2, first.tail()
            out = first.output()
            events = _log_events(first)
            taken = [e for e in events if e.get("event") == "node taken over by another daemon"]
            assert len(taken) == 1, out
            assert f"assayd pid {second.pid} on host" in taken[0]["error"]
            assert "stopping instead of reconnecting" in taken[0]["error"]
            last = out.splitlines()[-1]
            assert last.startswith(f"assayd: another assayd is online for node '{node}'"), last
            assert _count(first, "broker connected") == 1, out  # no reconnect loop
            # stopped as at SIGTERM: the run's documents are written, the run interrupted
            # (and resumable: no stop document)
            with contextlib.closing(sqlite3.connect(first_lab.journal_path)) as db:
                (state,) = db.execute("SELECT state FROM runs WHERE run = ?", (run,)).fetchone()
                rows = db.execute(
                    "SELECT payload FROM documents WHERE run = ? ORDER BY seq", (run,)
                ).fetchall()
            kinds = [json.loads(p)["kind"] for (p,) in rows]
            assert state == "interrupted" and kinds[-1] == "interruption", kinds
            assert "stop" not in kinds, kinds
            # the second daemon holds the node, undisturbed
            status = await _retained_status(second_lab)
            assert status is not None, second.output()
            assert (status["state"], status["pid"]) == ("online", second.pid), status
            assert second.alive()
            assert _count(second, "broker connected") == 1
            assert _count(second, "broker lost") == 0, second.output()


@pytest.mark.slow
async def test_a_second_daemon_on_one_journal_refuses_naming_the_first_pid(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    journal = tmp_path / "shared" / "journal.sqlite3"
    first_lab = _lab(tmp_path / "first", broker, _node("jfirst"), journal_path=journal)
    second_lab = _lab(tmp_path / "second", broker, _node("jsecond"), journal_path=journal)
    with _daemon(first_lab) as first:
        second = DaemonProcess(second_lab)
        code = await asyncio.to_thread(second.run_to_exit, TIMEOUT_S)
        assert code == 2, second.output()
        lines = second.output().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            f"assayd: journal {journal} is in use by another assayd (pid {first.pid},"
            f" node {first_lab.node}, started "
        ), lines
        assert "one journal serves one daemon" in lines[0]
        assert first.alive() and _count(first, "broker lost") == 0
    # the first one stopped (SIGTERM): the journal is free for the second
    with _daemon(second_lab) as second:
        assert second.alive()


async def _publish_retained_status(broker: MosquittoBroker, node: str, **fields: Any) -> None:
    """A status left behind by a daemon that died without its Last Will being sent (a
    broker that restarted from its persisted state, or a power cut before the keepalive
    ran out)."""
    payload = _status(node=node, **fields)
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.publish(f"assay/{node}/status", payload, qos=1, retain=True)


@pytest.mark.slow
async def test_a_stale_online_status_from_this_pc_does_not_block_a_start(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()  # a pid that no longer runs
    me = await asyncio.to_thread(Identity.current, T0)
    node = _node("stale")
    await _publish_retained_status(
        broker, node, host=me.host, pid=gone.pid, boot_id=me.boot_id, instance="i-dead"
    )
    lab = _lab(tmp_path, broker, node)
    with _daemon(lab) as daemon:
        (warned,) = [e for e in _log_events(daemon) if "that daemon is gone" in e["event"]]
        assert warned["why"] == f"pid {gone.pid} is not running", warned
        status = await _retained_status(lab)
        assert status is not None and status["pid"] == daemon.pid, status


@pytest.mark.slow
async def test_an_online_status_from_another_pc_needs_takeover(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    node = _node("elsewhere")
    await _publish_retained_status(broker, node, host="bench-pc-2", pid=77, instance="i-away")
    lab = _lab(tmp_path, broker, node)
    refused = DaemonProcess(lab)
    assert await asyncio.to_thread(refused.run_to_exit, TIMEOUT_S) == 2, refused.output()
    (line,) = refused.output().splitlines()
    assert "is already online" in line and "assayd pid 77 on host bench-pc-2" in line, line
    assert "If it is dead (its PC lost power)" in line and "--takeover" in line
    with _daemon(lab, "--takeover") as daemon:
        status = await _retained_status(lab)
        assert status is not None and status["pid"] == daemon.pid, status
        assert _count(daemon, "taking over the node from another daemon (--takeover)") == 1
